//! Derived state: the domain's [`State`] over a RocksDB `WriteBatch`, so that a log entry and
//! everything derived from it commit atomically.

use std::collections::HashMap;
use std::sync::Arc;

use rocksdb::WriteBatch;

use super::codec;
use super::db::{ProjectRecord, Store, StoreError};
use super::keys;
use crate::domain::buffer::BufferedEvent;
use crate::domain::{
    apply_entry, Change, Entry, Person, PersonUuid, ProjectId, ProjectSettings, RawProps, Seq,
    State,
};

type PersonKey = (ProjectId, PersonUuid);

/// Persons as a materializer last wrote them (`None`: removed), kept decoded so that the next
/// change of the same person does not read and decode it back from RocksDB. Two generations:
/// when the recent one outgrows its bound it becomes the older one and the older one is
/// dropped, so memory stays bounded and a person in use stays cached.
///
/// Only the log writer keeps one across groups ([`crate::store::log::GroupWriter`]): it is the
/// only writer of `persons` while the daemon runs, and it keeps the cache only after a group
/// is durable.
#[derive(Default)]
pub struct PersonCache {
    recent: HashMap<PersonKey, Option<Person>>,
    older: HashMap<PersonKey, Option<Person>>,
}

impl PersonCache {
    fn get(&self, key: &PersonKey) -> Option<&Option<Person>> {
        self.recent.get(key).or_else(|| self.older.get(key))
    }

    fn remove(&mut self, key: &PersonKey) -> Option<Option<Person>> {
        self.recent.remove(key).or_else(|| self.older.remove(key))
    }

    /// The person's state from now on; a key is in one generation at most.
    fn insert(&mut self, key: PersonKey, person: Option<Person>) {
        self.older.remove(&key);
        self.recent.insert(key, person);
    }

    /// Age the recent generation once it holds more than `bound` persons.
    pub fn trim(&mut self, bound: usize) {
        if self.recent.len() > bound {
            self.older = std::mem::take(&mut self.recent);
        }
    }
}

/// Column families whose keys a group writes in no particular order (distinct IDs, event and
/// person uuids). Their puts are held back and go into the batch sorted by key when it is
/// finished: RocksDB inserts a batch into each memtable's skip list in batch order, and an
/// insert next to the one before it reuses most of its search, where a random one searches
/// from the top (that search was a tenth of the daemon's CPU under load).
const SORTED_CFS: [&str; 8] = [
    "order", "dids", "evdid", "uuids", "hist", "didhist", "limits", "evname",
];

/// The held-back puts of one column family: keys and values one after the other in `bytes`.
#[derive(Default)]
struct HeldPuts {
    bytes: Vec<u8>,
    /// Start in `bytes`, key length, value length; in the order they were put.
    items: Vec<(usize, usize, usize)>,
}

impl HeldPuts {
    fn push(&mut self, key: &[u8], value: &[u8]) {
        self.items.push((self.bytes.len(), key.len(), value.len()));
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
    }

    /// Sorted by key; puts of one key keep their order (the sort is stable), so the last one
    /// still wins.
    fn sort(&mut self) {
        let bytes = &self.bytes;
        let key = |&(at, k, _): &(usize, usize, usize)| &bytes[at..at + k];
        self.items.sort_by(|a, b| key(a).cmp(key(b)));
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.items
            .iter()
            .map(|&(at, k, v)| (&self.bytes[at..at + k], &self.bytes[at + k..at + k + v]))
    }

    /// Into `batch`, sorted, and empty again.
    fn drain_into(&mut self, batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily) {
        self.sort();
        for (k, v) in self.iter() {
            batch.put_cf(cf, k, v);
        }
        self.items.clear();
        self.bytes.clear();
    }
}

