//! The facts of the log: every state change, in the past tense.
//!
//! `bincode` stores enum variants by position and struct fields with no names or lengths:
//! only ever append variants. Adding or changing a field anywhere (an old record has no bytes
//! for it, and an entry holds a list of changes, so the next one would be misread) bumps
//! `store::codec::FORMAT_VERSION` and keeps a fixture of the old format (ARCHITECTURE.md).

use serde::{Deserialize, Serialize};

use super::buffer::BufferedEvent;
use super::ids::{PersonUuid, ProjectId, Seq};
use super::normalize::MergeKind;
use super::props::{Props, RawProps};
use super::settings::ProjectSettings;
use super::warnings::Warning;

/// Why a merge was refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RefusalReason {
    /// One side was an illegal distinct ID (spec §4 steps 2-3).
    IllegalDistinctId {
        /// The illegal one.
        illegal: String,
    },
    /// The source person was already identified and the event was not `$merge_dangerously`.
    AlreadyIdentified,
    /// The source person had more distinct IDs than the limit (spec §9).
    MergeLimitExceeded {
        /// The configured limit.
        limit: u64,
    },
    /// The merge would have given a person more distinct IDs than
    /// `--max-distinct-ids-per-person` (appended: the log format keeps its variant numbers).
    DistinctIdLimitExceeded {
        /// The configured limit.
        limit: u64,
    },
}

impl RefusalReason {
    /// A short machine name for APIs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::IllegalDistinctId { .. } => "illegal_distinct_id",
            Self::AlreadyIdentified => "already_identified",
            Self::MergeLimitExceeded { .. } => "merge_limit_exceeded",
            Self::DistinctIdLimitExceeded { .. } => "distinct_id_limit_exceeded",
        }
    }
}

/// The reason as a sentence, for people (the history's `detail`).
impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::IllegalDistinctId { illegal } => {
                write!(
                    f,
                    "{illegal:?} is an illegal distinct ID, which never merges"
                )
            }
            Self::AlreadyIdentified => f.write_str(
                "the other person is already identified: only $merge_dangerously merges it",
            ),
            Self::MergeLimitExceeded { limit } => write!(
                f,
                "the other person has more than {limit} distinct IDs (the merge limit)"
            ),
            Self::DistinctIdLimitExceeded { limit } => write!(
                f,
                "the merged person would have more than {limit} distinct IDs \
                 (--max-distinct-ids-per-person)"
            ),
        }
    }
}

/// Which rule attached a distinct ID to a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttachRule {
    /// A merge event named an ID that had no person (spec §4 step 5, "only one exists").
    MergeWithNewId,
}

/// An event as stored, so that it can be read back and follow its person (spec §7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The SDK's event UUID, if it sent one.
    pub uuid: Option<String>,
    /// Event name.
    pub event: String,
    /// The distinct ID it was sent under (as cut).
    pub distinct_id: String,
    /// The event's properties after normalisation.
    pub properties: RawProps,
    /// Event time (or ingestion time), ms since the epoch.
    pub timestamp_ms: i64,
    /// Whether it was personless.
    pub personless: bool,
}

