//! Start-up: bring the derived state up to the end of the log.
//!
//! Derived state commits atomically with each log group, so normally nothing is replayed and
//! start-up time does not grow with history. A derived-format change (or `--rebuild`) clears the
//! derived column families and replays the whole log.

use super::codec::DERIVED_FORMAT;
use super::db::{Store, StoreError};
use super::keys;
use super::materialize::Materializer;
use crate::domain::Seq;

/// What recovery did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Last seq in the log.
    pub last_seq: Seq,
    /// Entries replayed into derived state.
    pub replayed: u64,
    /// Whether derived state was rebuilt from scratch.
    pub rebuilt: bool,
}

/// Entries applied per RocksDB write while replaying.
const REPLAY_GROUP: usize = 4096;

/// Empty every derived column family, `meta` too: the next recovery rebuilds from the log.
pub(super) fn clear_derived(store: &Store) -> Result<(), StoreError> {
    for cf in keys::CFS.iter().filter(|c| **c != "log") {
        let handle = store.cf(cf);
        store
            .db()
            .delete_range_cf(handle, &[][..], &[0xFFu8; 64][..])?;
    }
    Ok(())
}

/// Replay whatever the derived state lacks; `progress` is told each replayed seq.
pub fn recover(
    store: &Store,
    rebuild: bool,
    mut progress: impl FnMut(Seq, Seq),
) -> Result<Recovered, StoreError> {
    let last = store.last_log_seq()?;
    let format = store.meta_u64(keys::DERIVED_FORMAT_KEY)?;
    let rebuilt = rebuild
        || super::verify::other_derived_format(store)?.is_some()
        || (format.is_none() && last.0 > 0);
    if rebuilt {
        clear_derived(store)?;
    }
    let from = if rebuilt {
        Seq(1)
    } else {
        Seq(store.applied_seq()?.0 + 1)
    };
    let mut replayed = 0;
    let mut m = Materializer::new(store);
    let mut in_group = 0;
    for item in store.entries_from(from) {
        let (seq, entry) = item?;
        m.add(seq, &std::sync::Arc::new(entry), false)?;
        replayed += 1;
        in_group += 1;
        if in_group == REPLAY_GROUP {
            store
                .db()
                .write(std::mem::replace(&mut m, Materializer::new(store)).finish())?;
            in_group = 0;
            progress(seq, last);
        }
    }
    if in_group > 0 {
        store.db().write(m.finish())?;
    }
    store.db().put_cf(
        store.cf("meta"),
        keys::DERIVED_FORMAT_KEY,
        DERIVED_FORMAT.to_be_bytes(),
    )?;
    store.db().flush_wal(true)?;
    Ok(Recovered {
        last_seq: last,
        replayed,
        rebuilt,
    })
}
