//! The on-disk encoding of log entries and records: one format byte, then `bincode` (v1, fixed
//! little-endian integers, variants by position).

use serde::{de::DeserializeOwned, Serialize};

use crate::domain::{Change, Entry, PersonUuid, ProjectId, Seq};

/// Format of log envelopes. Bump it (with a fixture) for any change that is not an append of a
/// new enum variant.
pub const FORMAT_VERSION: u8 = 1;

/// Format of derived state (everything but `log`); a mismatch rebuilds it from the log.
/// 2 added `settings`, `buffer` and `evname`; 3 keys `uuids` by a canonical uuid's 16 bytes
/// ([`super::keys::event_uuid`]); 4 started a new person at a split whose main ID is not the one
/// the person was created for; 5 carries the person on in that part instead, identified as it
/// was, its version up ([`crate::domain::apply::split_parts`]).
pub const DERIVED_FORMAT: u64 = 5;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The record is empty.
    #[error("record is empty")]
    Empty,
    /// Written by a format this build does not know.
    #[error("record has format version {0}, this build reads {FORMAT_VERSION}: upgrade idstitch")]
    UnknownVersion(u8),
    /// The bytes do not decode.
    #[error("record does not decode: {0}")]
    Bincode(#[from] bincode::Error),
}

/// Encode any record with the format byte in front.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, value);
    out
}

/// [`encode`], appending to `out` (a buffer reused across many records).
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    out.push(FORMAT_VERSION);
    // Serialising our own types into a Vec cannot fail: no maps with non-string keys, no I/O.
    bincode::serialize_into(&mut *out, value).unwrap_or_default();
}

/// Decode a record written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    Ok(bincode::deserialize(body)?)
}

/// Encode a log entry.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    encode(entry)
}

/// Decode a log entry.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, CodecError> {
    decode(bytes)
}

/// The position of `Change::EventStored` among `Change`'s variants (bincode stores it as u32).
const EVENT_STORED_TAG: u32 = 8;

/// The position of `Change::PersonCreated` among `Change`'s variants.
const PERSON_CREATED_TAG: u32 = 1;

/// bincode's layout (fixed little-endian integers, a u64 before each string, a byte for a
/// bool or an `Option`'s tag) read by hand, failing where bincode fails, on a replay's hot paths: a
/// log is mostly stored events and created persons, and serde's reader copies every integer
/// through a call. The tests (`skim_agrees_with_decode`, `skim_refuses_what_decode_refuses`
/// and the replay skim's) keep these paths in step with decoding.
struct Raw<'a>(&'a [u8]);

impl<'a> Raw<'a> {
    fn cut_short() -> CodecError {
        CodecError::Bincode(Box::new(bincode::ErrorKind::Io(
            std::io::ErrorKind::UnexpectedEof.into(),
        )))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let (front, back) = self.0.split_at_checked(n).ok_or_else(Self::cut_short)?;
        self.0 = back;
        Ok(front)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let (front, back) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(Self::cut_short)?;
        self.0 = back;
        Ok(*front)
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        self.array().map(u64::from_le_bytes)
    }

    /// A byte that must be 0 or 1 (`bad` makes the error for any other).
    fn flag(&mut self, bad: fn(u8) -> bincode::ErrorKind) -> Result<bool, CodecError> {
        match self.array::<1>()? {
            [0] => Ok(false),
            [1] => Ok(true),
            [b] => Err(CodecError::Bincode(Box::new(bad(b)))),
        }
    }

    fn bool(&mut self) -> Result<bool, CodecError> {
        self.flag(bincode::ErrorKind::InvalidBoolEncoding)
    }

    /// An `Option`'s tag: whether a value follows.
    fn some(&mut self) -> Result<bool, CodecError> {
        self.flag(|b| bincode::ErrorKind::InvalidTagEncoding(b.into()))
    }

    /// A string's bytes, checked to be UTF-8.
    fn text(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.u64()?;
        let bytes = self.take(usize::try_from(n).map_err(|_| Self::cut_short())?)?;
        // Short strings (IDs, names) are mostly ASCII, checked without a call.
        let valid =
            (bytes.len() < 64 && bytes.is_ascii()) || simdutf8::basic::from_utf8(bytes).is_ok();
        match valid {
            true => Ok(bytes),
            false => match std::str::from_utf8(bytes) {
                Ok(_) => Ok(bytes),
                Err(e) => Err(CodecError::Bincode(Box::new(
                    bincode::ErrorKind::InvalidUtf8Encoding(e),
                ))),
            },
        }
    }
}

/// Walk a log entry: its header, then each change's tag handed to `change` with `rest` at the
/// tag, to read the change (tag included) and leave `rest` after it.
fn walk_entry<'de>(
    bytes: &'de [u8],
    mut change: impl FnMut(Option<u32>, &mut &'de [u8]) -> Result<(), CodecError>,
) -> Result<(ProjectId, i64, Option<&'de str>), CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let mut raw = Raw(body);
    let project = ProjectId(u32::from_le_bytes(raw.array()?));
    let at_ms = i64::from_le_bytes(raw.array()?);
    let cause = match raw.some()? {
        // Checked UTF-8 by `text`; `from_utf8` cannot fail here.
        true => std::str::from_utf8(raw.text()?).ok(),
        false => None,
    };
    let n = raw.u64()?;
    let mut rest = raw.0;
    for _ in 0..n {
        let tag = rest
            .get(..4)
            .map(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]));
        change(tag, &mut rest)?;
    }
    Ok((project, at_ms, cause))
}