/// One state change. Variants are stored by position: append only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// A project came into being for a token.
    ProjectCreated {
        /// Its number.
        id: ProjectId,
        /// Its token (`phc_…`).
        token: String,
        /// A display name.
        name: String,
    },
    /// A person was created.
    PersonCreated {
        /// Its uuid.
        person: PersonUuid,
        /// Its first distinct IDs.
        distinct_ids: Vec<String>,
        /// Its first properties.
        properties: Props,
        /// Whether a merge event created it.
        is_identified: bool,
        /// Creation time.
        created_at_ms: i64,
    },
    /// A distinct ID without a person was attached to an existing person.
    DistinctIdAttached {
        /// The person.
        person: PersonUuid,
        /// The ID.
        distinct_id: String,
        /// Why.
        rule: AttachRule,
    },
    /// Person properties changed: `set` written, then `unset` removed.
    PropertiesChanged {
        /// The person.
        person: PersonUuid,
        /// Written keys.
        set: Props,
        /// Removed keys.
        unset: Vec<String>,
    },
    /// The person became identified.
    PersonIdentified {
        /// The person.
        person: PersonUuid,
    },
    /// `absorbed` was merged into `survivor` and ceased to exist.
    PersonsMerged {
        /// The `into` person, which keeps its uuid.
        survivor: PersonUuid,
        /// The `other` person.
        absorbed: PersonUuid,
        /// The absorbed person's distinct IDs, now the survivor's, in order.
        moved_ids: Vec<String>,
        /// Properties of the absorbed person the survivor did not have.
        brought: Props,
        /// Keys both had, where the survivor's value won.
        kept: Vec<String>,
        /// `min` of both creation times.
        created_at_ms: i64,
        /// The event kind that merged them.
        kind: MergeKind,
    },
    /// A merge was asked for and refused.
    MergeRefused {
        /// The `into` person, when it exists.
        person: Option<PersonUuid>,
        /// The person of `other`, when it exists.
        other_person: Option<PersonUuid>,
        /// The `other` distinct ID.
        other: String,
        /// The `into` distinct ID.
        into: String,
        /// Why.
        reason: RefusalReason,
    },
    /// An ingestion warning was recorded.
    WarningRecorded {
        /// The warning.
        warning: Warning,
    },
    /// An event was stored under its distinct ID.
    EventStored {
        /// The event.
        event: StoredEvent,
    },
    /// A person was split into one person per distinct ID.
    PersonSplit {
        /// The person split.
        person: PersonUuid,
        /// The distinct ID that keeps the properties (and the identified flag, which the part
        /// under the person's own uuid keeps too: `apply::split_parts`).
        main: String,
        /// Each distinct ID with the uuid of the person that now owns it.
        parts: Vec<(String, PersonUuid)>,
    },
    /// A person was deleted (a tombstone).
    PersonDeleted {
        /// The person.
        person: PersonUuid,
        /// Its distinct IDs, released.
        distinct_ids: Vec<String>,
        /// Whether its stored events were deleted too.
        delete_events: bool,
    },
    /// A project's settings changed (`PATCH /api/projects/{project}/`, or the `--projects`
    /// file); the whole settings after the change.
    ProjectSettingsChanged {
        /// The settings now in force.
        settings: ProjectSettings,
    },
    /// An event was delayed by the conversion buffer (spec §11). Its uuid counts as accepted.
    EventBuffered {
        /// The event, as it arrived.
        event: BufferedEvent,
        /// When it is due, ms since the epoch.
        release_at_ms: i64,
    },
    /// A buffered event was released; the rest of this entry is its processing.
    BufferReleased {
        /// The seq of the entry that buffered it.
        buffered: Seq,
    },
}

impl Change {
    /// The persons this change modifies (bumps their version), not counting creation.
    pub fn touched(&self) -> Option<PersonUuid> {
        match self {
            Change::DistinctIdAttached { person, .. }
            | Change::PropertiesChanged { person, .. }
            | Change::PersonIdentified { person } => Some(*person),
            Change::PersonsMerged { survivor, .. } => Some(*survivor),
            _ => None,
        }
    }
}

/// One log record: everything one ingested event (or one admin action) changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The project it happened in.
    pub project: ProjectId,
    /// Ingestion time, ms since the epoch.
    pub at_ms: i64,
    /// The UUID of the event that caused it, if any.
    pub cause: Option<String>,
    /// What changed, in order.
    pub changes: Vec<Change>,
}

impl Entry {
    /// Whether this entry takes `did` away from its person (a deletion releases every ID of the
    /// deleted person): what the ID went through before is the story of a person it no longer
    /// belongs to.
    pub fn releases_distinct_id(&self, did: &str) -> bool {
        self.changes.iter().any(|c| {
            matches!(c, Change::PersonDeleted { distinct_ids, .. } if distinct_ids.iter().any(|d| d == did))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(changes: Vec<Change>) -> Entry {
        Entry {
            project: ProjectId(1),
            at_ms: 0,
            cause: None,
            changes,
        }
    }

    fn uuid(n: u8) -> PersonUuid {
        PersonUuid(uuid::Uuid::from_bytes([n; 16]))
    }

    #[test]
    fn a_deletion_releases_the_distinct_ids_of_its_person() {
        let created = entry(vec![Change::PersonCreated {
            person: uuid(1),
            distinct_ids: vec!["a".into()],
            properties: Props::default(),
            is_identified: false,
            created_at_ms: 0,
        }]);
        let deleted = entry(vec![Change::PersonDeleted {
            person: uuid(1),
            distinct_ids: vec!["a".into(), "b".into()],
            delete_events: false,
        }]);
        assert!(deleted.releases_distinct_id("b"));
        assert!(!deleted.releases_distinct_id("c"));
        assert!(!created.releases_distinct_id("a"));
    }
}
