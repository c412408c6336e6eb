//! Turning one event as an SDK sent it into a [`Normalized`] event (spec §1, §2).

use serde_json::{Map, Value};

use super::js::{is_truthy, same_value, to_js_string};
use super::props::{PropertyDiff, PropertyUpdates};
use super::time::{event_time_ms, parse_time_ms, Received};
use super::warnings::{Warning, WarningKind};
use super::wire::{parse_value, EventProps, OverLimit, WireEvent};

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

/// What to do about a number out of `f64`'s range: the end of every message refusing one.
pub const FINITE_NUMBERS: &str = "send finite numbers, at most 1.7976931348623157e308 in magnitude";

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
    /// A number no `f64` holds, which could be stored but never read back.
    #[error("a number in its `{field}` is out of range ({number}): {FINITE_NUMBERS}")]
    NumberOutOfRange { field: String, number: String },
    /// A `uuid` that is there but not a string: it could not deduplicate a resend.
    #[error("uuid is {0}: send the event's uuid as a string, or leave it out")]
    BadUuid(&'static str),
    /// Over a limit of the request decoder (depth, properties).
    #[error(transparent)]
    OverLimit(#[from] OverLimit),
}

impl Rejection {
    /// Why an event without fields to read is rejected: not an object, or refused by a
    /// limit of the request decoder.
    pub fn of_non_object(event: WireEvent) -> Rejection {
        match event {
            WireEvent::OverLimit(over) => Rejection::OverLimit(over),
            _ => Rejection::NotAnObject,
        }
    }
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
    /// All properties, with top-level `$set`/`$set_once` merged in: the JSON text the stored
    /// event keeps (as sent, unless normalisation had to change it), with an index.
    pub properties: EventProps,
    /// The event's [`PROMOTED_KEYS`] with their `$initial_` names and values, parsed once;
    /// empty unless it promotes and can change a person's properties (a personless event, or
    /// one of [`NO_PROPERTY_EVENTS`], cannot).
    pub promoted: Vec<PromotedProp>,
    /// What the event asks of the person's properties explicitly (`$set`, `$set_once`,
    /// `$unset`), without the promoted properties: see [`Normalized::person_updates`].
    pub updates: PropertyUpdates,
    /// Whether the event's [`PROMOTED_KEYS`] are promoted (spec §1.6): every event except
    /// `$snapshot` and `$performance_event`.
    pub promote: bool,
    /// Event time in ms since the epoch, corrected by the client's clock skew, when the event
    /// carried a readable one ([`super::time::event_time_ms`]).
    pub timestamp_ms: Option<i64>,
    /// `$process_person_profile === false`.
    pub personless: bool,
    /// Warnings found while normalising (rate-limited kinds).
    pub warnings: Vec<Warning>,
}

/// The token of an event: the batch's `api_key`, else the event's `api_key`, `token` or
/// `properties.token` (spec §1.3).
pub fn event_token(batch_api_key: Option<&str>, event: &WireEvent) -> Option<String> {
    let non_empty = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    if let Some(t) = batch_api_key.filter(|s| !s.is_empty()) {
        return Some(t.to_string());
    }
    let fields = event.fields()?;
    non_empty(fields.get("api_key"))
        .or_else(|| non_empty(fields.get("token")))
        .or_else(|| non_empty(event.properties()?.get("token").as_ref()))
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
    // No more bytes than `max`, so no more code points: the usual case, without counting.
    if s.len() <= max {
        return (s.to_string(), None);
    }
    match s.char_indices().nth(max) {
        None => (s.to_string(), None),
        Some((byte, _)) => (s[..byte].to_string(), Some(s.chars().count())),
    }
}

fn distinct_id_of(event: &Map<String, Value>, props: &EventProps) -> Result<String, Rejection> {
    let nested;
    let id = match event.get("distinct_id").filter(|v| !v.is_null()) {
        Some(top) => Some(top),
        None => {
            nested = props.get("distinct_id").filter(|v| !v.is_null());
            nested.as_ref()
        }
    };
    match id {
        None => Err(Rejection::BadDistinctId("missing")),
        Some(Value::String(s)) if s.is_empty() => Err(Rejection::BadDistinctId("empty")),
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => Ok(to_js_string(v)),
        Some(other) => Err(Rejection::BadDistinctId(json_type(other))),
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
    parse_rfc3339_ms(v?.as_str()?)
}

/// [`parse_timestamp_ms`] of a string.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    if let Some(ms) = utc_millis(s) {
        return Some(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// The milliseconds of a timestamp in the form JavaScript's `toISOString()` writes
/// (`2026-11-30T21:33:00.123Z`: what posthog-js and posthog-node send), when it is one and a
/// valid date and time; anything else is left to chrono's RFC 3339 parser, which takes that
/// form too, at ~470 instructions per event (callgrind) for the general grammar.
fn utc_millis(s: &str) -> Option<i64> {
    let b: &[u8; 24] = s.as_bytes().try_into().ok()?;
    let punct = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ];
    if punct.iter().any(|&(at, c)| b[at] != c) {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let year = i32::try_from(num(0, 4)?).ok()?;
    let date = chrono::NaiveDate::from_ymd_opt(year, num(5, 7)?, num(8, 10)?)?;
    // A leap second (`:60`) is not taken here: chrono's parser has its own reading of it.
    let time = date.and_hms_milli_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?)?;
    Some(time.and_utc().timestamp_millis())
}

/// The `$initial_` name of each of [`PROMOTED_KEYS`], built once.
static PROMOTED_INITIAL: std::sync::LazyLock<[String; 44]> = std::sync::LazyLock::new(|| {
    PROMOTED_KEYS.map(|k| format!("$initial_{}", k.strip_prefix('$').unwrap_or(k)))
});

/// The slot of a key in [`PROMOTED_SLOTS`]: a multiplicative hash of its first two bytes,
/// last two bytes and length. It puts the 44 promoted keys in 44 different slots of 128 (the
/// table's construction asserts it), so that a key is found, or known not to be promoted,
/// with one multiply and at most one comparison. (A hash map's lookup hashed every byte of
/// each of the ~40 keys of a typical event: ~80 instructions a key.)
const fn promoted_slot(b: &[u8]) -> usize {
    let n = b.len();
    if n == 0 {
        return 0;
    }
    let (first, second, before_last, last) = (b[0], b[1 % n], b[n.saturating_sub(2)], b[n - 1]);
    let x = u32::from_le_bytes([first, second, before_last, last]) as u64 | (n as u64) << 32;
    (x.wrapping_mul(0x4ceb_9d73_0126_9b7b) >> 57) as usize
}

const NO_SLOT: u8 = u8::MAX;

/// For each slot of [`promoted_slot`], the index in [`PROMOTED_KEYS`] of the key there.
static PROMOTED_SLOTS: [u8; 128] = {
    let mut slots = [NO_SLOT; 128];
    let mut i = 0;
    while i < PROMOTED_KEYS.len() {
        let slot = promoted_slot(PROMOTED_KEYS[i].as_bytes());
        assert!(slots[slot] == NO_SLOT, "two promoted keys share a slot");
        slots[slot] = i as u8;
        i += 1;
    }
    slots
};

/// `key` and its `$initial_` name when `key` is one of [`PROMOTED_KEYS`].
fn promoted_key(key: &str) -> Option<(&'static str, &'static str)> {
    let i = PROMOTED_SLOTS[promoted_slot(key.as_bytes())] as usize;
    let promoted = *PROMOTED_KEYS.get(i)?;
    (promoted == key).then(|| (promoted, PROMOTED_INITIAL[i].as_str()))
}

/// A promoted property: its key, its `$initial_` key and its value.
pub type PromotedProp = (&'static str, &'static str, Value);

/// One key and value an event writes.
type Update<'e> = (&'e str, &'e Value);

/// The entries of `explicit`, then each promoted property under `key(promoted)` unless
/// `explicit` has that key.
fn explicit_then_promoted<'e>(
    explicit: &'e Map<String, Value>,
    promoted: &'e [PromotedProp],
    key: fn(&PromotedProp) -> &'static str,
) -> impl Iterator<Item = Update<'e>> + 'e {
    explicit.iter().map(|(k, v)| (k.as_str(), v)).chain(
        promoted
            .iter()
            .map(move |p| (key(p), &p.2))
            .filter(|(k, _)| !explicit.contains_key(*k)),
    )
}

/// What one event asks of a person's properties (spec §1.6, §5): its explicit updates and,
/// when it promotes, each of its [`PROMOTED_KEYS`] as a `$set` and its `$initial_` name as a
/// `$set_once`, unless the event sets that key itself. The promoted values are read where they
/// are ([`Normalized::promoted`]) instead of being copied into maps that a typical event
/// (whose browser properties are those the person already has) would only throw away.
#[derive(Clone, Copy, Debug)]
pub struct EventUpdates<'e> {
    explicit: &'e PropertyUpdates,
    promoted: &'e [PromotedProp],
}