/// Skip a stored event's change (`rest` at its tag), checking it as [`decode_entry`] would.
fn skip_event(rest: &mut &[u8]) -> Result<(), CodecError> {
    let mut raw = Raw(rest);
    raw.take(4)?;
    // `StoredEvent`: uuid (an `Option<String>`), event, distinct_id, properties, timestamp_ms,
    // personless.
    if raw.some()? {
        raw.text()?;
    }
    for _ in 0..3 {
        raw.text()?;
    }
    raw.take(8)?;
    raw.bool()?;
    *rest = raw.0;
    Ok(())
}

/// One change of a log entry as a scratch replay takes it ([`skim_for_replay`]).
#[derive(Debug, PartialEq)]
pub enum ReplayChange {
    /// Any change but a creation or a stored event (boxed: most changes of a log are
    /// creations, and a list of them need not be as wide as the widest change).
    Change(Box<Change>),
    /// A person created: the `persons` row the live state holds for it until a later change,
    /// as [`encode`] writes the person, built from the change's bytes without decoding its
    /// properties.
    Created {
        /// The person.
        person: PersonUuid,
        /// Where its row is in the buffer of rows the skim appended to.
        row: std::ops::Range<usize>,
    },
}

/// A log entry as a scratch replay takes it ([`skim_for_replay`]): its stored events only
/// counted, and each created person already as its `persons` row
/// ([`ReplayChange::Created`]). Its changes and rows are in buffers of the
/// caller's, which many entries share (one allocation per entry or per row, made on a decoder
/// thread and freed on the applying one, cost a replay a fifth of its applying thread).
#[derive(Debug, PartialEq)]
pub struct ReplayEntry {
    /// The project it happened in.
    pub project: ProjectId,
    /// Ingestion time.
    pub at_ms: i64,
    /// How many changes (not counting stored events) it pushed onto the list, in order.
    pub changes: u32,
    /// How many `EventStored` changes it had.
    pub events: u32,
}

/// Decode the log entry at `seq` for a scratch replay: every change is decoded but the stored
/// events, whose bodies (most of a log's bytes) are checked as decoding checks them and only
/// counted, and the creations, each turned into its person's row by copying the change's
/// bytes. The changes go onto `changes` and the rows onto `rows` (on an error, some may have).
///
/// A `PersonCreated` change holds the person's fields from its uuid to its creation time in
/// the order and encoding of `Person`'s; a new person's row is the format byte, the project,
/// those bytes, version 0 and its seq: the row `encode(&person)` gives when the properties'
/// JSON text is as this crate writes it (compact, keys sorted), as every log it wrote has it.
/// Every length, string, flag and the properties' JSON are checked as [`decode_entry`] checks
/// them, but the properties are not built (a replay compares the rows as bytes, and decodes
/// one only to change the person or to explain a difference).
pub fn skim_for_replay(
    bytes: &[u8],
    seq: Seq,
    changes: &mut Vec<ReplayChange>,
    rows: &mut Vec<u8>,
) -> Result<ReplayEntry, CodecError> {
    let (before, mut events) = (changes.len(), 0);
    let project = header_project(bytes);
    let (_, at_ms, _) = walk_entry(bytes, |tag, rest| {
        match tag {
            Some(EVENT_STORED_TAG) => {
                events += 1;
                skip_event(rest)?;
            }
            Some(PERSON_CREATED_TAG) => {
                let fields = &rest[4..];
                let mut raw = Raw(fields);
                // `PersonCreated`: person (a uuid: its 16 bytes, as bytes), distinct_ids,
                // properties, is_identified, created_at_ms.
                if raw.u64()? != 16 {
                    return Err(CodecError::Bincode(Box::new(bincode::ErrorKind::Custom(
                        "a person's uuid is not 16 bytes".into(),
                    ))));
                }
                let person = PersonUuid(uuid::Uuid::from_bytes(raw.array()?));
                for _ in 0..raw.u64()? {
                    raw.text()?;
                }
                check_object(raw.text()?)?;
                raw.bool()?;
                raw.take(8)?;
                *rest = raw.0;
                let fields = &fields[..fields.len() - rest.len()];
                let start = rows.len();
                rows.push(FORMAT_VERSION);
                rows.extend_from_slice(&project.0.to_le_bytes());
                rows.extend_from_slice(fields);
                rows.extend_from_slice(&0u64.to_le_bytes());
                rows.extend_from_slice(&seq.0.to_le_bytes());
                changes.push(ReplayChange::Created {
                    person,
                    row: start..rows.len(),
                });
            }
            _ => changes.push(ReplayChange::Change(Box::new(read(rest)?))),
        }
        Ok(())
    })?;
    Ok(ReplayEntry {
        project,
        at_ms,
        changes: (changes.len() - before) as u32,
        events,
    })
}

