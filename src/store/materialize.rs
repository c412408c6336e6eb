//! Derived state: the domain's [`State`] over a RocksDB `WriteBatch`, so that a log entry and
//! everything derived from it commit atomically.

use std::collections::HashMap;

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

/// Applies log entries to the derived column families, reading through its own pending writes.
pub struct Materializer<'s> {
    store: &'s Store,
    batch: WriteBatch,
    persons: PersonCache,
    projects: HashMap<ProjectId, ProjectRecord>,
    seq: Seq,
    warning_index: u16,
    error: Option<StoreError>,
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
            projects: HashMap::new(),
            seq: Seq(0),
            warning_index: 0,
            error: None,
        }
    }

    /// Add one entry: the log record itself (when `log_it`) and everything derived from it.
    pub fn add(&mut self, seq: Seq, entry: &Entry, log_it: bool) -> Result<(), StoreError> {
        if log_it {
            self.batch.put_cf(
                self.store.cf("log"),
                keys::log(seq),
                codec::encode_entry(entry),
            );
        }
        self.seq = seq;
        self.warning_index = 0;
        apply_entry(self, seq, entry);
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
        self.batch.put_cf(
            self.store.cf("meta"),
            b"applied_seq",
            self.seq.0.to_be_bytes(),
        );
        (self.batch, self.persons)
    }

    fn put(&mut self, cf: &str, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.store.cf(cf), key, value);
    }

    fn hist(&mut self, project: ProjectId, uuid: PersonUuid) {
        let k = keys::hist(project, uuid, self.seq);
        self.put("hist", &k, &[]);
    }

    /// Empty the properties of every stored event of `did` in its log entry (deletion with
    /// `delete_events`); the uuid stays so that a redelivery is still recognised. Compaction
    /// then reclaims the old bytes (`Store::compact_log`).
    fn redact_events(&mut self, project: ProjectId, did: &str) {
        let seqs = match self.store.event_seqs_of(project, did, None, usize::MAX) {
            Ok(s) => s,
            Err(e) => {
                self.error.get_or_insert(e);
                return;
            }
        };
        for seq in seqs {
            let mut entry = match self.store.entry(seq) {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(e) => {
                    self.error.get_or_insert(e);
                    return;
                }
            };
            for c in &mut entry.changes {
                if let Change::EventStored { event } = c {
                    if event.distinct_id == did {
                        event.properties = RawProps::empty();
                        let k = keys::event_by_name(project, &event.event, event.timestamp_ms, seq);
                        self.batch.delete_cf(self.store.cf("evname"), k);
                    }
                }
            }
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
        let k = keys::person(person.project, person.uuid);
        let v = codec::encode(&person);
        self.put("persons", &k, &v);
        self.persons
            .insert((person.project, person.uuid), Some(person));
    }

    fn remove(&mut self, project: ProjectId, uuid: PersonUuid) {
        if let Some(p) = self.load(project, uuid) {
            let k = keys::order(project, p.created_seq, uuid);
            self.batch.delete_cf(self.store.cf("order"), k);
        }
        self.batch
            .delete_cf(self.store.cf("persons"), keys::person(project, uuid));
        self.persons.insert((project, uuid), None);
    }

    fn map_id(&mut self, project: ProjectId, distinct_id: &str, person: Option<PersonUuid>) {
        let k = keys::did(project, distinct_id);
        match person {
            Some(u) => self.put("dids", &k, u.0.as_bytes()),
            None => self.batch.delete_cf(self.store.cf("dids"), k),
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
                        let prefix = keys::did(project, d);
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
                let cf = self.store.cf("buffer");
                self.batch.delete_cf(cf, keys::buffered(*buffered));
            }
        }
    }
}