impl<'e> EventUpdates<'e> {
    /// The updates of `ev`.
    pub fn of(ev: &'e Normalized) -> Self {
        EventUpdates {
            explicit: &ev.updates,
            promoted: if ev.promote { &ev.promoted } else { &[] },
        }
    }

    /// `updates` alone, promoting nothing.
    pub fn explicit(updates: &'e PropertyUpdates) -> Self {
        EventUpdates {
            explicit: updates,
            promoted: &[],
        }
    }

    /// No property change at all (the events of `NO_PROPERTY_EVENTS`).
    pub fn none() -> EventUpdates<'static> {
        static NONE: std::sync::LazyLock<PropertyUpdates> =
            std::sync::LazyLock::new(PropertyUpdates::default);
        EventUpdates::explicit(&NONE)
    }

    /// Every `$set`: the explicit ones, then the promoted keys not set explicitly.
    fn set(self) -> impl Iterator<Item = Update<'e>> {
        explicit_then_promoted(&self.explicit.set, self.promoted, |&(k, _, _)| k)
    }

    /// Every `$set_once`: the explicit ones, then the promoted `$initial_` keys not set once
    /// explicitly.
    fn set_once(self) -> impl Iterator<Item = Update<'e>> {
        explicit_then_promoted(&self.explicit.set_once, self.promoted, |&(_, i, _)| i)
    }

    /// The same updates as owned maps, the promoted properties copied in.
    pub fn materialized(self) -> PropertyUpdates {
        let mut out = self.explicit.clone();
        for (k, i, v) in self.promoted {
            if !out.set.contains_key(*k) {
                out.set.insert(k.to_string(), v.clone());
            }
            if !out.set_once.contains_key(*i) {
                out.set_once.insert(i.to_string(), v.clone());
            }
        }
        out
    }

    /// Properties of a person created by this event (spec §5, creation): `$set_once`, then
    /// `$set` over it; `$unset` is ignored.
    pub fn initial(self) -> Map<String, Value> {
        let mut props = Map::new();
        for (k, v) in self.set_once().chain(self.set()) {
            props.insert(k.to_string(), v.clone());
        }
        props
    }

    /// What actually changes on a person whose properties are `current` (spec §5, update):
    /// each `$set_once` key the person lacks, then each `$set` whose value differs (a `$set`
    /// beats a `$set_once` of the same key), then the `$unset` keys the person has.
    ///
    /// A person of a few dozen properties is looked up in a list of them instead of its
    /// B-tree ([`PersonKeys`]).
    pub fn diff(self, current: &Map<String, Value>) -> PropertyDiff {
        let mut set = Map::new();
        let keys = PersonKeys::of(current);
        for (k, v) in self.set_once() {
            if keys.get(k).is_none() {
                set.insert(k.to_string(), v.clone());
            }
        }
        for (k, v) in self.set() {
            if !keys.get(k).is_some_and(|c| same_value(c, v)) {
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

/// A person's properties, for the diff's ~20 lookups of one event: up to
/// [`PersonKeys::LISTED`] of them in a list, where a lookup compares lengths first and bytes
/// only on an equal length (a few instructions a key), instead of a B-tree search that calls
/// `memcmp` at every step (~320 instructions a lookup in a person of ~25 properties).
enum PersonKeys<'p> {
    Listed(Vec<(&'p str, &'p Value)>),
    Map(&'p Map<String, Value>),
}

impl<'p> PersonKeys<'p> {
    const LISTED: usize = 64;

    fn of(current: &'p Map<String, Value>) -> Self {
        match current.len() <= Self::LISTED {
            true => PersonKeys::Listed(current.iter().map(|(k, v)| (k.as_str(), v)).collect()),
            false => PersonKeys::Map(current),
        }
    }

    fn get(&self, key: &str) -> Option<&'p Value> {
        match self {
            PersonKeys::Listed(list) => list.iter().find(|(k, _)| *k == key).map(|(_, v)| *v),
            PersonKeys::Map(map) => map.get(key),
        }
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

/// The event's `uuid`: a non-empty string, or none when it is missing, `null` or `""`. Any
/// other JSON type is refused rather than dropped, since the event would then be stored
/// without the uuid its resends are deduplicated by (spec §1.7).
pub fn uuid_of(obj: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    match obj.get("uuid") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Rejection::BadUuid(json_type(other))),
    }
}

/// `v`'s JSON type with an article, for a rejection's detail.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Normalise one event (spec §1, §2). `now_ms` stamps warnings.
pub fn normalize(event: &Value, now_ms: i64) -> Result<Normalized, Rejection> {
    normalize_owned(event.clone(), now_ms)
}

/// [`normalize`], taking the event by value.
pub fn normalize_owned(event: Value, now_ms: i64) -> Result<Normalized, Rejection> {
    normalize_wire(WireEvent::from_value(event), now_ms)
}

/// [`normalize`] of an event as the capture endpoints parse it, its properties still JSON
/// text, from a request that said nothing of its `sent_at`.
pub fn normalize_wire(event: WireEvent, now_ms: i64) -> Result<Normalized, Rejection> {
    normalize_received(
        event,
        Received {
            now_ms,
            sent_at_ms: None,
        },
    )
}

/// [`normalize_wire`] of an event of a request `received` as it says (the daemon's path): its
/// time is corrected by the client's clock skew ([`super::time::event_time_ms`]).
pub fn normalize_received(event: WireEvent, received: Received) -> Result<Normalized, Rejection> {
    let now_ms = received.now_ms;
    let WireEvent::Object {
        fields: mut obj,
        properties,
        out_of_range,
        ..
    } = event
    else {
        return Err(Rejection::of_non_object(event));
    };
    if let Some(n) = out_of_range {
        return Err(Rejection::NumberOutOfRange {
            field: n.field.into(),
            number: n.number.into(),
        });
    }
    let properties = properties.unwrap_or_default();
    let raw_name = obj
        .get("event")
        .and_then(Value::as_str)
        .ok_or(Rejection::BadEventName)?;
    let (name, _) = truncate_chars(raw_name, MAX_NAME_CHARS);
    let raw_id = scrub_nul(&distinct_id_of(&obj, &properties)?);
    let (distinct_id, cut_from) = truncate_chars(&raw_id, MAX_NAME_CHARS);

    let top_set = obj.remove("$set").filter(Value::is_object);
    let top_set_once = obj.remove("$set_once").filter(Value::is_object);
    let properties = if has_nul(&properties) {
        rewrite(&properties, top_set, top_set_once)
    } else if top_set.is_some() || top_set_once.is_some() || sets_not_objects(&properties) {
        merge_sets(&properties, top_set, top_set_once)
    } else {
        properties
    };
    let updates = PropertyUpdates {
        set: take_object(properties.get("$set")),
        set_once: take_object(properties.get("$set_once")),
        unset: unset_keys(properties.get("$unset").as_ref()),
    };
    let promote = name != "$snapshot" && name != "$performance_event";

    let uuid = uuid_of(&obj)?;
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
    let personless = match properties.get("$process_person_profile").as_ref() {
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
    // Parsed only for an event that can change a person's properties.
    let promoted = if promote && !personless && !NO_PROPERTY_EVENTS.contains(&name.as_str()) {
        promoted_of(&properties)
    } else {
        Vec::new()
    };
    let timestamp_ms = event_time_ms(
        obj.get("timestamp"),
        obj.get("offset"),
        sent_at_ms(&obj, &properties, received.sent_at_ms),
        now_ms,
    );
    Ok(Normalized {
        uuid,
        timestamp_ms,
        name,
        distinct_id,
        promoted,
        properties,
        updates,
        promote,
        personless,
        warnings,
    })
}

/// The `sent_at` an event's time is corrected by: its own field (an event sent alone is its
/// own envelope), else its request's; none when the event opts out with `$ignore_sent_at:
/// true` (capture v1: `options.disable_skew_correction: true`).
fn sent_at_ms(obj: &Map<String, Value>, props: &EventProps, request: Option<i64>) -> Option<i64> {
    let own = obj.get("sent_at").and_then(Value::as_str);
    let sent_at = own.and_then(parse_time_ms).or(request)?;
    let opted_out = props.get_text("$ignore_sent_at") == Some("true")
        || obj
            .get("options")
            .and_then(|o| o.get("disable_skew_correction"))
            == Some(&Value::Bool(true));
    (!opted_out).then_some(sent_at)
}

/// Whether a string of the properties holds a NUL (only written `\u0000` in JSON, spec §1.2),
/// which the event does not store as sent.
fn has_nul(props: &EventProps) -> bool {
    // Most events hold no escape at all: one vector search for a backslash settles them
    // (`str::contains` over the whole text took ~1k instructions on a typical event).
    let text = props.raw().as_str();
    memchr::memchr(b'\\', text.as_bytes()).is_some_and(|at| text[at..].contains("\\u0000"))
}

/// Whether `$set` or `$set_once` is there but not an object (stored as an empty one).
fn sets_not_objects(props: &EventProps) -> bool {
    let not_object = |key| props.get_text(key).is_some_and(|t| !t.starts_with('{'));
    not_object("$set") || not_object("$set_once")
}

/// [`rewrite`] for properties without a NUL, the only rewrite most events need (posthog-js
/// sends `identify`'s `$set` and `$set_once` at the top of the event): only `$set` and
/// `$set_once` are parsed and written again, every other entry is copied as sent
/// ([`EventProps::replacing`]). A full rewrite parsed and wrote all ~40 entries.
fn merge_sets(
    props: &EventProps,
    top_set: Option<Value>,
    top_set_once: Option<Value>,
) -> EventProps {
    let merged = |key: &'static str, top: Option<Value>| {
        if top.is_none() && !props.contains_key(key) {
            return None;
        }
        let mut into = take_object(props.get(key));
        for (k, mut v) in take_object(top) {
            scrub_value(&mut v);
            into.insert(k, v);
        }
        Some((key, Value::Object(into)))
    };
    let added: Vec<(&str, Value)> = [merged("$set", top_set), merged("$set_once", top_set_once)]
        .into_iter()
        .flatten()
        .collect();
    props.replacing(&["$set", "$set_once"], &added)
}

/// The properties an event stores when they hold a NUL: NULs replaced, top-level `$set` and
/// `$set_once` objects merged into those of `properties` (spec §1.4), every entry parsed and
/// written again (sorted by key, a repeated key once). [`merge_sets`] does the rest.
fn rewrite(props: &EventProps, top_set: Option<Value>, top_set_once: Option<Value>) -> EventProps {
    let mut properties = props.to_map();
    properties.values_mut().for_each(scrub_value);
    let (has_top_set, has_top_set_once) = (top_set.is_some(), top_set_once.is_some());
    let mut set = take_object(properties.remove("$set"));
    let mut set_once = take_object(properties.remove("$set_once"));
    for (k, mut v) in take_object(top_set) {
        scrub_value(&mut v);
        set.insert(k, v);
    }
    for (k, mut v) in take_object(top_set_once) {
        scrub_value(&mut v);
        set_once.insert(k, v);
    }
    if has_top_set || props.contains_key("$set") {
        properties.insert("$set".into(), Value::Object(set));
    }
    if has_top_set_once || props.contains_key("$set_once") {
        properties.insert("$set_once".into(), Value::Object(set_once));
    }
    EventProps::from_map(&properties)
}

/// The promoted properties of `props`, each key once (the last sent wins).
fn promoted_of(props: &EventProps) -> Vec<PromotedProp> {
    let mut out: Vec<PromotedProp> = Vec::with_capacity(16);
    for (k, text) in props.iter() {
        // Only a promoted key's value is parsed (a pair in one pattern would parse them all).
        let Some((key, initial)) = promoted_key(k) else {
            continue;
        };
        let Some(v) = parse_value(text) else {
            continue;
        };
        match out.iter_mut().find(|p| p.0 == key) {
            Some(p) => p.2 = v,
            None => out.push((key, initial, v)),
        }
    }
    out
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
            .map(|v| (MergeKind::Identify, to_js_string(&v))),
        "$create_alias" | "$merge_dangerously" => {
            let kind = if ev.name == "$create_alias" {
                MergeKind::Alias
            } else {
                MergeKind::MergeDangerously
            };
            ev.properties
                .get("alias")
                .filter(is_truthy)
                .map(|v| (kind, to_js_string(&v)))
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

    /// A JSON value of the kinds the rules read: strings (some with a NUL), numbers, booleans,
    /// null, and small arrays and objects of those.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            prop::sample::select(vec!["", "x", "a\u{0}b", "Chrome", "\"q\"", "é"])
                .prop_map(Value::from),
            (-3i64..3).prop_map(Value::from),
            Just(Value::from(1.5)),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..3)
                    .prop_map(|e| Value::Object(e.into_iter().collect())),
            ]
        })
    }

    /// Keys an event's properties may hold, those the rules read among them.
    fn event_key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "a",
            "$os",
            "$browser",
            "$set",
            "$set_once",
            "$unset",
            "distinct_id",
            "token",
            "$process_person_profile",
            "$anon_distinct_id",
            "alias",
            "$device_id",
            "$lib",
            "$initial_os",
            "k\u{0}",
        ])
        .prop_map(str::to_string)
    }

    /// An object's JSON text written by hand: its entries in the given order, repeats kept,
    /// with spaces after the separators or without.
    fn object_text(entries: &[(String, Value)], spaced: bool) -> String {
        let sep = if spaced { ", " } else { "," };
        let colon = if spaced { ": " } else { ":" };
        let body: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{}{colon}{v}", Value::from(k.as_str())))
            .collect();
        format!("{{{}}}", body.join(sep))
    }

    proptest! {
        /// The daemon's path (properties kept as the text sent) means exactly what the parsed
        /// event means: the same event, properties, updates, promotions and warnings. Repeated
        /// keys, NULs, `$set` that is not an object and top-level `$set` included.
        #[test]
        fn properties_as_text_normalise_as_the_parsed_event_does(
            name in prop::sample::select(vec!["$pageview", "$identify", "$create_alias", "$snapshot", "$exception"]),
            props in prop::collection::vec((event_key(), json_value()), 0..8),
            top in prop::collection::vec((prop::sample::select(vec!["$set", "$set_once", "distinct_id", "uuid"]), json_value()), 0..3),
            spaced: bool,
        ) {
            let mut fields = vec![
                ("event".to_string(), Value::from(name)),
                ("distinct_id".to_string(), Value::from("u1")),
            ];
            fields.extend(top.into_iter().map(|(k, v)| (k.to_string(), v)));
            fields.push(("properties".into(), Value::Null));
            let text = object_text(&fields, spaced).replace(
                "\"properties\":null",
                &format!("\"properties\":{}", object_text(&props, spaced)),
            ).replace(
                "\"properties\": null",
                &format!("\"properties\": {}", object_text(&props, spaced)),
            );
            let by_text = normalize_wire(WireEvent::from_json(&text).unwrap(), 7);
            let value: Value = serde_json::from_str(&text).unwrap();
            let by_value = normalize(&value, 7);
            match (by_text, by_value) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(a.properties.to_map(), b.properties.to_map());
                    // Promotions in the order sent, or of the map's keys: the same set.
                    let no_text = |mut n: Normalized| {
                        n.promoted.sort_by_key(|p| p.0);
                        Normalized { properties: EventProps::default(), ..n }
                    };
                    prop_assert_eq!(no_text(a), no_text(b));
                }
                (a, b) => prop_assert_eq!(a.err(), b.err()),
            }
        }

        /// Merging the top-level `$set` and `$set_once` into properties copied as sent means
        /// what the full rewrite (every entry parsed and written again) means, and the index
        /// built while writing is the one a parse of the new text finds. Repeated keys, keys
        /// and strings that need escapes, and `$set` that is not an object included.
        #[test]
        fn merging_the_sets_into_the_text_as_sent_equals_the_full_rewrite(
            props in prop::collection::vec((event_key(), json_value()), 0..8),
            top_set in prop::option::of(prop::collection::vec((key(), json_value()), 0..3)),
            top_set_once in prop::option::of(prop::collection::vec((key(), json_value()), 0..3)),
            spaced: bool,
        ) {
            // No NUL in the properties: those take the full rewrite, which scrubs them.
            let text = object_text(&props, spaced).replace("\\u0000", "\\u0001");
            let props = EventProps::parse(&text).unwrap();
            prop_assert!(!has_nul(&props));
            let object = |e: Option<Vec<(String, Value)>>| e.map(|e| Value::Object(e.into_iter().collect()));
            let (top_set, top_set_once) = (object(top_set), object(top_set_once));
            let merged = merge_sets(&props, top_set.clone(), top_set_once.clone());
            let full = rewrite(&props, top_set, top_set_once);
            prop_assert_eq!(merged.to_map(), full.to_map());
            prop_assert_eq!(&EventProps::parse(merged.raw().as_str()).unwrap(), &merged);
            // Every other entry as sent, in order, repeats kept.
            let others = |p: &EventProps| -> Vec<(String, String)> {
                p.iter()
                    .filter(|(k, _)| !["$set", "$set_once"].contains(k))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            };
            prop_assert_eq!(others(&merged), others(&props));
        }

        /// Truncation keeps the first `max` code points and reports the original count when it
        /// cut, whatever mix of one- and multi-byte characters (§1's 200-character limit).
        #[test]
        fn truncation_keeps_the_first_code_points(s in "[aé€😀]{0,40}", max in 0usize..45) {
            let chars = s.chars().count();
            let want: String = s.chars().take(max).collect();
            let (got, cut) = truncate_chars(&s, max);
            prop_assert_eq!(got, want);
            prop_assert_eq!(cut, (chars > max).then_some(chars));
        }

        /// A timestamp in JavaScript's `toISOString()` form gives what chrono's RFC 3339 parse
        /// gives, and a date or time that does not exist is left to chrono (which refuses it).
        #[test]
        fn the_iso_string_fast_path_agrees_with_chrono(
            y in 0i64..10_000, mo in 0i64..14, d in 0i64..33, h in 0i64..25, mi in 0i64..61,
            se in 0i64..61, ms in 0i64..1000,
        ) {
            let s = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}.{ms:03}Z");
            let chrono = chrono::DateTime::parse_from_rfc3339(&s).ok().map(|t| t.timestamp_millis());
            match utc_millis(&s) {
                Some(fast) => prop_assert_eq!(Some(fast), chrono, "{}", s),
                None => prop_assert!(chrono.is_none() || se == 60, "{} parses: {:?}", s, chrono),
            }
        }

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
                if !current.get(k).is_some_and(|c| same_value(c, v)) {
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
    fn the_iso_string_fast_path_knows_leap_years_and_the_epoch() {
        let chrono = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.timestamp_millis())
        };
        for s in [
            "1970-01-01T00:00:00.000Z",
            "1969-12-31T23:59:59.999Z",
            "2000-02-29T12:00:00.500Z",
            "2024-02-29T23:59:59.999Z",
            "2026-11-30T21:33:00.123Z",
            "0000-03-01T00:00:00.000Z",
        ] {
            assert_eq!(utc_millis(s), chrono(s), "{s}");
            assert!(utc_millis(s).is_some(), "{s}");
        }
        for s in [
            "1900-02-29T00:00:00.000Z",
            "2023-02-29T00:00:00.000Z",
            "2026-04-31T00:00:00.000Z",
        ] {
            assert_eq!(utc_millis(s), None, "{s}");
            assert_eq!(chrono(s), None, "{s}");
        }
        // Other forms go to chrono.
        assert_eq!(utc_millis("2026-11-30T21:33:00Z"), None);
        assert_eq!(utc_millis("2026-11-30T21:33:00.123+00:00"), None);
        assert_eq!(utc_millis("2026-11-30t21:33:00.123z"), None);
    }

    #[test]
    fn only_an_event_that_can_change_a_person_parses_its_promoted_properties() {
        let promoted = |name: &str, personless: bool| {
            let ev = serde_json::json!({"event": name, "distinct_id": "d", "properties": {
                "$os": "Linux", "$process_person_profile": !personless}});
            normalize(&ev, 0).unwrap().promoted.len()
        };
        assert_eq!(promoted("$pageview", false), 1);
        assert_eq!(promoted("$pageview", true), 0);
        assert_eq!(promoted("$exception", false), 0);
        assert_eq!(promoted("$snapshot", false), 0);
    }

    /// A person past [`PersonKeys::LISTED`] properties is searched in its map: the same diff.
    #[test]
    fn the_diff_of_a_person_with_many_properties_is_its_definition() {
        for n in [PersonKeys::LISTED - 1, PersonKeys::LISTED + 1, 200] {
            let mut current: Map<String, Value> =
                (0..n).map(|i| (format!("k{i}"), Value::from(i))).collect();
            current.insert("$os".into(), Value::from("Linux"));
            let updates = PropertyUpdates {
                set: map(vec![("$os".into(), 1), ("k5".into(), 5), ("k9".into(), 0)]),
                set_once: map(vec![("k7".into(), 0), ("new".into(), 2)]),
                unset: vec![],
            };
            let got = EventUpdates::explicit(&updates).diff(&current).set;
            let want = map(vec![("$os".into(), 1), ("k9".into(), 0), ("new".into(), 2)]);
            assert_eq!(got, want, "{n} properties");
        }
    }

    /// The definition [`promoted_key`] implements with its table: a search of the list.
    fn promoted_by_search(key: &str) -> Option<(&'static str, String)> {
        PROMOTED_KEYS
            .iter()
            .find(|k| **k == key)
            .map(|k| (*k, format!("$initial_{}", k.strip_prefix('$').unwrap_or(k))))
    }

    fn promoted_by_table(key: &str) -> Option<(&'static str, String)> {
        promoted_key(key).map(|(k, i)| (k, i.to_string()))
    }

    #[test]
    fn every_promoted_key_is_found_and_keys_next_to_them_are_not() {
        for k in PROMOTED_KEYS {
            assert_eq!(promoted_by_table(k), promoted_by_search(k), "{k}");
            assert!(promoted_key(k).is_some(), "{k}");
            // The same first two and last two bytes and length, another byte in the middle.
            if k.len() > 4 {
                let mut near = k.as_bytes().to_vec();
                near[2] ^= 1;
                let near = String::from_utf8(near).unwrap();
                assert_eq!(promoted_key(&near), None, "{near}");
            }
        }
        let initial = PROMOTED_KEYS.map(|k| promoted_key(k).unwrap().1);
        for k in initial.iter().copied().chain([
            "",
            "$",
            "o",
            "$o",
            "$os_",
            "$OS",
            "os",
            "$set",
            "$lib",
            "$host",
            "title",
            "$session_id",
            "$window_id",
            "$pageview_id",
            "utm",
            "utm_source_",
            "_kxx",
        ]) {
            assert_eq!(promoted_key(k), None, "{k:?}");
        }
    }

    proptest! {
        /// The table finds exactly the keys a search of the list finds, for keys made from
        /// promoted ones cut, lengthened or with a byte changed, and arbitrary ones.
        #[test]
        fn the_promoted_key_table_agrees_with_a_search(
            base in prop::sample::select(PROMOTED_KEYS.to_vec()),
            cut in 0usize..20,
            extra in "[a-z_$]{0,3}",
            flip in any::<prop::sample::Index>(),
            any_key in "[a-z_$]{0,12}",
        ) {
            let cut_key = &base[..base.len().saturating_sub(cut % 3)];
            let mut flipped = base.as_bytes().to_vec();
            let at = flip.index(flipped.len());
            flipped[at] = if flipped[at] == b'_' { b'x' } else { b'_' };
            let flipped = String::from_utf8(flipped).unwrap();
            for k in [base, cut_key, &format!("{base}{extra}"), &flipped, &any_key] {
                prop_assert_eq!(promoted_by_table(k), promoted_by_search(k), "{:?}", k);
            }
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
