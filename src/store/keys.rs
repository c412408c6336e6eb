//! Key layouts of every column family. Big-endian numbers so that keys sort numerically.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `log` | seq u64 | envelope of one [`crate::domain::Entry`] (the truth) |
//! | `meta` | name | small values (`applied_seq`, `derived_format`) |
//! | `projects` | `i` id u32 / `t` token | project record / id |
//! | `persons` | project u32, uuid 16 | person record |
//! | `order` | project u32, created seq u64, uuid 16 | empty (persons in creation order) |
//! | `dids` | project u32, len u16, distinct id | person uuid 16 |
//! | `evdid` | project u32, len u16, distinct id, seq u64 | empty (events by distinct id) |
//! | `uuids` | project u32, then `0` and the 16 bytes of a canonical UUID, or `1` and the uuid's text | seq u64 (duplicate deliveries) |
//! | `warnings` | project u32, seq u64, index u16 | warning |
//! | `hist` | project u32, uuid 16, seq u64 | empty (log entries of a person) |
//! | `didhist` | project u32, len u16, distinct id, seq u64 | empty (log entries of an id) |
//! | `limits` | project u32, kind u8, distinct id | last rate-limited warning of that key |
//! | `settings` | project u32 | the project's [`crate::domain::ProjectSettings`] |
//! | `buffer` | seq u64 (of the `EventBuffered` entry) | the record of (project, release time, [`crate::domain::buffer::BufferedEvent`]): events waiting in the conversion buffer |
//! | `evname` | project u32, len u16, event name, timestamp (i64, sign bit flipped), seq u64 | distinct id: the insights index |

use crate::domain::{PersonUuid, ProjectId, Seq};

/// Every column family, in creation order.
pub const CFS: [&str; 15] = [
    "log", "meta", "projects", "persons", "order", "dids", "evdid", "uuids", "warnings", "hist",
    "didhist", "limits", "settings", "buffer", "evname",
];

/// `meta` key: the last seq whose changes are in the derived column families (u64 BE).
pub const APPLIED_SEQ_KEY: &[u8] = b"applied_seq";

/// `meta` key: the derived state's format (u64 BE), `codec::DERIVED_FORMAT` when current.
pub const DERIVED_FORMAT_KEY: &[u8] = b"derived_format";

/// Key of a log entry.
pub fn log(seq: Seq) -> [u8; 8] {
    seq.0.to_be_bytes()
}

/// Seq of a log key.
pub fn seq_of_log(key: &[u8]) -> Option<Seq> {
    key.try_into().ok().map(|b| Seq(u64::from_be_bytes(b)))
}

/// Prefix of everything of one project.
pub fn project(p: ProjectId) -> Vec<u8> {
    p.0.to_be_bytes().to_vec()
}

/// A key of `p`'s with room for `rest` more bytes: built in one allocation (the writer builds
/// several keys per event, verify one per replayed person and ID).
fn with_project(p: ProjectId, rest: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + rest);
    k.extend_from_slice(&p.0.to_be_bytes());
    k
}

/// Key of a person record.
pub fn person(p: ProjectId, uuid: PersonUuid) -> Vec<u8> {
    person_with_room(p, uuid, 0)
}

/// [`person`] into `k`, which is cleared first.
pub fn person_into(k: &mut Vec<u8>, p: ProjectId, uuid: PersonUuid) {
    k.clear();
    k.extend_from_slice(&p.0.to_be_bytes());
    k.extend_from_slice(uuid.0.as_bytes());
}

/// [`person`] with room for `rest` more bytes.
fn person_with_room(p: ProjectId, uuid: PersonUuid, rest: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + 16 + rest);
    person_into(&mut k, p, uuid);
    k
}

/// Key of a person in creation order.
pub fn order(p: ProjectId, created: Seq, uuid: PersonUuid) -> Vec<u8> {
    let mut k = with_project(p, 8 + 16);
    k.extend_from_slice(&created.0.to_be_bytes());
    k.extend_from_slice(uuid.0.as_bytes());
    k
}

/// Uuid at the end of an `order` or `persons` key.
pub fn uuid_suffix(key: &[u8]) -> Option<PersonUuid> {
    let tail = key.get(key.len().checked_sub(16)?..)?;
    uuid::Uuid::from_slice(tail).ok().map(PersonUuid)
}

/// Key of a distinct ID (project, length-prefixed ID), also the prefix of its indexes.
pub fn did(p: ProjectId, id: &str) -> Vec<u8> {
    did_with_room(p, id.as_bytes(), 0)
}

/// [`did`] of an ID given as bytes.
pub fn did_bytes(p: ProjectId, id: &[u8]) -> Vec<u8> {
    did_with_room(p, id, 0)
}