/// A created person's properties as decoding them would check them (`Props`: one JSON object),
/// without building them: a replay that keeps the person as its row still proves that every
/// entry of the log decodes, as a rebuild from the log needs, even for a person merged away or
/// deleted before anything decoded it.
fn check_object(text: &[u8]) -> Result<(), CodecError> {
    let custom = |m: String| CodecError::Bincode(Box::new(bincode::ErrorKind::Custom(m)));
    serde_json::from_slice::<serde::de::IgnoredAny>(text).map_err(|e| custom(e.to_string()))?;
    // Valid JSON that starts with `{` is one object.
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(custom("a person's properties are not a JSON object".into())),
    }
}

/// The project of an entry (the first field after the format byte; one too short to hold it
/// fails to decode anyway).
fn header_project(bytes: &[u8]) -> ProjectId {
    ProjectId(u32::from_le_bytes(
        bytes
            .get(1..5)
            .and_then(|b| b.try_into().ok())
            .unwrap_or_default(),
    ))
}

/// A `persons` row's offset of the uuid's bytes: after the format byte, the project (4) and
/// the uuid's length (8).
const ROW_UUID_AT: usize = 1 + 4 + 8;

/// The key of a `persons` row written by [`encode`]: its project and uuid (zeros where the row
/// is too short to hold them).
pub fn row_key(row: &[u8]) -> (ProjectId, PersonUuid) {
    let project = row
        .get(1..5)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    let uuid = row
        .get(ROW_UUID_AT..ROW_UUID_AT + 16)
        .and_then(|b| uuid::Uuid::from_slice(b).ok())
        .unwrap_or_default();
    (ProjectId(project), PersonUuid(uuid))
}

/// The distinct IDs of a `persons` row (as [`encode`] writes a person: the format byte, the
/// project, the uuid, then the IDs), in order. A row that does not hold them gives none, or
/// those before the first that is cut short or is not UTF-8.
pub fn row_distinct_ids(row: &[u8]) -> impl Iterator<Item = &str> {
    const IDS_AT: usize = ROW_UUID_AT + 16;
    /// A length (bincode's u64) off the front of `rest`.
    fn len(rest: &mut &[u8]) -> Option<usize> {
        let (n, tail) = rest.split_first_chunk::<8>()?;
        *rest = tail;
        usize::try_from(u64::from_le_bytes(*n)).ok()
    }
    let mut rest = row.get(IDS_AT..).unwrap_or_default();
    let n = len(&mut rest).unwrap_or(0);
    (0..n).map_while(move |_| {
        let n = len(&mut rest)?;
        let (id, tail) = rest.split_at_checked(n)?;
        rest = tail;
        std::str::from_utf8(id).ok()
    })
}

/// Deserialise one value from the front of `rest` (with [`decode`]'s options), leaving `rest`
/// after it. Strings are borrowed from the record, as `bincode::deserialize` borrows them.
fn read<'de, T: serde::Deserialize<'de>>(rest: &mut &'de [u8]) -> Result<T, CodecError> {
    use bincode::Options;
    let options = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes();
    let mut de = bincode::Deserializer::with_bincode_read(Front(rest), options);
    Ok(T::deserialize(&mut de)?)
}

/// A `bincode` reader over a slice that leaves the slice at what it has not read.
struct Front<'a, 'de>(&'a mut &'de [u8]);

impl Front<'_, '_> {
    fn take<'de>(slice: &mut &'de [u8], n: usize) -> bincode::Result<&'de [u8]> {
        if n > slice.len() {
            return Err(Box::new(bincode::ErrorKind::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            )));
        }
        let (front, back) = slice.split_at(n);
        *slice = back;
        Ok(front)
    }
}

impl std::io::Read for Front<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.read_exact(out).map(|()| out.len())
    }

    fn read_exact(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        let front =
            Front::take(self.0, out.len()).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        out.copy_from_slice(front);
        Ok(())
    }
}

impl<'de> bincode::BincodeRead<'de> for Front<'_, 'de> {
    fn forward_read_str<V: serde::de::Visitor<'de>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        let bytes = Front::take(self.0, length)?;
        // SIMD validation (an event's properties are most of a record's bytes); only a
        // failure asks std for its error.
        let s = match simdutf8::basic::from_utf8(bytes) {
            Ok(s) => s,
            Err(_) => std::str::from_utf8(bytes)
                .map_err(|e| Box::new(bincode::ErrorKind::InvalidUtf8Encoding(e)))?,
        };
        visitor.visit_borrowed_str(s)
    }

    fn get_byte_buffer(&mut self, length: usize) -> bincode::Result<Vec<u8>> {
        Front::take(self.0, length).map(<[u8]>::to_vec)
    }

    fn forward_read_bytes<V: serde::de::Visitor<'de>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        visitor.visit_borrowed_bytes(Front::take(self.0, length)?)
    }
}