/// Applies log entries to the derived column families, reading through its own pending writes.
///
/// What goes into the batch, and when: log records at once; a changed or removed person once,
/// as the group leaves it, when the batch is finished (a person changed by several entries of
/// a group is encoded and written once); puts of [`SORTED_CFS`] when the batch is finished,
/// sorted, or before a delete in the same column family, which must come after them.
pub struct Materializer<'s> {
    store: &'s Store,
    batch: WriteBatch,
    persons: PersonCache,
    /// Persons changed or removed by this batch (with repeats): their state is in `persons`.
    changed: Vec<PersonKey>,
    /// This batch's entries so far: a deletion with its events redacts theirs too.
    entries: Vec<(Seq, Arc<Entry>)>,
    /// Buffered events (their `EventBuffered` seqs) that the current entry took out of the
    /// buffer: a deletion with its events in the same entry dropped them, and empties them.
    released: Vec<Seq>,
    held: [HeldPuts; SORTED_CFS.len()],
    projects: HashMap<ProjectId, ProjectRecord>,
    seq: Seq,
    warning_index: u16,
    error: Option<StoreError>,
    /// The record being encoded: log records and persons are encoded here and copied into the
    /// batch, instead of each into a fresh `Vec` grown from empty (a ~1 KiB log record grew
    /// through eight reallocations).
    record: Vec<u8>,
}

impl<'s> Materializer<'s> {
    /// An empty batch over `store`.
    pub fn new(store: &'s Store) -> Self {
        Materializer::with_capacity(store, 0)
    }

    /// A materializer whose batch starts with room for `bytes`, so that a large group does not
    /// grow (and copy) its batch again and again.
    pub fn with_capacity(store: &'s Store, bytes: usize) -> Self {
        Materializer {
            store,
            batch: WriteBatch::with_capacity_bytes(bytes),
            persons: PersonCache::default(),
            changed: Vec::new(),
            entries: Vec::new(),
            released: Vec::new(),
            held: Default::default(),
            projects: HashMap::new(),
            seq: Seq(0),
            warning_index: 0,
            error: None,
            record: Vec::new(),
        }
    }