/// [`did`] into `k`, which is cleared first (a caller building many keys reuses one buffer).
pub fn did_into(k: &mut Vec<u8>, p: ProjectId, id: &str) {
    did_bytes_into(k, p, id.as_bytes());
}

/// The one definition of the layout: project, length (saturated at `u16::MAX`), the ID.
fn did_bytes_into(k: &mut Vec<u8>, p: ProjectId, id: &[u8]) {
    k.clear();
    k.extend_from_slice(&p.0.to_be_bytes());
    k.extend_from_slice(&(id.len().min(u16::MAX as usize) as u16).to_be_bytes());
    k.extend_from_slice(id);
}

/// [`did`] with room for `rest` more bytes.
fn did_with_room(p: ProjectId, id: &[u8], rest: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + 2 + id.len() + rest);
    did_bytes_into(&mut k, p, id);
    k
}

/// Key of a (distinct ID, seq) index entry.
pub fn did_seq(p: ProjectId, id: &str, seq: Seq) -> Vec<u8> {
    let mut k = did_with_room(p, id.as_bytes(), 8);
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

/// Seq at the end of an index key.
pub fn seq_suffix(key: &[u8]) -> Option<Seq> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(Seq(u64::from_be_bytes(tail)))
}

/// Key of a duplicate-delivery marker. The SDKs send event uuids in the canonical text form
/// (36 characters, lowercase hex); those are kept as their 16 bytes (tag `0`), which halves
/// the column family that every event writes and compaction rewrites again and again. Any
/// other text is kept as it is (tag `1`): a key stands for exactly one uuid text.
pub fn event_uuid(p: ProjectId, uuid: &str) -> Vec<u8> {
    let canonical = canonical_uuid(uuid);
    let (tag, body) = match &canonical {
        Some(bytes) => (0, &bytes[..]),
        None => (1, uuid.as_bytes()),
    };
    let mut k = with_project(p, 1 + body.len());
    k.push(tag);
    k.extend_from_slice(body);
    k
}

/// The 16 bytes of `text` when it is a UUID in the canonical form: lowercase hex digits in
/// groups of 8, 4, 4, 4 and 12 joined by `-` (so only one text gives those bytes; the uuid
/// crate also reads upper case, braces and other forms, which written back differ).
fn canonical_uuid(text: &str) -> Option<[u8; 16]> {
    let uuid = uuid::Uuid::try_parse(text).ok()?;
    let mut canonical = [0u8; 36];
    (uuid.hyphenated().encode_lower(&mut canonical) == text).then(|| uuid.into_bytes())
}

