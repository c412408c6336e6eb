//! State in plain `HashMap`s: scratch replays (`idstitch verify`) and tests.

use std::borrow::Cow;
use std::collections::HashMap;

use foldhash::fast::RandomState;

use super::apply::State;
use super::change::Change;
use super::ids::{PersonUuid, ProjectId, Seq};
use super::person::Person;

/// Which person each (project, distinct ID) belongs to.
pub type DidMap = HashMap<(ProjectId, String), PersonUuid, RandomState>;

/// Persons and the distinct-ID map of every project, in memory.
///
/// The maps hash with foldhash (seeded per process, so crafted distinct IDs cannot be aimed at
/// one bucket) rather than SipHash: a replay of millions of entries spends much of its time
/// here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemState {
    /// Persons by (project, uuid).
    pub persons: HashMap<(ProjectId, PersonUuid), Person, RandomState>,
    /// Which person each distinct ID belongs to.
    pub dids: DidMap,
    /// Stored event count per project.
    pub events: HashMap<ProjectId, u64, RandomState>,
    /// When set, `dids` is not kept: every distinct ID is in its person's `distinct_ids` (the
    /// map is only ever written, never read, by `apply`), so a replay that only digests or
    /// counts the map reads it off the persons ([`MemState::each_did`]) instead of building
    /// millions of keys it would throw away.
    pub dids_from_persons: bool,
}

impl MemState {
    /// Empty, with room for about `persons` persons and `dids` distinct IDs (a replay that
    /// knows the size of what it rebuilds does not grow and rehash its maps again and again).
    pub fn with_capacity(persons: usize, dids: usize) -> Self {
        MemState {
            persons: HashMap::with_capacity_and_hasher(persons, RandomState::default()),
            dids: HashMap::with_capacity_and_hasher(dids, RandomState::default()),
            ..MemState::default()
        }
    }

    /// Empty, with room for about `persons` persons, and no distinct-ID map kept
    /// ([`MemState::dids_from_persons`]).
    pub fn persons_only(persons: usize) -> Self {
        MemState {
            dids_from_persons: true,
            ..MemState::with_capacity(persons, 0)
        }
    }

    /// Every distinct ID with its person, in no particular order: the map, or when it is not
    /// kept, the persons' distinct IDs.
    pub fn each_did(&self, mut f: impl FnMut(ProjectId, &str, PersonUuid)) {
        if self.dids_from_persons {
            for ((project, uuid), p) in &self.persons {
                for did in &p.distinct_ids {
                    f(*project, did, *uuid);
                }
            }
        } else {
            for ((project, did), uuid) in &self.dids {
                f(*project, did, *uuid);
            }
        }
    }

    /// How many distinct IDs map to a person.
    pub fn distinct_id_count(&self) -> usize {
        if self.dids_from_persons {
            self.persons.values().map(|p| p.distinct_ids.len()).sum()
        } else {
            self.dids.len()
        }
    }

    /// The distinct-ID map: the one kept, or one built from the persons when it is not.
    pub fn dids_map(&self) -> Cow<'_, DidMap> {
        if !self.dids_from_persons {
            return Cow::Borrowed(&self.dids);
        }
        let mut dids =
            HashMap::with_capacity_and_hasher(self.distinct_id_count(), RandomState::default());
        self.each_did(|project, did, uuid| {
            dids.insert((project, did.to_string()), uuid);
        });
        Cow::Owned(dids)
    }

    /// The same state with its distinct-ID map kept ([`MemState::dids_map`]).
    pub fn with_dids(mut self) -> Self {
        if self.dids_from_persons {
            self.dids = self.dids_map().into_owned();
            self.dids_from_persons = false;
        }
        self
    }

    /// Count `n` more stored events in `project`.
    pub fn count_events(&mut self, project: ProjectId, n: u64) {
        if n > 0 {
            *self.events.entry(project).or_default() += n;
        }
    }

    /// The person of a distinct ID.
    pub fn person_of(&self, project: ProjectId, did: &str) -> Option<&Person> {
        let uuid = self.dids.get(&(project, did.to_string()))?;
        self.persons.get(&(project, *uuid))
    }
}

impl State for MemState {
    fn load(&mut self, project: ProjectId, uuid: PersonUuid) -> Option<Person> {
        self.persons.get(&(project, uuid)).cloned()
    }

    fn take(&mut self, project: ProjectId, uuid: PersonUuid) -> Option<Person> {
        self.persons.remove(&(project, uuid))
    }

    fn save(&mut self, person: Person) {
        self.persons.insert((person.project, person.uuid), person);
    }

    fn remove(&mut self, project: ProjectId, uuid: PersonUuid) {
        self.persons.remove(&(project, uuid));
    }

    fn map_id(&mut self, project: ProjectId, distinct_id: &str, person: Option<PersonUuid>) {
        if self.dids_from_persons {
            return;
        }
        let key = (project, distinct_id.to_string());
        match person {
            Some(u) => self.dids.insert(key, u),
            None => self.dids.remove(&key),
        };
    }

    fn record(&mut self, project: ProjectId, _seq: Seq, _at_ms: i64, change: &Change) {
        if let Change::EventStored { .. } = change {
            self.count_events(project, 1);
        }
    }
}
