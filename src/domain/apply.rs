//! Folding log entries into state. No rules live here: `decide` made every choice already.

use std::collections::BTreeSet;

use super::change::{Change, Entry};
use super::ids::{PersonUuid, ProjectId, Seq};
use super::person::Person;
use super::props::{apply_diff, Props};

/// Where [`apply_entry`] reads and writes persons: RocksDB in the store, `HashMap`s in scratch
/// replays and tests.
pub trait State {
    /// The person with this uuid, if it exists.
    fn load(&mut self, project: ProjectId, uuid: PersonUuid) -> Option<Person>;
    /// The person, to be changed and handed back to [`State::save`] at once. A state that
    /// owns its persons moves it out instead of cloning it.
    fn take(&mut self, project: ProjectId, uuid: PersonUuid) -> Option<Person> {
        self.load(project, uuid)
    }
    /// Create or overwrite a person.
    fn save(&mut self, person: Person);
    /// Hand back a person from [`State::take`], changed but not new: a state with indexes
    /// that only depend on the person's existence can skip them.
    fn update(&mut self, person: Person) {
        self.save(person)
    }
    /// Remove a person (merged away, split or deleted).
    fn remove(&mut self, project: ProjectId, uuid: PersonUuid);
    /// Point a distinct ID at a person, or at nobody.
    fn map_id(&mut self, project: ProjectId, distinct_id: &str, person: Option<PersonUuid>);
    /// Everything else a change leaves behind (stored events, warnings, projects, indexes).
    fn record(&mut self, project: ProjectId, seq: Seq, at_ms: i64, change: &Change);
}

/// A new person from a `PersonCreated` change.
pub fn created_person(project: ProjectId, seq: Seq, change: &Change) -> Option<Person> {
    match change {
        Change::PersonCreated { .. } => into_created_person(project, seq, change.clone()).ok(),
        _ => None,
    }
}

/// The new person of a `PersonCreated` change, taking its distinct IDs and properties; any
/// other change is handed back.
// The change goes back by value, as it came: boxing it would allocate for every change a
// replay applies, to save moving a few words.
#[allow(clippy::result_large_err)]
fn into_created_person(project: ProjectId, seq: Seq, change: Change) -> Result<Person, Change> {
    match change {
        Change::PersonCreated {
            person,
            distinct_ids,
            properties,
            is_identified,
            created_at_ms,
        } => Ok(Person {
            project,
            uuid: person,
            distinct_ids,
            properties,
            is_identified,
            created_at_ms,
            version: 0,
            created_seq: seq,
        }),
        other => Err(other),
    }
}

/// Apply one change to the person it modifies (see [`Change::touched`]).
fn apply_change(p: &mut Person, change: &Change) {
    match change {
        Change::DistinctIdAttached { distinct_id, .. } => p.distinct_ids.push(distinct_id.clone()),
        Change::PropertiesChanged { set, unset, .. } => {
            apply_diff(&mut p.properties.0, &set.0, unset)
        }
        Change::PersonIdentified { .. } => p.is_identified = true,
        Change::PersonsMerged {
            moved_ids,
            brought,
            created_at_ms,
            ..
        } => {
            for (k, v) in &brought.0 {
                p.properties.0.entry(k.clone()).or_insert_with(|| v.clone());
            }
            p.distinct_ids.extend(moved_ids.iter().cloned());
            p.created_at_ms = *created_at_ms;
        }
        _ => {}
    }
}

/// Apply every change of `entry` that modifies `p`; its version goes up once if any did.
pub fn apply_entry_to_person(p: &mut Person, entry: &Entry) -> bool {
    apply_changes_to_person(p, &entry.changes)
}

fn apply_changes_to_person(p: &mut Person, changes: &[Change]) -> bool {
    let mut changed = false;
    for c in changes {
        if c.touched() == Some(p.uuid) {
            apply_change(p, c);
            changed = true;
        }
    }
    if changed {
        p.version += 1;
    }
    changed
}

