//! Appending to the log: one atomic, synced RocksDB write per group of entries.

use std::sync::Arc;

use rocksdb::WriteOptions;

use super::db::{Store, StoreError};
use super::materialize::{Materializer, PersonCache};
use crate::domain::{Entry, Seq};

/// Write a group of consecutive entries and everything derived from them in one atomic batch,
/// synced to disk when `sync` (the acknowledgement path always syncs).
pub fn write_group(
    store: &Store,
    group: &[(Seq, Arc<Entry>)],
    sync: bool,
) -> Result<(), StoreError> {
    GroupWriter::default().write(store, group, sync)
}

/// Persons each generation of the writer's [`PersonCache`] holds at most (a typical person of
/// ~40 properties is a few KiB decoded, so both generations stay within tens of MiB).
pub const CACHED_PERSONS: usize = 4096;

/// [`write_group`] for the one thread that writes the log while the daemon runs: the persons
/// it wrote stay decoded in its cache, so that the next change of the same person (the next
/// pageview of a user whose `$current_url` changed) does not read and decode it back.
pub struct GroupWriter {
    persons: PersonCache,
    bound: usize,
}

impl Default for GroupWriter {
    fn default() -> Self {
        GroupWriter::new(CACHED_PERSONS)
    }
}

impl GroupWriter {
    /// A writer whose cache holds at most `bound` persons per generation.
    pub fn new(bound: usize) -> Self {
        GroupWriter {
            persons: PersonCache::default(),
            bound,
        }
    }

    /// Write a group as [`write_group`] does.
    pub fn write(
        &mut self,
        store: &Store,
        group: &[(Seq, Arc<Entry>)],
        sync: bool,
    ) -> Result<(), StoreError> {
        if group.is_empty() {
            return Ok(());
        }
        // About 2 KiB per entry: its log record plus the derived rows of a typical event.
        // Taken: if the write fails, nothing of this batch may be read back from the cache.
        let cache = std::mem::take(&mut self.persons);
        let mut m = Materializer::with_capacity(store, group.len() * 2048).with_persons(cache);
        for (seq, entry) in group {
            m.add(*seq, entry, true)?;
        }
        let (batch, mut persons) = m.finish_keeping_persons();
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        store.db().write_opt(batch, &wo)?;
        persons.trim(self.bound);
        self.persons = persons;
        Ok(())
    }
}
