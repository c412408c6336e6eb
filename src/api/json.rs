//! How persons, events, warnings and log entries look in JSON (PostHog's REST shapes).

use serde_json::{json, Map, Value};

use crate::domain::{
    person_uuid, Change, Entry, Person, ProjectId, ProjectSettings, Seq, StoredEvent, Warning,
};
use crate::store::ProjectRecord;

/// RFC 3339 with milliseconds and `Z`, as PostHog prints times.
pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// A person.
pub fn person(p: &Person) -> Value {
    json!({
        "id": p.uuid.to_string(),
        "uuid": p.uuid.to_string(),
        "distinct_ids": p.distinct_ids,
        "properties": p.properties.0,
        "is_identified": p.is_identified,
        "created_at": time(p.created_at_ms),
        "version": p.version,
    })
}

/// A project.
pub fn project(p: &ProjectRecord) -> Value {
    json!({"id": p.id.0, "token": p.token, "api_token": p.token, "name": p.name, "created_at": time(p.created_at_ms)})
}

/// A stored event with its current person.
pub fn event(
    project: ProjectId,
    seq: Seq,
    e: &StoredEvent,
    person: Option<crate::domain::PersonUuid>,
) -> Value {
    let person_id = person.unwrap_or_else(|| person_uuid(project, &e.distinct_id));
    json!({
        "uuid": e.uuid,
        "event": e.event,
        "distinct_id": e.distinct_id,
        "person_id": person_id.to_string(),
        "properties": e.properties.to_map().unwrap_or_else(|err| {
            tracing::error!(seq = seq.0, error = %err, "A stored event's properties are not a JSON object.");
            Map::new()
        }),
        "timestamp": time(e.timestamp_ms),
        "seq": seq.0,
    })
}

/// A warning.
pub fn warning(w: &Warning) -> Value {
    json!({"type": w.kind.as_str(), "timestamp": time(w.at_ms), "details": w.details.0})
}

/// One change of a log entry, for history and explanations.
pub fn change(c: &Change) -> Value {
    match c {
        Change::ProjectCreated { id, token, name } => {
            json!({"type": "project_created", "project": id.0, "token": token, "name": name})
        }
        Change::PersonCreated {
            person,
            distinct_ids,
            properties,
            is_identified,
            created_at_ms,
        } => json!({
            "type": "person_created", "person": person.to_string(), "distinct_ids": distinct_ids,
            "properties": properties.0, "is_identified": is_identified, "created_at": time(*created_at_ms),
        }),
        Change::DistinctIdAttached {
            person,
            distinct_id,
            ..
        } => json!({
            "type": "distinct_id_attached", "person": person.to_string(), "distinct_id": distinct_id,
            "rule": "merge event named an ID without a person; it was attached to the existing person",
        }),
        Change::PropertiesChanged { person, set, unset } => json!({
            "type": "properties_changed", "person": person.to_string(), "set": set.0, "unset": unset,
        }),
        Change::PersonIdentified { person } => {
            json!({"type": "person_identified", "person": person.to_string()})
        }
        Change::PersonsMerged {
            survivor,
            absorbed,
            moved_ids,
            brought,
            kept,
            created_at_ms,
            kind,
        } => json!({
            "type": "persons_merged", "survivor": survivor.to_string(), "absorbed": absorbed.to_string(),
            "moved_distinct_ids": moved_ids, "properties_brought": brought.0, "properties_kept_from_survivor": kept,
            "created_at": time(*created_at_ms), "kind": format!("{kind:?}"),
        }),
        Change::MergeRefused {
            person,
            other_person,
            other,
            into,
            reason,
        } => json!({
            "type": "merge_refused", "person": person.map(|p| p.to_string()),
            "other_person": other_person.map(|p| p.to_string()), "other_distinct_id": other,
            "into_distinct_id": into, "reason": reason.as_str(), "detail": reason.to_string(),
        }),
        Change::WarningRecorded { warning: w } => {
            json!({"type": "warning_recorded", "warning": warning(w)})
        }
        Change::EventStored { event } => json!({
            "type": "event_stored", "event": event.event, "distinct_id": event.distinct_id, "uuid": event.uuid,
            "personless": event.personless,
        }),
        Change::PersonSplit {
            person,
            main,
            parts,
        } => json!({
            "type": "person_split", "person": person.to_string(), "main_distinct_id": main,
            "parts": parts.iter().map(|(d, u)| json!({"distinct_id": d, "person": u.to_string()})).collect::<Vec<_>>(),
        }),
        Change::PersonDeleted {
            person,
            distinct_ids,
            delete_events,
        } => json!({
            "type": "person_deleted", "person": person.to_string(), "distinct_ids": distinct_ids, "delete_events": delete_events,
        }),
        Change::ProjectSettingsChanged { settings: s } => {
            json!({"type": "project_settings_changed", "settings": settings(s)})
        }
        Change::EventBuffered {
            event,
            release_at_ms,
        } => json!({
            "type": "event_buffered", "event": event.name, "distinct_id": event.distinct_id, "uuid": event.uuid,
            "received_at": time(event.received_at_ms), "release_at": time(*release_at_ms),
        }),
        Change::BufferReleased { buffered } => {
            json!({"type": "buffer_released", "buffered_seq": buffered.0})
        }
    }
}

/// A project's settings, in the shape `PATCH /api/projects/{project}/` takes them.
pub fn settings(s: &ProjectSettings) -> Value {
    json!({
        "name": s.name,
        "conversion_buffer": {"enabled": s.conversion_buffer.enabled, "window_secs": s.conversion_buffer.window_secs},
        "test_account_filters": serde_json::to_value(&s.test_account_filters).unwrap_or(Value::Array(Vec::new())),
        "merge_limit": s.merge_limit,
    })
}

/// A log entry, keeping only the changes `keep` selects.
pub fn entry(seq: Seq, e: &Entry, keep: impl Fn(&Change) -> bool) -> Value {
    let changes: Vec<Value> = e.changes.iter().filter(|c| keep(c)).map(change).collect();
    json!({"seq": seq.0, "timestamp": time(e.at_ms), "cause_event_uuid": e.cause, "changes": changes})
}
