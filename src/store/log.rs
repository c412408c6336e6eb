//! Appending to the log: one atomic, synced RocksDB write per group of entries.

use std::sync::Arc;

use rocksdb::{WriteBatch, WriteOptions};

use super::db::{Store, StoreError};
use super::materialize::{Materializer, PersonCache};
use crate::domain::{Change, Entry, Seq};

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
        let written = self
            .prepare(store, group)
            .and_then(|batch| commit(store, batch, sync));
        if written.is_err() {
            // Nothing of this batch may be read back from the cache.
            self.persons = PersonCache::default();
        }
        written
    }

    /// The batch of a group (its log records and everything derived from them), for
    /// [`commit`]. The cache assumes the batch will be committed: the next group prepared reads
    /// this one's persons from it, whether or not this one is on disk yet. So a caller that
    /// prepares a group while the one before is being committed must stop for good if that
    /// commit fails, and must let it finish before preparing a group that
    /// [`reads_the_store`] beyond persons.
    pub fn prepare(
        &mut self,
        store: &Store,
        group: &[(Seq, Arc<Entry>)],
    ) -> Result<Batch, StoreError> {
        // About 2 KiB per entry: its log record plus the derived rows of a typical event.
        let cache = std::mem::take(&mut self.persons);
        let mut m = Materializer::with_capacity(store, group.len() * 2048).with_persons(cache);
        for (seq, entry) in group {
            m.add(*seq, entry, true)?;
        }
        let (batch, mut persons) = m.finish_keeping_persons();
        persons.trim(self.bound);
        self.persons = persons;
        Ok(Batch(batch))
    }
}

/// A group's batch, prepared by [`GroupWriter::prepare`] and not yet written.
pub struct Batch(WriteBatch);

/// Write a prepared batch atomically, synced to disk when `sync`.
pub fn commit(store: &Store, batch: Batch, sync: bool) -> Result<(), StoreError> {
    let mut wo = WriteOptions::default();
    wo.set_sync(sync);
    store.db().write_opt(batch.0, &wo)?;
    Ok(())
}

/// Whether preparing `entry` reads what earlier entries wrote other than persons (a project's
/// record, the events of a distinct ID being deleted), which is on disk only once their batch
/// is committed: see [`GroupWriter::prepare`].
pub fn reads_the_store(entry: &Entry) -> bool {
    entry.changes.iter().any(|c| {
        matches!(
            c,
            Change::ProjectSettingsChanged { .. }
                | Change::PersonDeleted {
                    delete_events: true,
                    ..
                }
        )
    })
}
