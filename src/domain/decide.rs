//! All identity rules in one pure function: given a normalised event and the persons it names,
//! decide which changes happen (spec §2-§5, §9).

use serde_json::{Map, Value};

use super::change::{AttachRule, Change, RefusalReason, StoredEvent};
use super::ids::{is_illegal_distinct_id, person_uuid, ProjectId};
use super::normalize::{
    merge_trigger, EventUpdates, MergeKind, Normalized, NO_PERSONLESS_EVENTS, NO_PROPERTY_EVENTS,
};
use super::person::Person;
use super::props::{exceeds, update_exceeds, Props, RawProps, MAX_PERSON_PROPERTIES_BYTES};
use super::warnings::{Warning, WarningKind, WarningLimiter};

/// What `decide` may look at besides the event.
pub struct Ctx<'a> {
    /// The event's project.
    pub project: ProjectId,
    /// Ingestion time, ms since the epoch.
    pub now_ms: i64,
    /// `--merge-limit`: refuse merges whose source person has more distinct IDs.
    pub merge_limit: Option<u64>,
    /// `--max-distinct-ids-per-person`: refuse attachments and merges that would give a person
    /// more distinct IDs (at least 2).
    pub max_ids: Option<u64>,
    /// The person of the event's distinct ID (`into`), if any.
    pub into: Option<&'a Person>,
    /// The person of the merge's `other` distinct ID, if any (see [`lookups`]).
    pub other: Option<&'a Person>,
    /// Rate limit of the once-an-hour warnings.
    pub limiter: &'a mut WarningLimiter,
}

/// The outcome of one event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// The changes to log, in order (empty for nothing at all).
    pub changes: Vec<Change>,
    /// Set when the event is dropped rather than stored; the reason for the client.
    pub dropped: Option<String>,
}

/// The distinct IDs whose persons `decide` needs: the event's own, and a merge's other one.
pub fn lookups(ev: &Normalized) -> (String, Option<String>) {
    let other = if ev.personless {
        None
    } else {
        merge_trigger(ev).map(|(_, o)| o)
    };
    (ev.distinct_id.clone(), other)
}

fn uuid_value(ev: &Normalized) -> Value {
    ev.uuid.clone().map(Value::String).unwrap_or(Value::Null)
}

struct Decider<'e, 'c> {
    ev: &'e Normalized,
    ctx: Ctx<'c>,
    out: Vec<Change>,
}

impl Decider<'_, '_> {
    fn warn(&mut self, w: Warning) {
        if self.ctx.limiter.admit(self.ctx.project, &w) {
            self.out.push(Change::WarningRecorded { warning: w });
        }
    }

