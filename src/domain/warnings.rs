//! Ingestion warnings (spec §8) and their once-an-hour rate limit.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ids::ProjectId;
use super::props::Props;

/// The kinds of ingestion warning. Stored by position: only append new kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WarningKind {
    /// A merge named an illegal distinct ID.
    CannotMergeWithIllegalDistinctId,
    /// A merge's source person was already identified.
    CannotMergeAlreadyIdentified,
    /// A merge's source person had more distinct IDs than `--merge-limit`.
    MergeLimitExceeded,
    /// A merge event arrived with `$process_person_profile: false`.
    InvalidEventWhenProcessPersonProfileIsFalse,
    /// `$process_person_profile` was not a boolean.
    InvalidProcessPersonProfile,
    /// A property change would have made a person larger than 512 KiB.
    PersonPropertiesSizeViolation,
    /// The event's distinct ID was longer than 200 code points.
    DistinctIdTruncated,
    /// A merge would have given a person more distinct IDs than
    /// `--max-distinct-ids-per-person` (beyond PostHog; appended to keep variant numbers).
    DistinctIdLimitExceeded,
}

impl WarningKind {
    /// The PostHog name of this warning.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CannotMergeWithIllegalDistinctId => "cannot_merge_with_illegal_distinct_id",
            Self::CannotMergeAlreadyIdentified => "cannot_merge_already_identified",
            Self::MergeLimitExceeded => "merge_limit_exceeded",
            Self::InvalidEventWhenProcessPersonProfileIsFalse => {
                "invalid_event_when_process_person_profile_is_false"
            }
            Self::InvalidProcessPersonProfile => "invalid_process_person_profile",
            Self::PersonPropertiesSizeViolation => "person_properties_size_violation",
            Self::DistinctIdTruncated => "distinct_id_truncated",
            Self::DistinctIdLimitExceeded => "distinct_id_limit_exceeded",
        }
    }

    /// Whether this kind is recorded at most once an hour per (project, kind, distinct ID).
    pub fn is_rate_limited(self) -> bool {
        matches!(
            self,
            Self::InvalidProcessPersonProfile
                | Self::PersonPropertiesSizeViolation
                | Self::DistinctIdTruncated
        )
    }
}

/// One ingestion warning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Warning {
    /// What went wrong.
    pub kind: WarningKind,
    /// Ingestion time, in milliseconds since the epoch.
    pub at_ms: i64,
    /// The distinct ID the rate limit is keyed on.
    pub distinct_id: String,
    /// PostHog's `details` object.
    pub details: Props,
}

impl Warning {
    /// A warning with details given as (key, value) pairs.
    pub fn new(
        kind: WarningKind,
        at_ms: i64,
        distinct_id: &str,
        details: Vec<(&str, Value)>,
    ) -> Self {
        let mut map = Map::new();
        for (k, v) in details {
            map.insert(k.to_string(), v);
        }
        Warning {
            kind,
            at_ms,
            distinct_id: distinct_id.to_string(),
            details: Props(map),
        }
    }
}

const HOUR_MS: i64 = 3_600_000;

/// Remembers when each rate-limited warning was last recorded (spec §8).
#[derive(Debug, Default)]
pub struct WarningLimiter {
    last: HashMap<(ProjectId, WarningKind, String), i64>,
}

impl WarningLimiter {
    /// Whether `w` may be recorded now; remembers it when it may.
    pub fn admit(&mut self, project: ProjectId, w: &Warning) -> bool {
        if !w.kind.is_rate_limited() {
            return true;
        }
        let key = (project, w.kind, w.distinct_id.clone());
        match self.last.get(&key) {
            Some(&t) if w.at_ms - t < HOUR_MS => false,
            _ => {
                self.last.insert(key, w.at_ms);
                true
            }
        }
    }

    /// Remember a warning recorded earlier (restoring the limit after a restart).
    pub fn remember(&mut self, project: ProjectId, w: &Warning) {
        if w.kind.is_rate_limited() {
            let slot = self
                .last
                .entry((project, w.kind, w.distinct_id.clone()))
                .or_insert(w.at_ms);
            *slot = (*slot).max(w.at_ms);
        }
    }

    /// Forget entries older than an hour before `now_ms`, to bound memory.
    pub fn prune(&mut self, now_ms: i64) {
        self.last.retain(|_, t| now_ms - *t < HOUR_MS);
    }
}