    /// Add one entry: the log record itself (when `log_it`) and everything derived from it.
    pub fn add(&mut self, seq: Seq, entry: &Arc<Entry>, log_it: bool) -> Result<(), StoreError> {
        if log_it {
            self.record.clear();
            codec::encode_into(&mut self.record, entry.as_ref());
            self.batch
                .put_cf(self.store.cf("log"), keys::log(seq), &self.record);
        }
        self.seq = seq;
        self.warning_index = 0;
        self.released.clear();
        apply_entry(self, seq, entry);
        self.entries.push((seq, Arc::clone(entry)));
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Read persons through `cache` first: persons written by earlier, durable batches.
    pub fn with_persons(mut self, cache: PersonCache) -> Self {
        self.persons = cache;
        self
    }

    /// The finished batch, recording `seq` as applied.
    pub fn finish(self) -> WriteBatch {
        self.finish_keeping_persons().0
    }

    /// The finished batch, and the persons as this batch leaves them (valid once it is
    /// written).
    pub fn finish_keeping_persons(mut self) -> (WriteBatch, PersonCache) {
        self.changed.sort_unstable();
        self.changed.dedup();
        let cf = self.store.cf("persons");
        for key in &self.changed {
            let k = keys::person(key.0, key.1);
            match self.persons.get(key) {
                Some(Some(p)) => {
                    self.record.clear();
                    codec::encode_into(&mut self.record, p);
                    self.batch.put_cf(cf, k, &self.record);
                }
                _ => self.batch.delete_cf(cf, k),
            }
        }
        for (name, held) in SORTED_CFS.iter().zip(&mut self.held) {
            held.drain_into(&mut self.batch, self.store.cf(name));
        }
        self.batch.put_cf(
            self.store.cf("meta"),
            keys::APPLIED_SEQ_KEY,
            self.seq.0.to_be_bytes(),
        );
        (self.batch, self.persons)
    }

    fn put(&mut self, cf: &str, key: &[u8], value: &[u8]) {
        match SORTED_CFS.iter().position(|c| *c == cf) {
            Some(i) => self.held[i].push(key, value),
            None => self.batch.put_cf(self.store.cf(cf), key, value),
        }
    }

    /// The held-back puts of `cf` into the batch: a delete that follows must follow them.
    fn release(&mut self, cf: &str) {
        if let Some(i) = SORTED_CFS.iter().position(|c| *c == cf) {
            self.held[i].drain_into(&mut self.batch, self.store.cf(cf));
        }
    }

    fn delete(&mut self, cf: &str, key: &[u8]) {
        self.release(cf);
        self.batch.delete_cf(self.store.cf(cf), key);
    }

    fn hist(&mut self, project: ProjectId, uuid: PersonUuid) {
        let k = keys::hist(project, uuid, self.seq);
        self.put("hist", &k, &[]);
    }

    /// Empty the properties of every stored event of `did` in its log entry (deletion with
    /// `delete_events`); the uuid stays so that a redelivery is still recognised. Compaction
    /// then reclaims the old bytes (`Store::compact_log`). The events are those on disk and
    /// those of this batch's earlier entries.
    fn redact_events(&mut self, project: ProjectId, did: &str) {
        let seqs = match self.store.event_seqs_of(project, did, None, usize::MAX) {
            Ok(s) => s,
            Err(e) => {
                self.error.get_or_insert(e);
                return;
            }
        };
        for seq in seqs {
            match self.store.entry(seq) {
                Ok(Some(entry)) => self.redact(seq, entry, did),
                Ok(None) => {}
                Err(e) => {
                    self.error.get_or_insert(e);
                    return;
                }
            }
        }
        let earlier: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, e)| e.project == project && stores_event_of(e, did))
            .map(|(seq, e)| (*seq, Entry::clone(e)))
            .collect();
        for (seq, entry) in earlier {
            self.redact(seq, entry, did);
        }
    }

    /// Log entry `seq` again, with the properties of `did`'s stored events emptied, and those
    /// events out of the insights index. An event released from the conversion buffer was
    /// logged before, as it waited: that entry is emptied too.
    fn redact(&mut self, seq: Seq, mut entry: Entry, did: &str) {
        let mut waited = None;
        for c in &mut entry.changes {
            match c {
                Change::EventStored { event } if event.distinct_id == did => {
                    event.properties = RawProps::empty();
                    let k =
                        keys::event_by_name(entry.project, &event.event, event.timestamp_ms, seq);
                    self.delete("evname", &k);
                }
                Change::BufferReleased { buffered } => waited = Some(*buffered),
                _ => {}
            }
        }
        self.put("log", &keys::log(seq), &codec::encode_entry(&entry));
        if let Some(buffered) = waited {
            self.redact_waited(buffered, did);
        }
    }

    /// Log entry `seq` (an `EventBuffered`) again, with `did`'s waiting event emptied of its
    /// properties and person updates. Replay is unchanged: the entry that released it carries
    /// what was decided.
    fn redact_waited(&mut self, seq: Seq, did: &str) {
        let in_batch = self.entries.iter().find(|(s, _)| *s == seq);
        let entry = match in_batch {
            Some((_, e)) => Some(Entry::clone(e)),
            None => self.store.entry(seq).unwrap_or_else(|e| {
                self.error.get_or_insert(e);
                None
            }),
        };
        let Some(mut entry) = entry else { return };
        let mut emptied = false;
        for c in &mut entry.changes {
            if let Change::EventBuffered { event, .. } = c {
                if event.distinct_id == did {
                    event.properties = Default::default();
                    event.set = Default::default();
                    event.set_once = Default::default();
                    event.unset.clear();
                    emptied = true;
                }
            }
        }
        // Only then: the store still answers the entry as it was, so writing it back
        // unchanged for another ID would undo this ID's emptying earlier in the batch.
        if emptied {
            self.put("log", &keys::log(seq), &codec::encode_entry(&entry));
        }
    }

    fn did_hist(&mut self, project: ProjectId, did: &str) {
        let k = keys::did_seq(project, did, self.seq);
        self.put("didhist", &k, &[]);
    }

    fn put_project(&mut self, rec: ProjectRecord) {
        self.put(
            "projects",
            &keys::project_by_id(rec.id),
            &codec::encode(&rec),
        );
        self.projects.insert(rec.id, rec);
    }

    /// Settings in force, and the project's name on its record (reading through this batch).
    fn settings_changed(&mut self, project: ProjectId, settings: &ProjectSettings) {
        self.put(
            "settings",
            &keys::settings(project),
            &codec::encode(settings),
        );
        let rec = match self.projects.get(&project) {
            Some(r) => Some(r.clone()),
            None => self.store.project(project).unwrap_or_else(|e| {
                self.error.get_or_insert(e);
                None
            }),
        };
        if let Some(mut rec) = rec {
            rec.name = settings.name.clone();
            self.put_project(rec);
        }
    }

    /// An event waits in the conversion buffer; its uuid counts as accepted from now on.
    fn buffered(&mut self, project: ProjectId, seq: Seq, event: &BufferedEvent, release_at: i64) {
        let v = codec::encode(&(project, release_at, event));
        self.put("buffer", &keys::buffered(seq), &v);
        if let Some(u) = &event.uuid {
            self.put("uuids", &keys::event_uuid(project, u), &seq.0.to_be_bytes());
        }
    }
}

