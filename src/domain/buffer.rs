//! The conversion buffer (spec §11): which events wait, and the form they wait in.
//!
//! A backend often sends its first event for a new user (its own ID) a moment before the
//! frontend's `$identify` joins that ID to the visitor's anonymous one. Processed at once, the
//! backend event would create a second person, and the `$identify` would then merge two persons
//! instead of attaching an ID. Delaying such events for a window lets the merge come first.
//!
//! [`BufferedEvent`] is stored in the log (`Change::EventBuffered`): adding or changing a field
//! bumps the log format (`store::codec::FORMAT_VERSION`, see `domain::change`).

use serde::{Deserialize, Serialize};

use super::normalize::{merge_trigger, Normalized};
use super::props::{PropertyUpdates, Props};
use super::warnings::Warning;
use super::wire::EventProps;

/// SDKs whose events are never delayed: a mobile app is both frontend and backend.
pub const MOBILE_LIBS: [&str; 4] = [
    "posthog-ios",
    "posthog-android",
    "posthog-react-native",
    "posthog-flutter",
];

/// Whether an event waits in the buffer (spec §11), given whether its distinct ID already has a
/// person.
pub fn qualifies(ev: &Normalized, person_exists: bool) -> bool {
    !person_exists && may_wait(ev)
}

/// Whether an event is of a kind that waits (spec §11), whether or not its distinct ID has a
/// person: not a merge (`$identify`/`$create_alias` with a merge trigger), not
/// `$groupidentify`, not sent under its own `$device_id`, not from a mobile SDK. Such an event
/// also waits behind its distinct ID's earlier waiting events, so that they are processed in
/// the order they arrived. A personless event is of this kind too, as §11 (and PostHog's
/// `shouldSendEventToBuffer`) exempts only those four: it waits in order with its ID's other
/// events, and is processed as personless when released.
pub fn may_wait(ev: &Normalized) -> bool {
    let merges =
        matches!(ev.name.as_str(), "$identify" | "$create_alias") && merge_trigger(ev).is_some();
    let text_of = |key| match ev.properties.get(key) {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    };
    let (device_id, lib) = (text_of("$device_id"), text_of("$lib"));
    !merges
        && ev.name != "$groupidentify"
        && device_id.as_deref() != Some(ev.distinct_id.as_str())
        && !lib.is_some_and(|l| MOBILE_LIBS.contains(&l.as_str()))
}

/// A normalised event as it waits in the log: everything [`Normalized`] holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BufferedEvent {
    /// The SDK's event UUID.
    pub uuid: Option<String>,
    /// Event name.
    pub name: String,
    /// Distinct ID (as cut).
    pub distinct_id: String,
    /// Properties after normalisation.
    pub properties: Props,
    /// `$set`.
    pub set: Props,
    /// `$set_once`.
    pub set_once: Props,
    /// `$unset`.
    pub unset: Vec<String>,
    /// The event's own timestamp, when it had a readable one.
    pub timestamp_ms: Option<i64>,
    /// When it arrived (its timestamp when it had none).
    pub received_at_ms: i64,
    /// `$process_person_profile === false`.
    pub personless: bool,
    /// Warnings found while normalising.
    pub warnings: Vec<Warning>,
}

impl BufferedEvent {
    /// The waiting form of an event that arrived at `now_ms`.
    pub fn new(ev: &Normalized, now_ms: i64) -> BufferedEvent {
        // Stored with the promoted properties copied into `set`/`set_once`, as `EventBuffered`
        // records always were, so that old and new records mean the same.
        let updates = ev.person_updates();
        BufferedEvent {
            uuid: ev.uuid.clone(),
            name: ev.name.clone(),
            distinct_id: ev.distinct_id.clone(),
            properties: Props(ev.properties.to_map()),
            set: Props(updates.set),
            set_once: Props(updates.set_once),
            unset: updates.unset,
            timestamp_ms: ev.timestamp_ms,
            received_at_ms: now_ms,
            personless: ev.personless,
            warnings: ev.warnings.clone(),
        }
    }

    /// The event to process on release: as it arrived, its time the arrival time when it had
    /// none of its own.
    pub fn to_normalized(&self) -> Normalized {
        Normalized {
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            distinct_id: self.distinct_id.clone(),
            properties: EventProps::from_map(&self.properties.0),
            promoted: Vec::new(),
            updates: PropertyUpdates {
                set: self.set.0.clone(),
                set_once: self.set_once.0.clone(),
                unset: self.unset.clone(),
            },
            // Already in `set` and `set_once`.
            promote: false,
            timestamp_ms: Some(self.timestamp_ms.unwrap_or(self.received_at_ms)),
            personless: self.personless,
            warnings: self.warnings.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::normalize;
    use serde_json::json;

    fn ev(v: serde_json::Value) -> Normalized {
        normalize(&v, 1_000).unwrap()
    }

    #[test]
    fn a_backend_event_for_a_new_id_waits() {
        let e = ev(
            json!({"event": "signed_up", "distinct_id": "user-1", "properties": {"$lib": "posthog-python"}}),
        );
        assert!(qualifies(&e, false));
        assert!(!qualifies(&e, true), "an ID with a person does not wait");
    }

    #[test]
    fn merges_group_identify_device_ids_and_mobile_events_do_not_wait() {
        for v in [
            json!({"event": "$identify", "distinct_id": "u", "properties": {"$anon_distinct_id": "a"}}),
            json!({"event": "$create_alias", "distinct_id": "u", "properties": {"alias": "a"}}),
            json!({"event": "$groupidentify", "distinct_id": "u"}),
            json!({"event": "$pageview", "distinct_id": "d", "properties": {"$device_id": "d"}}),
            json!({"event": "x", "distinct_id": "u", "properties": {"$lib": "posthog-ios"}}),
        ] {
            assert!(!qualifies(&ev(v.clone()), false), "{v}");
        }
        let plain_identify = ev(json!({"event": "$identify", "distinct_id": "u"}));
        assert!(qualifies(&plain_identify, false));
        // §11 does not exempt personless events.
        let personless = ev(
            json!({"event": "x", "distinct_id": "u", "properties": {"$process_person_profile": false}}),
        );
        assert!(qualifies(&personless, false));
    }

    #[test]
    fn a_released_event_is_the_event_that_arrived() {
        let e = ev(
            json!({"event": "x", "distinct_id": "u", "uuid": "e1", "$set": {"a": 1},
                          "properties": {"$browser": "Firefox", "$set_once": {"$initial_browser": "Old"}}}),
        );
        let back = BufferedEvent::new(&e, 5_000).to_normalized();
        assert_eq!(back.timestamp_ms, Some(5_000));
        // The promoted properties come back copied into the explicit updates.
        assert_eq!(back.person_updates(), e.person_updates());
        assert_eq!(back.person_updates().set["$browser"], json!("Firefox"));
        assert_eq!(
            back.person_updates().set_once["$initial_browser"],
            json!("Old")
        );
        assert_eq!(
            Normalized {
                timestamp_ms: None,
                updates: e.updates.clone(),
                promote: e.promote,
                promoted: e.promoted.clone(),
                ..back
            },
            e
        );
    }
}
