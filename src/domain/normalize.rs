//! Turning one event as an SDK sent it into a [`Normalized`] event (spec §1, §2).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::js::{is_truthy, to_js_string};
use super::props::{PropertyDiff, PropertyUpdates, RawProps};
use super::warnings::{Warning, WarningKind};

/// Longest event name and event distinct ID, in code points (spec §1.5).
pub const MAX_NAME_CHARS: usize = 200;

/// Event properties promoted to person properties (spec §1.6).
pub const PROMOTED_KEYS: [&str; 44] = [
    "$app_build",
    "$app_name",
    "$app_namespace",
    "$app_version",
    "$browser",
    "$browser_version",
    "$device_type",
    "$current_url",
    "$pathname",
    "$os",
    "$os_name",
    "$os_version",
    "$referring_domain",
    "$referrer",
    "$screen_height",
    "$screen_width",
    "$viewport_height",
    "$viewport_width",
    "$raw_user_agent",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_name",
    "utm_term",
    "gclid",
    "gad_source",
    "gclsrc",
    "dclid",
    "gbraid",
    "wbraid",
    "fbclid",
    "msclkid",
    "twclid",
    "li_fat_id",
    "mc_cid",
    "igshid",
    "ttclid",
    "rdt_cid",
    "irclid",
    "_kx",
    "epik",
    "qclid",
    "sccid",
];

/// Events that never change person properties (spec §2).
pub const NO_PROPERTY_EVENTS: [&str; 3] = ["$exception", "$$heatmap", "$groupidentify"];

/// Events dropped when personless (spec §2).
pub const NO_PERSONLESS_EVENTS: [&str; 4] = [
    "$identify",
    "$create_alias",
    "$merge_dangerously",
    "$groupidentify",
];

/// Why an event was rejected before processing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The event is not a JSON object.
    #[error("event must be a JSON object")]
    NotAnObject,
    /// No usable distinct ID.
    #[error("distinct_id is {0}: send a non-empty string or number in distinct_id")]
    BadDistinctId(&'static str),
    /// No event name.
    #[error("event name is missing or not a string")]
    BadEventName,
}

/// An event after normalisation: the only shape the rules below see.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalized {
    /// The SDK's event UUID, used to drop duplicate deliveries.
    pub uuid: Option<String>,
    /// Event name, at most 200 code points.
    pub name: String,
    /// Who did it, at most 200 code points, NULs replaced.
    pub distinct_id: String,
    /// All properties, with top-level `$set`/`$set_once` merged in.
    pub properties: Map<String, Value>,
    /// `properties` as the stored event keeps them: serialised where the event was parsed and
    /// normalised, while its properties are still in that thread's cache (the router that
    /// decides reads them from another core's memory, about a cache miss per key and value).
    /// Whoever changes `properties` after normalisation sets this again.
    pub stored_properties: RawProps,
    /// What the event asks of the person's properties explicitly (`$set`, `$set_once`,
    /// `$unset`), without the promoted properties: see [`Normalized::person_updates`].
    pub updates: PropertyUpdates,
    /// Whether the event's [`PROMOTED_KEYS`] are promoted (spec §1.6): every event except
    /// `$snapshot` and `$performance_event`.
    pub promote: bool,
    /// Event time in ms since the epoch, when the event carried a readable one.
    pub timestamp_ms: Option<i64>,
    /// `$process_person_profile === false`.
    pub personless: bool,
    /// Warnings found while normalising (rate-limited kinds).
    pub warnings: Vec<Warning>,
}

/// The token of an event: the batch's `api_key`, else the event's `api_key`, `token` or
/// `properties.token` (spec §1.3).
pub fn event_token(batch_api_key: Option<&str>, event: &Value) -> Option<String> {
    let non_empty = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    if let Some(t) = batch_api_key.filter(|s| !s.is_empty()) {
        return Some(t.to_string());
    }
    non_empty(event.get("api_key"))
        .or_else(|| non_empty(event.get("token")))
        .or_else(|| non_empty(event.get("properties").and_then(|p| p.get("token"))))
}

