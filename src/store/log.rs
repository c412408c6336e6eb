//! Appending to the log: one atomic, synced RocksDB write per group of entries.

use std::sync::Arc;

use rocksdb::WriteOptions;

use super::db::{Store, StoreError};
use super::materialize::Materializer;
use crate::domain::{Entry, Seq};

/// Write a group of consecutive entries and everything derived from them in one atomic batch,
/// synced to disk when `sync` (the acknowledgement path always syncs).
pub fn write_group(
    store: &Store,
    group: &[(Seq, Arc<Entry>)],
    sync: bool,
) -> Result<(), StoreError> {
    if group.is_empty() {
        return Ok(());
    }
    // About 2 KiB per entry: its log record plus the derived rows of a typical event.
    let mut m = Materializer::with_capacity(store, group.len() * 2048);
    for (seq, entry) in group {
        m.add(*seq, entry, true)?;
    }
    let mut wo = WriteOptions::default();
    wo.set_sync(sync);
    store.db().write_opt(m.finish(), &wo)?;
    Ok(())
}
