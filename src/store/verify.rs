//! `idstitch verify`: replay the whole log into scratch state and compare with the live
//! derived state.

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
    // Room for what the live state holds (RocksDB's estimate; bounded, as it is only a hint).
    let room = |cf| (store.estimate_keys(cf) as usize).min(1 << 28);
    let mut scratch = MemState::with_capacity(room("persons"), room("dids"));
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
/// sequential pass over the live column family, and they run side by side.
pub fn verify(
    store: &Store,
    progress: impl FnMut(Seq),
    max_report: usize,
) -> Result<(MemState, Vec<String>), StoreError> {
    let scratch = replay(store, progress)?;
    let (persons, dids) = std::thread::scope(|scope| {
        let persons = scope.spawn(|| compare_persons(store, &scratch, max_report));
        let dids = compare_dids(store, &scratch, max_report);
        let persons = persons
            .join()
            .unwrap_or_else(|_| Err(StoreError::Corrupt("the person comparison panicked".into())));
        (persons, dids)
    });
    let mut diffs = persons?;
    diffs.extend(dids?);
    diffs.truncate(max_report);
    Ok((scratch, diffs))
}

fn compare_persons(
    store: &Store,
    scratch: &MemState,
    max_report: usize,
) -> Result<Vec<String>, StoreError> {
    let mut diffs = Vec::new();
    let mut live_count = 0usize;
    let mut it = store.full_scan("persons");
    let mut encoded = Vec::new();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        live_count += 1;
        let project = ProjectId(u32::from_be_bytes(
            k.get(..4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default(),
        ));
        let uuid = keys::uuid_suffix(k).unwrap_or(PersonUuid(uuid::Uuid::nil()));
        match scratch.persons.get(&(project, uuid)) {
            None => diffs.push(format!(
                "person {uuid} (project {project}) is live but not in the replayed log"
            )),
            Some(replayed) => {
                // Equal bytes are an equal person (encoding is deterministic and decodes back
                // exactly), and encoding is much cheaper than decoding. Only different bytes
                // are decoded, to tell a real difference from one of encoding alone.
                encoded.clear();
                codec::encode_into(&mut encoded, replayed);
                if encoded != v {
                    let live: Person = codec::decode(v).map_err(|source| StoreError::Codec {
                        cf: "persons",
                        source,
                    })?;
                    if *replayed != live {
                        diffs.push(format!(
                            "person {uuid} (project {project}) differs:\n  live:     {}\n  replayed: {}",
                            person_line(&live),
                            person_line(replayed)
                        ));
                    }
                }
            }
        }
        if diffs.len() >= max_report {
            return Ok(diffs);
        }
        it.next();
    }
    it.status()?;
    if live_count != scratch.persons.len() {
        diffs.push(format!(
            "live state has {live_count} persons, the replayed log {}",
            scratch.persons.len()
        ));
    }
    Ok(diffs)
}

/// Every live distinct ID must map where the replay maps it, and there must be as many: then
/// the two maps are equal. Only when the counts differ are the replayed IDs looked up one by
/// one, to name those the live state lacks.
fn compare_dids(
    store: &Store,
    scratch: &MemState,
    max_report: usize,
) -> Result<Vec<String>, StoreError> {
    let mut diffs = Vec::new();
    let mut live_count = 0usize;
    let mut it = store.full_scan("dids");
    let mut key = (ProjectId(0), String::new());
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if diffs.len() >= max_report {
            return Ok(diffs);
        }
        live_count += 1;
        let project = ProjectId(u32::from_be_bytes(
            k.get(..4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default(),
        ));
        let Some(did) = k.get(6..).and_then(|b| std::str::from_utf8(b).ok()) else {
            diffs.push(format!("a live distinct id key is not readable: {k:?}"));
            it.next();
            continue;
        };
        let live = uuid::Uuid::from_slice(v).ok().map(PersonUuid);
        // One reused key instead of a new String per lookup.
        key.0 = project;
        key.1.clear();
        key.1.push_str(did);
        let replayed = scratch.dids.get(&key).copied();
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
        it.next();
    }
    it.status()?;
    if live_count == scratch.dids.len() {
        return Ok(diffs);
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
    Ok(diffs)
}

fn person_line(p: &Person) -> String {
    serde_json::json!({
        "distinct_ids": p.distinct_ids, "properties": p.properties.0, "is_identified": p.is_identified,
        "created_at_ms": p.created_at_ms, "version": p.version, "created_seq": p.created_seq.0,
    })
    .to_string()
}