/// Replace every NUL with U+FFFD (spec §1.2).
pub fn scrub_nul(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_string()
    }
}

fn scrub_value(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => *s = scrub_nul(s),
        Value::Array(items) => items.iter_mut().for_each(scrub_value),
        Value::Object(map) => map.values_mut().for_each(scrub_value),
        _ => {}
    }
}

/// Cut to at most `max` code points; returns the original length when it was cut.
pub fn truncate_chars(s: &str, max: usize) -> (String, Option<usize>) {
    match s.char_indices().nth(max) {
        None => (s.to_string(), None),
        Some((byte, _)) => (s[..byte].to_string(), Some(s.chars().count())),
    }
}

fn distinct_id_of(event: &Map<String, Value>) -> Result<String, Rejection> {
    let top = event.get("distinct_id").filter(|v| !v.is_null());
    let nested = || {
        event
            .get("properties")
            .and_then(|p| p.get("distinct_id"))
            .filter(|v| !v.is_null())
    };
    match top.or_else(nested) {
        None => Err(Rejection::BadDistinctId("missing")),
        Some(Value::String(s)) if s.is_empty() => Err(Rejection::BadDistinctId("empty")),
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => Ok(to_js_string(v)),
        Some(Value::Array(_)) => Err(Rejection::BadDistinctId("an array")),
        Some(_) => Err(Rejection::BadDistinctId("an object")),
    }
}

fn object_or_empty(v: Option<&Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    }
}

fn unset_keys(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Parse an event timestamp (RFC 3339, or a naive date-time taken as UTC).
pub fn parse_timestamp_ms(v: Option<&Value>) -> Option<i64> {
    let s = v?.as_str()?;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// Each promoted key with its `$initial_` name, built once. A fixed-seed hash map: it is never
/// written after it is built, so crafted keys cannot make it slow.
static PROMOTED: std::sync::LazyLock<HashMap<&'static str, String, foldhash::fast::FixedState>> =
    std::sync::LazyLock::new(|| {
        PROMOTED_KEYS
            .iter()
            .map(|k| (*k, format!("$initial_{}", k.strip_prefix('$').unwrap_or(k))))
            .collect()
    });

/// The `$initial_` name of `key` when `key` is one of [`PROMOTED_KEYS`].
fn initial_of(key: &str) -> Option<&'static str> {
    PROMOTED.get(key).map(String::as_str)
}

/// A promoted property: its key, its `$initial_` key and its value.
type Promoted<'e> = (&'e str, &'static str, &'e Value);

/// One key and value an event writes.
type Update<'e> = (&'e str, &'e Value);

/// The entries of `explicit`, then each promoted property under `key(promoted)` unless
/// `explicit` has that key.
fn explicit_then_promoted<'e, 'p>(
    explicit: &'e Map<String, Value>,
    promoted: &'p [Promoted<'e>],
    key: fn(&Promoted<'e>) -> &'e str,
) -> impl Iterator<Item = Update<'e>> + 'p
where
    'e: 'p,
{
    explicit.iter().map(|(k, v)| (k.as_str(), v)).chain(
        promoted
            .iter()
            .map(move |p| (key(p), p.2))
            .filter(|(k, _)| !explicit.contains_key(*k)),
    )
}

/// What one event asks of a person's properties (spec §1.6, §5): its explicit updates and,
/// when it promotes, each of its [`PROMOTED_KEYS`] as a `$set` and its `$initial_` name as a
/// `$set_once`, unless the event sets that key itself. The promoted values are read where they
/// are, in the event's properties, instead of being copied into maps that a typical event
/// (whose browser properties are those the person already has) would only throw away.
#[derive(Clone, Copy, Debug)]
pub struct EventUpdates<'e> {
    explicit: &'e PropertyUpdates,
    promoted_from: Option<&'e Map<String, Value>>,
}