/// Key of a warning.
pub fn warning(p: ProjectId, seq: Seq, index: u16) -> Vec<u8> {
    let mut k = with_project(p, 8 + 2);
    k.extend_from_slice(&seq.0.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Key of the rate limit of one warning kind for one distinct ID.
pub fn limit(p: ProjectId, kind: u8, id: &str) -> Vec<u8> {
    let mut k = with_project(p, 1 + id.len());
    k.push(kind);
    k.extend_from_slice(id.as_bytes());
    k
}

/// Key of a person-history index entry.
pub fn hist(p: ProjectId, uuid: PersonUuid, seq: Seq) -> Vec<u8> {
    let mut k = person_with_room(p, uuid, 8);
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

/// Key of a project record by id.
pub fn project_by_id(p: ProjectId) -> Vec<u8> {
    let mut k = b"i".to_vec();
    k.extend_from_slice(&p.0.to_be_bytes());
    k
}

/// Key of a project id by token.
pub fn project_by_token(token: &str) -> Vec<u8> {
    let mut k = b"t".to_vec();
    k.extend_from_slice(token.as_bytes());
    k
}

/// Key of a project's settings.
pub fn settings(p: ProjectId) -> Vec<u8> {
    project(p)
}

/// Key of a waiting event: the seq of the entry that buffered it.
pub fn buffered(seq: Seq) -> [u8; 8] {
    seq.0.to_be_bytes()
}

/// A timestamp as bytes that sort like the number (sign bit flipped, big-endian).
pub fn sortable_ms(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// The timestamp of [`sortable_ms`] bytes.
pub fn ms_of_sortable(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// Prefix of the insights index of one event name (the name is length-prefixed like an ID).
pub fn event_name(p: ProjectId, name: &str) -> Vec<u8> {
    did(p, name)
}

/// Key of one stored event in the insights index.
pub fn event_by_name(p: ProjectId, name: &str, timestamp_ms: i64, seq: Seq) -> Vec<u8> {
    let mut k = did_with_room(p, name.as_bytes(), 8 + 8);
    k.extend_from_slice(&sortable_ms(timestamp_ms));
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

/// Timestamp and seq at the end of an insights index key.
pub fn time_seq_suffix(key: &[u8]) -> Option<(i64, Seq)> {
    let tail = key.get(key.len().checked_sub(16)?..)?;
    let ms = ms_of_sortable(tail.get(..8)?.try_into().ok()?);
    Some((ms, seq_suffix(key)?))
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layouts are the on-disk format: these bytes must never change.
    #[test]
    fn every_key_layout_is_byte_for_byte_the_documented_one() {
        let p = ProjectId(0x0102_0304);
        let uuid = PersonUuid(uuid::Uuid::from_bytes([0xAA; 16]));
        let seq = Seq(0x1122_3344_5566_7788);
        let pb = [1u8, 2, 3, 4];
        let sb = seq.0.to_be_bytes();
        let cat = |parts: &[&[u8]]| parts.concat();

        assert_eq!(person(p, uuid), cat(&[&pb, &[0xAA; 16]]));
        assert_eq!(order(p, seq, uuid), cat(&[&pb, &sb, &[0xAA; 16]]));
        assert_eq!(did(p, "ab"), cat(&[&pb, &[0, 2], b"ab"]));
        assert_eq!(did_seq(p, "ab", seq), cat(&[&pb, &[0, 2], b"ab", &sb]));
        assert_eq!(event_uuid(p, "u-1"), cat(&[&pb, &[1], b"u-1"]));
        let canonical = "0189f6a2-7c3d-4e5f-8a9b-0c1d2e3f4a5b";
        let bytes = uuid::Uuid::parse_str(canonical).unwrap().into_bytes();
        assert_eq!(event_uuid(p, canonical), cat(&[&pb, &[0], &bytes]));
        let upper = canonical.to_uppercase();
        assert_eq!(event_uuid(p, &upper), cat(&[&pb, &[1], upper.as_bytes()]));
        assert_eq!(warning(p, seq, 7), cat(&[&pb, &sb, &[0, 7]]));
        assert_eq!(limit(p, 9, "ab"), cat(&[&pb, &[9], b"ab"]));
        assert_eq!(hist(p, uuid, seq), cat(&[&pb, &[0xAA; 16], &sb]));
        assert_eq!(
            event_by_name(p, "$pageview", -1, seq),
            cat(&[&pb, &[0, 9], b"$pageview", &sortable_ms(-1), &sb])
        );
        // A distinct ID longer than a u16 can say keeps all its bytes, its length saturated.
        let long = "x".repeat(70_000);
        assert_eq!(did(p, &long), cat(&[&pb, &[0xFF, 0xFF], long.as_bytes()]));
        // The column families not keyed by project first.
        assert_eq!(log(seq), sb);
        assert_eq!(buffered(seq), sb);
        assert_eq!(project_by_id(p), cat(&[b"i", &pb]));
        assert_eq!(project_by_token("phc_x"), b"tphc_x".to_vec());
        assert_eq!(settings(p), pb.to_vec());
        assert_eq!(
            (APPLIED_SEQ_KEY, DERIVED_FORMAT_KEY),
            (&b"applied_seq"[..], &b"derived_format"[..])
        );
    }

    /// Two different uuid texts never share a key (a redelivery would otherwise be taken for
    /// another event's, or an event for a redelivery), and a canonical uuid's key holds its
    /// bytes as the uuid crate reads them.
    #[test]
    fn every_uuid_text_has_a_key_of_its_own() {
        use proptest::prelude::*;
        let text = prop_oneof![
            any::<[u8; 16]>().prop_map(|b| uuid::Uuid::from_bytes(b).to_string()),
            any::<[u8; 16]>().prop_map(|b| uuid::Uuid::from_bytes(b).to_string().to_uppercase()),
            "[0-9a-fA-F-]{30,40}",
            ".{0,40}",
        ];
        proptest!(|(a in text.clone(), b in text)| {
            let p = ProjectId(1);
            prop_assert_eq!(event_uuid(p, &a) == event_uuid(p, &b), a == b);
            if let Some(bytes) = canonical_uuid(&a) {
                prop_assert_eq!(uuid::Uuid::from_bytes(bytes).to_string(), a);
            }
        });
        let u = uuid::Uuid::new_v4().to_string();
        assert_eq!(event_uuid(ProjectId(1), &u).len(), 4 + 1 + 16);
    }

    #[test]
    fn keys_built_into_a_reused_buffer_equal_the_fresh_ones() {
        let mut k = b"left over from the previous key".to_vec();
        let (p, uuid) = (ProjectId(7), PersonUuid(uuid::Uuid::from_bytes([3; 16])));
        person_into(&mut k, p, uuid);
        assert_eq!(k, person(p, uuid));
        did_into(&mut k, p, "anon-1");
        assert_eq!(k, did(p, "anon-1"));
        did_into(&mut k, ProjectId(8), "");
        assert_eq!(k, did(ProjectId(8), ""));
        assert_eq!(did_bytes(p, b"anon-1"), did(p, "anon-1"));
    }
}