/// Whether an entry stores an event of `did`.
fn stores_event_of(entry: &Entry, did: &str) -> bool {
    entry
        .changes
        .iter()
        .any(|c| matches!(c, Change::EventStored { event } if event.distinct_id == did))
}

impl State for Materializer<'_> {
    fn load(&mut self, project: ProjectId, uuid: PersonUuid) -> Option<Person> {
        if let Some(p) = self.persons.get(&(project, uuid)) {
            return p.clone();
        }
        match self.store.person(project, uuid) {
            Ok(p) => p,
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }

    fn take(&mut self, project: ProjectId, uuid: PersonUuid) -> Option<Person> {
        match self.persons.remove(&(project, uuid)) {
            Some(cached) => cached,
            None => self.load(project, uuid),
        }
    }

    fn save(&mut self, person: Person) {
        // Idempotent: also restores the order key of a split part that keeps its uuid.
        let k = keys::order(person.project, person.created_seq, person.uuid);
        self.put("order", &k, &[]);
        self.update(person);
    }

    fn update(&mut self, person: Person) {
        // The order key (project, created seq, uuid) cannot change for an existing person.
        // The record is written when the batch is finished.
        let key = (person.project, person.uuid);
        self.changed.push(key);
        self.persons.insert(key, Some(person));
    }

    fn remove(&mut self, project: ProjectId, uuid: PersonUuid) {
        if let Some(p) = self.load(project, uuid) {
            self.delete("order", &keys::order(project, p.created_seq, uuid));
        }
        self.changed.push((project, uuid));
        self.persons.insert((project, uuid), None);
    }

    fn map_id(&mut self, project: ProjectId, distinct_id: &str, person: Option<PersonUuid>) {
        let k = keys::did(project, distinct_id);
        match person {
            Some(u) => self.put("dids", &k, u.0.as_bytes()),
            None => self.delete("dids", &k),
        }
    }

    fn record(&mut self, project: ProjectId, seq: Seq, at_ms: i64, change: &Change) {
        match change {
            Change::ProjectCreated { id, token, name } => {
                let rec = ProjectRecord {
                    id: *id,
                    token: token.clone(),
                    name: name.clone(),
                    created_at_ms: at_ms,
                };
                self.put_project(rec);
                self.put(
                    "projects",
                    &keys::project_by_token(token),
                    &id.0.to_be_bytes(),
                );
            }
            Change::EventStored { event } => {
                self.put(
                    "evdid",
                    &keys::did_seq(project, &event.distinct_id, seq),
                    &[],
                );
                self.put(
                    "evname",
                    &keys::event_by_name(project, &event.event, event.timestamp_ms, seq),
                    event.distinct_id.as_bytes(),
                );
                if let Some(u) = &event.uuid {
                    self.put("uuids", &keys::event_uuid(project, u), &seq.0.to_be_bytes());
                }
            }
            Change::WarningRecorded { warning } => {
                let k = keys::warning(project, seq, self.warning_index);
                self.warning_index += 1;
                self.put("warnings", &k, &codec::encode(warning));
                if warning.kind.is_rate_limited() {
                    let k = keys::limit(project, warning.kind as u8, &warning.distinct_id);
                    self.put("limits", &k, &codec::encode(warning));
                }
            }
            Change::PersonCreated {
                person,
                distinct_ids,
                ..
            } => {
                self.hist(project, *person);
                distinct_ids.iter().for_each(|d| self.did_hist(project, d));
            }
            Change::DistinctIdAttached {
                person,
                distinct_id,
                ..
            } => {
                self.hist(project, *person);
                self.did_hist(project, distinct_id);
            }
            Change::PropertiesChanged { person, .. } | Change::PersonIdentified { person } => {
                self.hist(project, *person)
            }
            Change::PersonsMerged {
                survivor,
                absorbed,
                moved_ids,
                ..
            } => {
                self.hist(project, *survivor);
                self.hist(project, *absorbed);
                moved_ids.iter().for_each(|d| self.did_hist(project, d));
            }
            Change::MergeRefused {
                person,
                other_person,
                other,
                into,
                ..
            } => {
                for p in [person, other_person].into_iter().flatten() {
                    self.hist(project, *p);
                }
                self.did_hist(project, other);
                self.did_hist(project, into);
            }
            Change::PersonSplit { person, parts, .. } => {
                self.hist(project, *person);
                for (d, u) in parts {
                    self.hist(project, *u);
                    self.did_hist(project, d);
                }
            }
            Change::PersonDeleted {
                person,
                distinct_ids,
                delete_events,
            } => {
                self.hist(project, *person);
                for d in distinct_ids {
                    self.did_hist(project, d);
                    if *delete_events {
                        self.redact_events(project, d);
                        for buffered in self.released.clone() {
                            self.redact_waited(buffered, d);
                        }
                        let prefix = keys::did(project, d);
                        self.release("evdid");
                        let cf = self.store.cf("evdid");
                        self.batch
                            .delete_range_cf(cf, prefix.clone(), keys::prefix_end(&prefix));
                    }
                }
            }
            Change::ProjectSettingsChanged { settings } => self.settings_changed(project, settings),
            Change::EventBuffered {
                event,
                release_at_ms,
            } => self.buffered(project, seq, event, *release_at_ms),
            Change::BufferReleased { buffered } => {
                self.released.push(*buffered);
                self.delete("buffer", &keys::buffered(*buffered))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HeldPuts;

    #[test]
    fn held_puts_sort_by_key_and_keep_the_order_of_puts_of_one_key() {
        let mut held = HeldPuts::default();
        // Many puts of few keys, so that the sort meets long runs of equal keys.
        let n = 5_000u32;
        for i in 0..n {
            let key = [(i.wrapping_mul(2_654_435_761) % 7) as u8, 1];
            held.push(&key, &i.to_be_bytes());
        }
        held.sort();
        let sorted: Vec<(Vec<u8>, u32)> = held
            .iter()
            .map(|(k, v)| (k.to_vec(), u32::from_be_bytes(v.try_into().unwrap())))
            .collect();
        assert_eq!(sorted.len(), n as usize);
        for pair in sorted.windows(2) {
            let ((ka, va), (kb, vb)) = (&pair[0], &pair[1]);
            assert!(
                ka < kb || (ka == kb && va < vb),
                "{ka:?}={va} before {kb:?}={vb}"
            );
        }
    }
}