impl<'e> EventUpdates<'e> {
    /// The updates of `ev`.
    pub fn of(ev: &'e Normalized) -> Self {
        EventUpdates {
            explicit: &ev.updates,
            promoted_from: ev.promote.then_some(&ev.properties),
        }
    }

    /// `updates` alone, promoting nothing.
    pub fn explicit(updates: &'e PropertyUpdates) -> Self {
        EventUpdates {
            explicit: updates,
            promoted_from: None,
        }
    }

    /// No property change at all (the events of `NO_PROPERTY_EVENTS`).
    pub fn none() -> EventUpdates<'static> {
        static NONE: std::sync::LazyLock<PropertyUpdates> =
            std::sync::LazyLock::new(PropertyUpdates::default);
        EventUpdates::explicit(&NONE)
    }

    /// Each promoted property: its key, its `$initial_` key and its value.
    fn promoted(self) -> Vec<Promoted<'e>> {
        self.promoted_from
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| initial_of(k).map(|i| (k.as_str(), i, v)))
            .collect()
    }

    /// Every `$set`: the explicit ones, then the promoted keys not set explicitly.
    fn set<'p>(self, promoted: &'p [Promoted<'e>]) -> impl Iterator<Item = Update<'e>> + 'p
    where
        'e: 'p,
    {
        explicit_then_promoted(&self.explicit.set, promoted, |&(k, _, _)| k)
    }

    /// Every `$set_once`: the explicit ones, then the promoted `$initial_` keys not set once
    /// explicitly.
    fn set_once<'p>(self, promoted: &'p [Promoted<'e>]) -> impl Iterator<Item = Update<'e>> + 'p
    where
        'e: 'p,
    {
        explicit_then_promoted(&self.explicit.set_once, promoted, |&(_, i, _)| i)
    }

    /// The same updates as owned maps, the promoted properties copied in.
    pub fn materialized(self) -> PropertyUpdates {
        let mut out = self.explicit.clone();
        for (k, i, v) in self.promoted() {
            if !out.set.contains_key(k) {
                out.set.insert(k.to_string(), v.clone());
            }
            if !out.set_once.contains_key(i) {
                out.set_once.insert(i.to_string(), v.clone());
            }
        }
        out
    }

    /// Properties of a person created by this event (spec §5, creation): `$set_once`, then
    /// `$set` over it; `$unset` is ignored.
    pub fn initial(self) -> Map<String, Value> {
        let promoted = self.promoted();
        let mut props = Map::new();
        for (k, v) in self.set_once(&promoted).chain(self.set(&promoted)) {
            props.insert(k.to_string(), v.clone());
        }
        props
    }

    /// What actually changes on a person whose properties are `current` (spec §5, update):
    /// each `$set_once` key the person lacks, then each `$set` whose value differs (a `$set`
    /// beats a `$set_once` of the same key), then the `$unset` keys the person has.
    pub fn diff(self, current: &Map<String, Value>) -> PropertyDiff {
        // The promoted properties are found once (a lookup per event property), then read
        // twice.
        let promoted = self.promoted();
        let mut set = Map::new();
        for (k, v) in self.set_once(&promoted) {
            if !current.contains_key(k) {
                set.insert(k.to_string(), v.clone());
            }
        }
        for (k, v) in self.set(&promoted) {
            if current.get(k) != Some(v) {
                set.insert(k.to_string(), v.clone());
            }
        }
        let mut unset: Vec<String> = Vec::new();
        for k in &self.explicit.unset {
            if current.contains_key(k) && !unset.contains(k) {
                unset.push(k.clone());
            }
        }
        PropertyDiff { set, unset }
    }
}

impl Normalized {
    /// Everything the event asks of a person's properties, promoted properties included, as
    /// owned maps (what a buffered event keeps).
    pub fn person_updates(&self) -> PropertyUpdates {
        EventUpdates::of(self).materialized()
    }
}

fn take_object(v: Option<Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Normalise one event (spec §1, §2). `now_ms` stamps warnings.
pub fn normalize(event: &Value, now_ms: i64) -> Result<Normalized, Rejection> {
    normalize_owned(event.clone(), now_ms)
}

/// [`normalize`], taking the event by value so that its properties move instead of being
/// copied (the daemon's path: the request body is not needed afterwards).
pub fn normalize_owned(event: Value, now_ms: i64) -> Result<Normalized, Rejection> {
    let Value::Object(mut obj) = event else {
        return Err(Rejection::NotAnObject);
    };
    let raw_name = obj
        .get("event")
        .and_then(Value::as_str)
        .ok_or(Rejection::BadEventName)?;
    let (name, _) = truncate_chars(raw_name, MAX_NAME_CHARS);
    let raw_id = scrub_nul(&distinct_id_of(&obj)?);
    let (distinct_id, cut_from) = truncate_chars(&raw_id, MAX_NAME_CHARS);

    let mut properties = take_object(obj.remove("properties"));
    properties.values_mut().for_each(scrub_value);
    let mut set = object_or_empty(properties.get("$set"));
    let mut set_once = object_or_empty(properties.get("$set_once"));
    let top_set = obj.remove("$set");
    let top_set_once = obj.remove("$set_once");
    let has_top_set = top_set.as_ref().is_some_and(Value::is_object);
    let has_top_set_once = top_set_once.as_ref().is_some_and(Value::is_object);
    for (k, mut v) in take_object(top_set) {
        scrub_value(&mut v);
        set.insert(k, v);
    }
    for (k, mut v) in take_object(top_set_once) {
        scrub_value(&mut v);
        set_once.insert(k, v);
    }
    if has_top_set || properties.contains_key("$set") {
        properties.insert("$set".into(), Value::Object(set.clone()));
    }
    if has_top_set_once || properties.contains_key("$set_once") {
        properties.insert("$set_once".into(), Value::Object(set_once.clone()));
    }
    let updates = PropertyUpdates {
        set,
        set_once,
        unset: unset_keys(properties.get("$unset")),
    };
    let promote = name != "$snapshot" && name != "$performance_event";

    let uuid = obj
        .get("uuid")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let mut warnings = Vec::new();
    if let Some(len) = cut_from {
        warnings.push(Warning::new(
            WarningKind::DistinctIdTruncated,
            now_ms,
            &distinct_id,
            vec![
                ("distinctId", Value::String(distinct_id.clone())),
                ("originalLength", Value::from(len)),
            ],
        ));
    }
    let personless = match properties.get("$process_person_profile") {
        Some(Value::Bool(b)) => !*b,
        None => false,
        Some(other) => {
            warnings.push(Warning::new(
                WarningKind::InvalidProcessPersonProfile,
                now_ms,
                &distinct_id,
                vec![
                    ("eventUuid", uuid.clone().map(Value::String).unwrap_or(Value::Null)),
                    ("event", Value::String(name.clone())),
                    ("distinctId", Value::String(distinct_id.clone())),
                    ("$process_person_profile", other.clone()),
                    (
                        "message",
                        Value::String("Only a boolean value is valid for the $process_person_profile property".into()),
                    ),
                ],
            ));
            false
        }
    };
    Ok(Normalized {
        uuid,
        timestamp_ms: parse_timestamp_ms(obj.get("timestamp")),
        name,
        distinct_id,
        stored_properties: RawProps::from_map(&properties),
        properties,
        updates,
        promote,
        personless,
        warnings,
    })
}

/// How an event asks for a merge (spec §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MergeKind {
    /// `$identify` with `$anon_distinct_id`.
    Identify,
    /// `$create_alias` with a truthy `alias`.
    Alias,
    /// `$merge_dangerously` with a truthy `alias`: no already-identified check.
    MergeDangerously,
}

/// The merge an event asks for: its kind and the `other` distinct ID (spec §3).
pub fn merge_trigger(ev: &Normalized) -> Option<(MergeKind, String)> {
    match ev.name.as_str() {
        "$identify" => ev
            .properties
            .get("$anon_distinct_id")
            .map(|v| (MergeKind::Identify, to_js_string(v))),
        "$create_alias" | "$merge_dangerously" => {
            let kind = if ev.name == "$create_alias" {
                MergeKind::Alias
            } else {
                MergeKind::MergeDangerously
            };
            ev.properties
                .get("alias")
                .filter(|v| is_truthy(v))
                .map(|v| (kind, to_js_string(v)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(entries: Vec<(String, u8)>) -> Map<String, Value> {
        entries
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect()
    }

    /// Keys drawn from a few plain ones, two promoted ones and their `$initial_` names, so that
    /// explicit and promoted updates collide.
    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "a",
            "b",
            "$os",
            "$browser",
            "$initial_os",
            "$initial_browser",
        ])
        .prop_map(str::to_string)
    }

    fn props() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::vec((key(), 0u8..3), 0..6).prop_map(map)
    }

    proptest! {
        /// The diff equals its definition (spec §5): `$set_once` keys absent from the person,
        /// then `$set` keys whose value differs.
        #[test]
        fn diff_matches_its_definition(current in props(), set in props(), set_once in props()) {
            let updates = PropertyUpdates { set: set.clone(), set_once: set_once.clone(), unset: vec![] };
            let mut want = Map::new();
            for (k, v) in &set_once {
                if !current.contains_key(k) {
                    want.insert(k.clone(), v.clone());
                }
            }
            for (k, v) in &set {
                if current.get(k) != Some(v) {
                    want.insert(k.clone(), v.clone());
                }
            }
            prop_assert_eq!(EventUpdates::explicit(&updates).diff(&current).set, want);
        }

        /// Promotion read in place gives the same diff and the same new person as the
        /// promoted properties copied into the updates first (spec §1.6).
        #[test]
        fn promotion_in_place_equals_promotion_by_copy(
            current in props(),
            properties in props(),
            set in props(),
            set_once in props(),
            promote: bool,
        ) {
            let mut event = serde_json::json!({"event": "e", "distinct_id": "d"});
            let mut properties = properties;
            properties.insert("$set".into(), Value::Object(set));
            properties.insert("$set_once".into(), Value::Object(set_once));
            event["properties"] = Value::Object(properties);
            let mut ev = normalize(&event, 0).unwrap();
            ev.promote = promote;
            let copied = ev.person_updates();
            if !promote {
                prop_assert_eq!(&copied, &ev.updates);
            }
            let lazy = EventUpdates::of(&ev);
            prop_assert_eq!(lazy.diff(&current), EventUpdates::explicit(&copied).diff(&current));
            prop_assert_eq!(lazy.initial(), EventUpdates::explicit(&copied).initial());
        }
    }

    #[test]
    fn promoted_properties_copy_into_set_and_initial_set_once_unless_set_explicitly() {
        let ev = normalize(
            &serde_json::json!({"event": "e", "distinct_id": "d", "properties": {
                "$os": "Linux", "$browser": "Firefox", "other": 1,
                "$set": {"$os": "Mine"}, "$set_once": {"$initial_browser": "Old"}}}),
            0,
        )
        .unwrap();
        let u = ev.person_updates();
        assert_eq!(u.set["$os"], "Mine");
        assert_eq!(u.set["$browser"], "Firefox");
        assert_eq!(u.set_once["$initial_os"], "Linux");
        assert_eq!(u.set_once["$initial_browser"], "Old");
        assert!(!u.set.contains_key("other") && !u.set_once.contains_key("$initial_other"));
    }
}