    fn updates(&self) -> EventUpdates<'_> {
        if NO_PROPERTY_EVENTS.contains(&self.ev.name.as_str()) {
            EventUpdates::none()
        } else {
            EventUpdates::of(self.ev)
        }
    }

    fn size_violation(&mut self, person: &str, message: &str) {
        let w = Warning::new(
            WarningKind::PersonPropertiesSizeViolation,
            self.ctx.now_ms,
            &self.ev.distinct_id,
            vec![
                ("personId", Value::String(person.to_string())),
                ("distinctId", Value::String(self.ev.distinct_id.clone())),
                ("eventUuid", uuid_value(self.ev)),
                ("message", Value::String(message.to_string())),
            ],
        );
        self.warn(w);
    }

    /// A new person for `ids[0]` with the event's properties (spec §5, creation).
    fn create(&mut self, ids: Vec<String>, identified: bool) {
        let uuid = person_uuid(self.ctx.project, &ids[0]);
        let mut props = self.updates().initial();
        let creator = self.ev.uuid.as_ref().map(|u| Value::String(u.clone()));
        if let Some(u) = &creator {
            props.insert("$creator_event_uuid".into(), u.clone());
        }
        // The limit is on the person as created, its creator's uuid included.
        if exceeds(&props, MAX_PERSON_PROPERTIES_BYTES) {
            self.size_violation(
                &uuid.to_string(),
                "Person properties would exceed 512 KiB; not created with them",
            );
            props = Map::new();
            if let Some(u) = creator {
                props.insert("$creator_event_uuid".into(), u);
            }
        }
        self.out.push(Change::PersonCreated {
            person: uuid,
            distinct_ids: ids,
            properties: Props(props),
            is_identified: identified,
            created_at_ms: self.ev.timestamp_ms.unwrap_or(self.ctx.now_ms),
        });
    }

    /// The event's property changes on an existing person whose properties are `current`.
    fn update(&mut self, person: &Person, current: &Map<String, Value>) {
        let diff = self.updates().diff(current);
        if diff.is_empty() {
            return;
        }
        if update_exceeds(current, &diff.set, &diff.unset, MAX_PERSON_PROPERTIES_BYTES) {
            self.size_violation(
                &person.uuid.to_string(),
                "Person properties would exceed 512 KiB; update not applied",
            );
            return;
        }
        self.out.push(Change::PropertiesChanged {
            person: person.uuid,
            set: Props(diff.set),
            unset: diff.unset,
        });
    }

    fn identify(&mut self, person: &Person) {
        if !person.is_identified {
            self.out.push(Change::PersonIdentified {
                person: person.uuid,
            });
        }
    }

    /// An ordinary event for `into`: create its person or update it (spec §4 step 6).
    fn ordinary(&mut self) {
        match self.ctx.into {
            Some(p) => self.update(p, &p.properties.0),
            None => self.create(vec![self.ev.distinct_id.clone()], false),
        }
    }

    fn refuse(&mut self, reason: RefusalReason, other: &str, warning: Warning) {
        self.out.push(Change::MergeRefused {
            person: self.ctx.into.map(|p| p.uuid),
            other_person: self.ctx.other.map(|p| p.uuid),
            other: other.to_string(),
            into: self.ev.distinct_id.clone(),
            reason,
        });
        self.warn(warning);
    }

    fn illegal(&mut self, illegal: &str, other: &str) {
        let w = Warning::new(
            WarningKind::CannotMergeWithIllegalDistinctId,
            self.ctx.now_ms,
            &self.ev.distinct_id,
            vec![
                ("illegalDistinctId", Value::String(illegal.to_string())),
                ("otherDistinctId", Value::String(other.to_string())),
                ("eventUuid", uuid_value(self.ev)),
            ],
        );
        let other_id = if illegal == self.ev.distinct_id {
            other.to_string()
        } else {
            illegal.to_string()
        };
        self.refuse(
            RefusalReason::IllegalDistinctId {
                illegal: illegal.to_string(),
            },
            &other_id,
            w,
        );
    }

    /// merge(other, into) of spec §4.
    fn merge(&mut self, kind: MergeKind, other: &str) {
        let into = self.ev.distinct_id.clone();
        if other == into {
            return self.ordinary();
        }
        if is_illegal_distinct_id(&into) {
            self.illegal(&into, other);
            return self.ordinary();
        }
        if is_illegal_distinct_id(other) {
            self.illegal(other, &into);
            return self.ordinary();
        }
        match (self.ctx.into, self.ctx.other) {
            (None, None) => self.create(vec![into, other.to_string()], true),
            (Some(p), None) if self.over_id_limit(p.distinct_ids.len() + 1) => {
                self.id_limit_refused(other, p.distinct_ids.len() + 1);
                self.update_and_identify(p, &p.properties.0)
            }
            (None, Some(q)) if self.over_id_limit(q.distinct_ids.len() + 1) => {
                self.id_limit_refused(other, q.distinct_ids.len() + 1);
                // `into` stays apart from `other`'s person: the event acts on `into` alone,
                // a person of its own, identified as after any refusal past step 4 (spec §4).
                self.create(vec![into], true)
            }
            (Some(p), None) => self.attach_and_identify(p, other),
            (None, Some(q)) => self.attach_and_identify(q, &into),
            (Some(p), Some(q)) if p.uuid == q.uuid => self.update_and_identify(p, &p.properties.0),
            (Some(p), Some(q)) => self.merge_persons(kind, p, q, other),
        }
    }

    /// Whether a person with `ids` distinct IDs is over `--max-distinct-ids-per-person`.
    fn over_id_limit(&self, ids: usize) -> bool {
        self.ctx.max_ids.is_some_and(|limit| ids as u64 > limit)
    }

    /// Refuse the merge of `other` because the person would get `ids` distinct IDs.
    fn id_limit_refused(&mut self, other: &str, ids: usize) {
        let limit = self.ctx.max_ids.unwrap_or(u64::MAX);
        let w = Warning::new(
            WarningKind::DistinctIdLimitExceeded,
            self.ctx.now_ms,
            &self.ev.distinct_id,
            vec![
                ("sourcePersonDistinctId", Value::String(other.to_string())),
                (
                    "targetPersonDistinctId",
                    Value::String(self.ev.distinct_id.clone()),
                ),
                ("eventUuid", uuid_value(self.ev)),
                ("distinctIds", Value::from(ids)),
                ("limit", Value::from(limit)),
            ],
        );
        self.refuse(RefusalReason::DistinctIdLimitExceeded { limit }, other, w);
    }

    fn attach_and_identify(&mut self, p: &Person, id: &str) {
        self.out.push(Change::DistinctIdAttached {
            person: p.uuid,
            distinct_id: id.to_string(),
            rule: AttachRule::MergeWithNewId,
        });
        self.update_and_identify(p, &p.properties.0);
    }

    fn update_and_identify(&mut self, p: &Person, current: &Map<String, Value>) {
        self.update(p, current);
        self.identify(p);
    }

    fn merge_persons(&mut self, kind: MergeKind, p: &Person, q: &Person, other: &str) {
        let details = |extra: Option<u64>| {
            let mut d = vec![
                ("sourcePersonDistinctId", Value::String(other.to_string())),
                (
                    "targetPersonDistinctId",
                    Value::String(self.ev.distinct_id.clone()),
                ),
                ("eventUuid", uuid_value(self.ev)),
            ];
            if let Some(limit) = extra {
                d.push(("limit", Value::from(limit)));
            }
            d
        };
        if kind != MergeKind::MergeDangerously && q.is_identified {
            let w = Warning::new(
                WarningKind::CannotMergeAlreadyIdentified,
                self.ctx.now_ms,
                &self.ev.distinct_id,
                details(None),
            );
            self.refuse(RefusalReason::AlreadyIdentified, other, w);
            return self.update_and_identify(p, &p.properties.0);
        }
        if let Some(limit) = self.ctx.merge_limit {
            if q.distinct_ids.len() as u64 > limit {
                let w = Warning::new(
                    WarningKind::MergeLimitExceeded,
                    self.ctx.now_ms,
                    &self.ev.distinct_id,
                    details(Some(limit)),
                );
                self.refuse(RefusalReason::MergeLimitExceeded { limit }, other, w);
                return self.update_and_identify(p, &p.properties.0);
            }
        }
        let combined_ids = p.distinct_ids.len() + q.distinct_ids.len();
        if self.over_id_limit(combined_ids) {
            self.id_limit_refused(other, combined_ids);
            return self.update_and_identify(p, &p.properties.0);
        }
        let mut brought = Map::new();
        let mut kept = Vec::new();
        for (k, v) in &q.properties.0 {
            if p.properties.0.contains_key(k) {
                kept.push(k.clone());
            } else {
                brought.insert(k.clone(), v.clone());
            }
        }
        let mut combined = p.properties.0.clone();
        combined.extend(brought.clone());
        if exceeds(&combined, MAX_PERSON_PROPERTIES_BYTES) {
            self.size_violation(
                &p.uuid.to_string(),
                "Merged person properties would exceed 512 KiB; the survivor keeps its own",
            );
            brought = Map::new();
            combined = p.properties.0.clone();
        }
        self.out.push(Change::PersonsMerged {
            survivor: p.uuid,
            absorbed: q.uuid,
            moved_ids: q.distinct_ids.clone(),
            brought: Props(brought),
            kept,
            created_at_ms: p.created_at_ms.min(q.created_at_ms),
            kind,
        });
        self.update_and_identify(p, &combined);
    }

    fn stored_event(&self, properties: RawProps) -> Change {
        Change::EventStored {
            event: StoredEvent {
                uuid: self.ev.uuid.clone(),
                event: self.ev.name.clone(),
                distinct_id: self.ev.distinct_id.clone(),
                properties,
                timestamp_ms: self.ev.timestamp_ms.unwrap_or(self.ctx.now_ms),
                personless: self.ev.personless,
            },
        }
    }
}