/// The persons that `person` splits into (spec §10): one per distinct ID, the main one keeping
/// the properties.
///
/// Each part's uuid is that of its distinct ID (spec §6), so one part has the original's uuid:
/// the ID the original was created for. That part is the original going on, main or not: its
/// version goes up (spec §5), it keeps its identified flag (`is_identified` never goes back to
/// false, spec §4), its creation time and its place in the creation order; it keeps the
/// properties only when it is the main part. Every other part is a new person, created by the
/// split: version 0, its properties and the identified flag the original's only when it is the
/// main part. So the original uuid's version goes up at a split, and a consumer that keeps the
/// highest version per uuid sees it. The part under the original uuid stays identified: a later
/// `$identify` or `$create_alias` that would merge it into another person is refused as already
/// identified (spec §4; only `$merge_dangerously` merges it), where PostHog, whose split-off
/// persons start unidentified, would merge it. (A part whose uuid named a person that a merge
/// absorbed before starts again at version 0, below that person's last version, as before.)
pub fn split_parts(
    original: &Person,
    seq: Seq,
    main: &str,
    parts: &[(String, PersonUuid)],
) -> Vec<Person> {
    parts
        .iter()
        .map(|(did, uuid)| {
            let is_main = did == main;
            let goes_on = *uuid == original.uuid;
            Person {
                project: original.project,
                uuid: *uuid,
                distinct_ids: vec![did.clone()],
                properties: if is_main {
                    original.properties.clone()
                } else {
                    Props::new()
                },
                is_identified: (is_main || goes_on) && original.is_identified,
                created_at_ms: original.created_at_ms,
                version: if goes_on { original.version + 1 } else { 0 },
                created_seq: if goes_on { original.created_seq } else { seq },
            }
        })
        .collect()
}

/// Fold one log entry into `state`.
pub fn apply_entry<S: State>(state: &mut S, seq: Seq, entry: &Entry) {
    let project = entry.project;
    for change in &entry.changes {
        match created_person(project, seq, change) {
            Some(p) => create(state, p),
            None => apply_to_state(state, project, seq, change),
        }
        state.record(project, seq, entry.at_ms, change);
    }
    update_touched(state, project, &entry.changes);
}

/// [`apply_entry`] one change at a time, each taken by value, for a replay that does some of an
/// entry's changes itself (`store::verify` keeps a created person as the bytes of its row):
/// feed the entry's other changes in order to [`Applying::change`], then call
/// [`Applying::finish`]. A created person takes the distinct IDs and properties of its change
/// instead of copies of them; the state is left as [`apply_entry`] leaves it, except that a
/// `PersonCreated` change is recorded before its person is saved rather than after (no
/// [`State::record`] reads the person a change creates).
pub struct Applying {
    project: ProjectId,
    seq: Seq,
    at_ms: i64,
    /// The changes to persons' own fields, for `update_touched` (most entries have none).
    rest: Vec<Change>,
}

impl Applying {
    /// Start applying the entry at `seq`.
    pub fn new(project: ProjectId, seq: Seq, at_ms: i64) -> Self {
        Applying {
            project,
            seq,
            at_ms,
            rest: Vec::new(),
        }
    }

    /// Apply the entry's next change.
    pub fn change<S: State>(&mut self, state: &mut S, change: Change) {
        let (project, seq) = (self.project, self.seq);
        if let Change::PersonCreated { .. } = change {
            state.record(project, seq, self.at_ms, &change);
        }
        match into_created_person(project, seq, change) {
            Ok(p) => create(state, p),
            Err(other) => {
                apply_to_state(state, project, seq, &other);
                state.record(project, seq, self.at_ms, &other);
                if other.touched().is_some() {
                    self.rest.push(other);
                }
            }
        }
    }

    /// Apply the changes to the persons' own fields, once all of the entry's are in place.
    pub fn finish<S: State>(self, state: &mut S) {
        if !self.rest.is_empty() {
            update_touched(state, self.project, &self.rest);
        }
    }
}

fn create<S: State>(state: &mut S, p: Person) {
    for did in &p.distinct_ids {
        state.map_id(p.project, did, Some(p.uuid));
    }
    state.save(p);
}

