//! Turning one event as an SDK sent it into a [`Normalized`] event (spec §1, §2).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::js::{is_truthy, to_js_string};
use super::props::PropertyUpdates;
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
    /// What the event asks of the person's properties.
    pub updates: PropertyUpdates,
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

/// Promote the event's properties of [`PROMOTED_KEYS`] to `$set` and `$initial_*` to
/// `$set_once`, unless the event sets those itself (spec §1.6). One pass over the event's
/// properties with a hash lookup each, instead of a search of the properties per promoted key.
fn promote(name: &str, properties: &Map<String, Value>, updates: &mut PropertyUpdates) {
    if name == "$snapshot" || name == "$performance_event" {
        return;
    }
    for (key, v) in properties {
        let Some(initial) = PROMOTED.get(key.as_str()) else {
            continue;
        };
        if !updates.set.contains_key(key) {
            updates.set.insert(key.clone(), v.clone());
        }
        if !updates.set_once.contains_key(initial) {
            updates.set_once.insert(initial.clone(), v.clone());
        }
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
    let mut updates = PropertyUpdates {
        set,
        set_once,
        unset: unset_keys(properties.get("$unset")),
    };
    promote(&name, &properties, &mut updates);

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
        properties,
        updates,
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