/// Decide what one event does (the pure heart of idstitch). The stored event's properties are
/// the JSON text normalisation serialised ([`Normalized::stored_properties`]).
pub fn decide(ev: &Normalized, ctx: Ctx<'_>) -> Decision {
    let trigger = if ev.personless {
        None
    } else {
        merge_trigger(ev)
    };
    decide_with(ev, ctx, trigger, ev.properties.raw().clone())
}

fn decide_with(
    ev: &Normalized,
    ctx: Ctx<'_>,
    trigger: Option<(MergeKind, String)>,
    properties: RawProps,
) -> Decision {
    let mut d = Decider {
        ev,
        ctx,
        out: Vec::new(),
    };
    // Normalisation's warnings take the decision's time, as this event's other warnings do:
    // the warnings list is newest first in log order, and a warning stamped when its request
    // arrived read as older than one decided before it (helper-41).
    for w in &ev.warnings {
        d.warn(Warning {
            at_ms: d.ctx.now_ms,
            ..w.clone()
        });
    }
    if ev.personless && NO_PERSONLESS_EVENTS.contains(&ev.name.as_str()) {
        let w = Warning::new(
            WarningKind::InvalidEventWhenProcessPersonProfileIsFalse,
            d.ctx.now_ms,
            &ev.distinct_id,
            vec![
                ("eventUuid", uuid_value(ev)),
                ("event", Value::String(ev.name.clone())),
                ("distinctId", Value::String(ev.distinct_id.clone())),
            ],
        );
        d.warn(w);
        return Decision {
            changes: d.out,
            dropped: Some(format!(
                "{} is not allowed with $process_person_profile=false",
                ev.name
            )),
        };
    }
    let stored = d.stored_event(properties);
    d.out.push(stored);
    if !ev.personless {
        match trigger {
            Some((kind, other)) => d.merge(kind, &other),
            None => d.ordinary(),
        }
    }
    Decision {
        changes: d.out,
        dropped: None,
    }
}
