//! The person: the entity that owns distinct IDs and properties.

use serde::{Deserialize, Serialize};

use super::ids::{PersonUuid, ProjectId, Seq};
use super::props::Props;

/// One person, as the actors hold it and the store materialises it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Person {
    /// The project the person belongs to.
    pub project: ProjectId,
    /// Stable identity (spec §6).
    pub uuid: PersonUuid,
    /// Distinct IDs in the order they were attached.
    pub distinct_ids: Vec<String>,
    /// Person properties.
    pub properties: Props,
    /// Set once by a merge decision; never goes back to false.
    pub is_identified: bool,
    /// Milliseconds since the epoch.
    pub created_at_ms: i64,
    /// Incremented once per event that changes the person.
    pub version: u64,
    /// The log position that created the person: the order of the persons list.
    pub created_seq: Seq,
}
