//! `idstitch verify`: replay the whole log into scratch state and compare with the live
//! derived state.

use rocksdb::IteratorMode;

use super::codec;
use super::db::{Store, StoreError};
use super::keys;
use crate::domain::memstate::MemState;
use crate::domain::{apply_entry, Entry, Person, PersonUuid, ProjectId, Seq};

/// Log entries decoded per message between the reading and the applying thread.
const CHUNK: usize = 1024;

/// Replay the whole log, from seq 1, into scratch state.
///
/// Two threads: one reads and decodes the log (RocksDB iteration, bincode), the other applies
/// the entries in order, so that decoding and applying overlap on two cores.
pub fn replay(store: &Store, mut progress: impl FnMut(Seq)) -> Result<MemState, StoreError> {
    let mut scratch = MemState::default();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<(Seq, Entry)>, StoreError>>(16);
        scope.spawn(move || {
            let mut chunk = Vec::with_capacity(CHUNK);
            for item in store.entries_from(Seq(1)) {
                match item {
                    Ok(e) => chunk.push(e),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
                if chunk.len() == CHUNK {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                    // A closed channel means the applier stopped at an error: stop too.
                    if tx.send(Ok(full)).is_err() {
                        return;
                    }
                }
            }
            if !chunk.is_empty() {
                let _ = tx.send(Ok(chunk));
            }
        });
        let mut expected = 1u64;
        for chunk in rx {
            for (seq, entry) in chunk? {
                if seq.0 != expected {
                    return Err(StoreError::Corrupt(format!(
                        "log has a gap: expected seq {expected}, found {seq}"
                    )));
                }
                apply_entry(&mut scratch, seq, &entry);
                if seq.0 % 65_536 == 0 {
                    progress(seq);
                }
                expected += 1;
            }
        }
        Ok(())
    })?;
    Ok(scratch)
}

/// Replay the whole log and compare with the live derived state: the first differences found,
/// at most `max_report` of them (empty when the two agree). Both comparisons are one
/// sequential pass over the live column family.
pub fn verify(
    store: &Store,
    progress: impl FnMut(Seq),
    max_report: usize,
) -> Result<(MemState, Vec<String>), StoreError> {
    let scratch = replay(store, progress)?;
    let mut diffs = Vec::new();
    compare_persons(store, &scratch, &mut diffs, max_report)?;
    compare_dids(store, &scratch, &mut diffs, max_report)?;
    diffs.truncate(max_report);
    Ok((scratch, diffs))
}

fn compare_persons(
    store: &Store,
    scratch: &MemState,
    diffs: &mut Vec<String>,
    max_report: usize,
) -> Result<(), StoreError> {
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
        match scratch.persons.get(&(project, uuid)) {
            None => diffs.push(format!(
                "person {uuid} (project {project}) is live but not in the replayed log"
            )),
            Some(replayed) if *replayed != live => diffs.push(format!(
                "person {uuid} (project {project}) differs:\n  live:     {}\n  replayed: {}",
                person_line(&live),
                person_line(replayed)
            )),
            Some(_) => {}
        }
        if diffs.len() >= max_report {
            return Ok(());
        }
    }
    if live_count != scratch.persons.len() {
        diffs.push(format!(
            "live state has {live_count} persons, the replayed log {}",
            scratch.persons.len()
        ));
    }
    Ok(())
}

/// Every live distinct ID must map where the replay maps it, and there must be as many: then
/// the two maps are equal. Only when the counts differ are the replayed IDs looked up one by
/// one, to name those the live state lacks.
fn compare_dids(
    store: &Store,
    scratch: &MemState,
    diffs: &mut Vec<String>,
    max_report: usize,
) -> Result<(), StoreError> {
    let mut live_count = 0usize;
    for item in store
        .db()
        .iterator_cf(store.cf("dids"), IteratorMode::Start)
    {
        if diffs.len() >= max_report {
            return Ok(());
        }
        let (k, v) = item?;
        live_count += 1;
        let project = ProjectId(u32::from_be_bytes(k[..4].try_into().unwrap_or_default()));
        let Some(did) = k.get(6..).and_then(|b| std::str::from_utf8(b).ok()) else {
            diffs.push(format!("a live distinct id key is not readable: {k:?}"));
            continue;
        };
        let live = uuid::Uuid::from_slice(&v).ok().map(PersonUuid);
        let replayed = scratch.dids.get(&(project, did.to_string())).copied();
        if live != replayed {
            diffs.push(format!(
                "distinct id {did:?} (project {project}): live {}, replayed {}",
                live.map(|u| u.to_string())
                    .unwrap_or_else(|| "unreadable".into()),
                replayed
                    .map(|u| u.to_string())
                    .unwrap_or_else(|| "none".into())
            ));
        }
    }
    if live_count == scratch.dids.len() {
        return Ok(());
    }
    for ((project, did), uuid) in &scratch.dids {
        if store.person_of(*project, did)?.is_none() {
            diffs.push(format!(
                "distinct id {did:?} (project {project}): live none, replayed {uuid}"
            ));
        }
        if diffs.len() >= max_report {
            break;
        }
    }
    Ok(())
}

fn person_line(p: &Person) -> String {
    serde_json::json!({
        "distinct_ids": p.distinct_ids, "properties": p.properties.0, "is_identified": p.is_identified,
        "created_at_ms": p.created_at_ms, "version": p.version, "created_seq": p.created_seq.0,
    })
    .to_string()
}