/// What a change other than a creation does to the persons and the distinct-ID map, except
/// for the changes to a person's own fields (see [`update_touched`]).
fn apply_to_state<S: State>(state: &mut S, project: ProjectId, seq: Seq, change: &Change) {
    match change {
        Change::DistinctIdAttached {
            person,
            distinct_id,
            ..
        } => {
            state.map_id(project, distinct_id, Some(*person));
        }
        Change::PersonsMerged {
            survivor,
            absorbed,
            moved_ids,
            ..
        } => {
            state.remove(project, *absorbed);
            for did in moved_ids {
                state.map_id(project, did, Some(*survivor));
            }
        }
        Change::PersonSplit {
            person,
            main,
            parts,
        } => {
            if let Some(original) = state.load(project, *person) {
                state.remove(project, *person);
                for part in split_parts(&original, seq, main, parts) {
                    state.map_id(project, &part.distinct_ids[0], Some(part.uuid));
                    state.save(part);
                }
            }
        }
        Change::PersonDeleted {
            person,
            distinct_ids,
            ..
        } => {
            state.remove(project, *person);
            for did in distinct_ids {
                state.map_id(project, did, None);
            }
        }
        _ => {}
    }
}

/// Apply the changes to each person they touch, once all of them are in place.
fn update_touched<S: State>(state: &mut S, project: ProjectId, changes: &[Change]) {
    let touched: BTreeSet<PersonUuid> = changes.iter().filter_map(Change::touched).collect();
    for uuid in touched {
        if let Some(mut p) = state.take(project, uuid) {
            apply_changes_to_person(&mut p, changes);
            state.update(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::person_uuid;

    /// A person created for "anon", then identified as "user", with a property.
    fn identified() -> Person {
        let p = ProjectId(1);
        let mut props = Props::new();
        props.0.insert("email".into(), "u@x.io".into());
        Person {
            project: p,
            uuid: person_uuid(p, "anon"),
            distinct_ids: vec!["anon".into(), "user".into()],
            properties: props,
            is_identified: true,
            created_at_ms: 5,
            version: 2,
            created_seq: Seq(1),
        }
    }

    fn parts(p: &Person) -> Vec<(String, PersonUuid)> {
        let ids = p.distinct_ids.iter();
        ids.map(|d| (d.clone(), person_uuid(p.project, d)))
            .collect()
    }

    #[test]
    fn a_split_whose_main_id_created_the_person_carries_it_on() {
        let p = identified();
        let [anon, user] = split_parts(&p, Seq(9), "anon", &parts(&p))
            .try_into()
            .unwrap();
        assert_eq!(
            (anon.uuid, anon.version, anon.created_seq),
            (p.uuid, 3, Seq(1))
        );
        assert!(anon.is_identified);
        assert_eq!(anon.properties, p.properties);
        assert_eq!(
            (user.version, user.created_seq, user.is_identified),
            (0, Seq(9), false)
        );
        assert!(user.properties.0.is_empty());
    }

    /// The part that gets the original's uuid is not the main one: it is still the original
    /// going on (its version up, still identified, same place in the creation order), without
    /// the properties, which go to the main part, a new person.
    #[test]
    fn a_split_whose_main_id_is_another_carries_the_original_on_without_its_properties() {
        let p = identified();
        let [anon, user] = split_parts(&p, Seq(9), "user", &parts(&p))
            .try_into()
            .unwrap();
        assert_eq!(
            (anon.uuid, anon.version, anon.created_seq),
            (p.uuid, 3, Seq(1))
        );
        assert!(anon.is_identified);
        assert!(anon.properties.0.is_empty());
        assert_ne!(user.uuid, p.uuid);
        assert_eq!(
            (user.version, user.created_seq, user.is_identified),
            (0, Seq(9), true)
        );
        assert_eq!(user.properties, p.properties);
        assert_eq!(user.created_at_ms, p.created_at_ms);
    }

    /// An unidentified person split: no part becomes identified.
    #[test]
    fn a_split_of_an_unidentified_person_identifies_no_part() {
        let p = Person {
            is_identified: false,
            ..identified()
        };
        for main in ["anon", "user"] {
            let split = split_parts(&p, Seq(9), main, &parts(&p));
            assert!(split.iter().all(|q| !q.is_identified), "main {main}");
        }
    }
}
