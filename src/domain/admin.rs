//! Operator actions on persons (spec §10): split and delete, as pure decisions.

use super::change::Change;
use super::ids::{person_uuid, ProjectId};
use super::person::Person;

/// Why an operator action was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// `main_distinct_id` is not one of the person's.
    #[error("main_distinct_id {0:?} is not a distinct ID of this person")]
    NotThisPersons(String),
}

/// Split a person into one person per distinct ID; `main` (default: the first ID) keeps the
/// properties and the identified flag (as does the part under the person's own uuid:
/// `apply::split_parts`). A person with one ID is left as it is.
pub fn decide_split(
    project: ProjectId,
    person: &Person,
    main: Option<&str>,
) -> Result<Vec<Change>, AdminError> {
    let main = match main {
        Some(m) if !person.distinct_ids.iter().any(|d| d == m) => {
            return Err(AdminError::NotThisPersons(m.to_string()))
        }
        Some(m) => m.to_string(),
        None => person.distinct_ids.first().cloned().unwrap_or_default(),
    };
    if person.distinct_ids.len() < 2 {
        return Ok(Vec::new());
    }
    let parts = person
        .distinct_ids
        .iter()
        .map(|d| (d.clone(), person_uuid(project, d)))
        .collect();
    Ok(vec![Change::PersonSplit {
        person: person.uuid,
        main,
        parts,
    }])
}

/// Delete a person, optionally with its events: a tombstone that releases its distinct IDs.
pub fn decide_delete(person: &Person, delete_events: bool) -> Vec<Change> {
    vec![Change::PersonDeleted {
        person: person.uuid,
        distinct_ids: person.distinct_ids.clone(),
        delete_events,
    }]
}
