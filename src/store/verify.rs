//! `idstitch verify`: replay the whole log into scratch state and compare with the live
//! derived state.

use rocksdb::IteratorMode;

use super::codec;
use super::db::{Store, StoreError};
use super::keys;
use crate::domain::memstate::MemState;
use crate::domain::{apply_entry, Person, PersonUuid, ProjectId, Seq, State};

/// Replay the whole log, from seq 1, into scratch state.
pub fn replay(store: &Store, mut progress: impl FnMut(Seq)) -> Result<MemState, StoreError> {
    let mut scratch = MemState::default();
    for (expected, item) in (1u64..).zip(store.entries_from(Seq(1))) {
        let (seq, entry) = item?;
        if seq.0 != expected {
            return Err(StoreError::Corrupt(format!(
                "log has a gap: expected seq {expected}, found {seq}"
            )));
        }
        apply_entry(&mut scratch, seq, &entry);
        if seq.0 % 65_536 == 0 {
            progress(seq);
        }
    }
    Ok(scratch)
}

/// Replay the whole log and compare with the live derived state: the first differences found,
/// as readable lines (empty when the states agree).
pub fn verify(
    store: &Store,
    progress: impl FnMut(Seq),
    max_report: usize,
) -> Result<(MemState, Vec<String>), StoreError> {
    let mut scratch = replay(store, progress)?;
    let mut diffs = Vec::new();
    let mut live_count = 0usize;
    for item in store
        .db()
        .iterator_cf(store.cf("persons"), IteratorMode::Start)
    {
        let (k, v) = item?;
        live_count += 1;
        let live: Person = codec::decode(&v).map_err(|source| StoreError::Codec {
            cf: "persons",
            source,
        })?;
        let project = ProjectId(u32::from_be_bytes(k[..4].try_into().unwrap_or_default()));
        let uuid = keys::uuid_suffix(&k).unwrap_or(PersonUuid(uuid::Uuid::nil()));
        match scratch.load(project, uuid) {
            None => diffs.push(format!(
                "person {uuid} (project {project}) is live but not in the replayed log"
            )),
            Some(replayed) if replayed != live => diffs.push(format!(
                "person {uuid} (project {project}) differs:\n  live:     {}\n  replayed: {}",
                person_line(&live),
                person_line(&replayed)
            )),
            Some(_) => {}
        }
    }
    if live_count != scratch.persons.len() {
        diffs.push(format!(
            "live state has {live_count} persons, the replayed log {}",
            scratch.persons.len()
        ));
    }
    for ((project, did), uuid) in &scratch.dids {
        match store.person_of(*project, did)? {
            Some(u) if u == *uuid => {}
            other => diffs.push(format!(
                "distinct id {did:?} (project {project}): live {}, replayed {uuid}",
                other
                    .map(|u| u.to_string())
                    .unwrap_or_else(|| "none".into())
            )),
        }
        if diffs.len() >= max_report {
            break;
        }
    }
    diffs.truncate(max_report);
    Ok((scratch, diffs))
}

fn person_line(p: &Person) -> String {
    serde_json::json!({
        "distinct_ids": p.distinct_ids, "properties": p.properties.0, "is_identified": p.is_identified,
        "created_at_ms": p.created_at_ms, "version": p.version, "created_seq": p.created_seq.0,
    })
    .to_string()
}
