//! Model-based property test of the identity rules (shared/spec/identity.md §1-§5, §8, §9).
//!
//! [`Model`] is a second, deliberately naive implementation of the spec: a `HashMap` from
//! distinct ID to person index and a `Vec` of persons, written from the spec text without
//! calling anything in `idstitch` (not `normalize`, `decide`, `apply_entry`, nor the illegal-ID
//! check or person UUIDs). Random event streams over a small pool of distinct IDs (so that
//! collisions, merges and refusals are frequent) are fed to the model and to the real domain
//! engine ([`World`] over `MemState`), and every person and warning count must agree.
//!
//! Targets are behind [`Target`] so that the same streams, including [`Op::Restart`] markers, can
//! later drive the daemon on RocksDB; for `World` and the model a restart is a no-op.
//!
//! Duplicate delivery (§1.7): `World` has no duplicate detection, so [`WorldTarget`] (the local
//! wrapper) skips an event whose uuid was already accepted and remembers the uuid of every event
//! `decide` did not drop. The generator does produce repeated uuids (resends of an earlier event
//! and different events reusing an earlier uuid, including the uuid of a dropped event).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use idstitch::domain::normalize;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{json, Map, Value};

use crate::world::{World, NOW};

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// Project 1, as in `world::P` (§6 names person UUIDs by `"<project id>:<distinct id>"`).
const PROJECT: u32 = 1;

/// §6: the UUIDv5 namespace of person UUIDs.
const PERSON_NS: uuid::Uuid = uuid::uuid!("932979b4-65c3-4424-8467-0b66ec27bc22");

/// §1.6, copied from the spec text.
const PROMOTED: &str = "$app_build $app_name $app_namespace $app_version $browser $browser_version \
    $device_type $current_url $pathname $os $os_name $os_version $referring_domain $referrer \
    $screen_height $screen_width $viewport_height $viewport_width $raw_user_agent utm_source \
    utm_medium utm_campaign utm_content utm_name utm_term gclid gad_source gclsrc dclid gbraid \
    wbraid fbclid msclkid twclid li_fat_id mc_cid igshid ttclid rdt_cid irclid _kx epik qclid sccid";

/// §4 "Illegal distinct IDs", compactly.
pub fn model_is_illegal(id: &str) -> bool {
    let js_ws = |c: char| {
        ('\u{2000}'..='\u{200A}').contains(&c)
            || "\t\n\u{B}\u{C}\r \u{A0}\u{FEFF}\u{1680}\u{202F}\u{205F}\u{3000}\u{2028}\u{2029}"
                .contains(c)
    };
    let forms = |w: &str| [w.to_string(), format!("'{w}'"), format!("\"{w}\"")];
    let any_case =
        "anonymous|guest|distinctid|distinct_id|id|not_authenticated|email|undefined|true|false";
    let exact = "[object Object]|NaN|None|none|null|0|undefined";
    id.trim_matches(js_ws).is_empty()
        || id.chars().count() > 400
        || any_case
            .split('|')
            .any(|w| forms(w).contains(&id.to_lowercase()))
        || exact.split('|').any(|w| forms(w).contains(&id.to_string()))
}

/// JavaScript `String(v)` for the values the generator produces (no floats, no containers).
fn js_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(), // integers and booleans print the same in JSON and JS
    }
}

/// JavaScript truthiness (§3).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// A JSON value as JavaScript holds it after `JSON.parse`: every number is one `f64` (§5 "a
/// `$set` of the value it already has changes nothing" compares values so).
#[derive(Debug, PartialEq)]
enum JsValue {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<JsValue>),
    Object(BTreeMap<String, JsValue>),
}

/// `JSON.parse` of the JSON text of `v`: a number becomes the `f64` nearest its decimal text,
/// so `1`, `1.0` and `1e0` are one number.
fn js_parse(v: &Value) -> JsValue {
    match v {
        Value::Null => JsValue::Null,
        Value::Bool(b) => JsValue::Bool(*b),
        Value::Number(n) => JsValue::Number(
            n.to_string()
                .parse()
                .expect("a JSON number's text is a decimal f64"),
        ),
        Value::String(s) => JsValue::String(s.clone()),
        Value::Array(items) => JsValue::Array(items.iter().map(js_parse).collect()),
        Value::Object(map) => {
            JsValue::Object(map.iter().map(|(k, v)| (k.clone(), js_parse(v))).collect())
        }
    }
}

/// Whether JavaScript holds `a` and `b` as the same value once parsed: structural equality, with
/// numbers (at any depth) compared as `f64`s (`===`: `0` and `-0` are equal).
fn js_equal(a: &Value, b: &Value) -> bool {
    js_parse(a) == js_parse(b)
}

fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// One person of the model.
#[derive(Clone, Debug)]
pub struct ModelPerson {
    /// UUIDv5 of the distinct ID the person was created for (§6).
    pub uuid: String,
    /// In the order they were attached.
    pub distinct_ids: Vec<String>,
    /// Person properties.
    pub properties: Map<String, Value>,
    /// Never goes back to false.
    pub is_identified: bool,
    /// +1 per event that changes the person; 0 at creation.
    pub version: u64,
    /// Event timestamp of the creating event (or ingestion time); `min` over merges.
    pub created_at_ms: i64,
}

/// What one event asks of person properties (§1.4, §1.6).
#[derive(Default)]
struct Updates {
    set: Map<String, Value>,
    set_once: Map<String, Value>,
    unset: Vec<String>,
}

/// The sequential model. Creation order is the index in `persons` (never reused).
#[derive(Default)]
pub struct Model {
    /// Distinct ID -> index in `persons`.
    pub ids: HashMap<String, usize>,
    /// Persons by creation order; `None` once merged away.
    pub persons: Vec<Option<ModelPerson>>,
    /// uuids of accepted events (§1.7).
    pub accepted: HashSet<String>,
    /// Warning counts by type.
    pub warnings: BTreeMap<String, usize>,
    /// (type, distinct ID) of rate-limited warnings already recorded; ingestion time is constant.
    pub limited: HashSet<(String, String)>,
    /// `--merge-limit`.
    pub merge_limit: Option<usize>,
    /// How often each interesting branch ran, to check that the generator reaches them.
    pub stats: BTreeMap<&'static str, usize>,
}

/// The event being processed, as the model needs it.
struct Ev {
    uuid: Option<String>,
    ts: i64,
    updates: Updates,
}

impl Model {
    /// A model with `--merge-limit`.
    pub fn new(merge_limit: Option<usize>) -> Self {
        Model {
            merge_limit,
            ..Model::default()
        }
    }

    fn stat(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn warn(&mut self, kind: &str) {
        *self.warnings.entry(kind.to_string()).or_default() += 1;
    }

    fn warn_limited(&mut self, kind: &str, did: &str) {
        if self.limited.insert((kind.to_string(), did.to_string())) {
            self.warn(kind);
        }
    }

    /// Process one event as an SDK sent it.
    pub fn send(&mut self, event: &Value) {
        let empty = Map::new();
        let props = event
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let name = cut(
            event["event"]
                .as_str()
                .expect("generated events have names"),
            200,
        );
        let raw = [event.get("distinct_id"), props.get("distinct_id")]
            .into_iter()
            .flatten()
            .find(|v| !v.is_null())
            .map(js_string)
            .expect("generated events have distinct IDs");
        let did = cut(&raw, 200);
        let uuid = event
            .get("uuid")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from);
        if uuid.as_ref().is_some_and(|u| self.accepted.contains(u)) {
            self.stat("duplicate ignored");
            return;
        }
        if did != raw {
            self.warn_limited("distinct_id_truncated", &did);
        }
        let personless = match props.get("$process_person_profile") {
            None => false,
            Some(Value::Bool(b)) => !b,
            Some(_) => {
                self.warn_limited("invalid_process_person_profile", &did);
                false
            }
        };
        if personless
            && [
                "$identify",
                "$create_alias",
                "$merge_dangerously",
                "$groupidentify",
            ]
            .contains(&name.as_str())
        {
            self.warn("invalid_event_when_process_person_profile_is_false");
            self.stat("dropped");
            return;
        }
        if let Some(u) = &uuid {
            self.accepted.insert(u.clone());
        }
        if personless {
            self.stat("personless");
            return;
        }

        let mut updates = Updates::default();
        if !["$exception", "$$heatmap", "$groupidentify"].contains(&name.as_str()) {
            let obj = |v: Option<&Value>| v.and_then(Value::as_object).cloned().unwrap_or_default();
            updates.set = obj(props.get("$set"));
            updates.set.extend(obj(event.get("$set")));
            updates.set_once = obj(props.get("$set_once"));
            updates.set_once.extend(obj(event.get("$set_once")));
            updates.unset = match props.get("$unset") {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect(),
                Some(Value::Object(o)) => o.keys().cloned().collect(),
                _ => vec![],
            };
            if name != "$snapshot" && name != "$performance_event" {
                for k in PROMOTED.split_whitespace() {
                    if let Some(v) = props.get(k) {
                        updates
                            .set
                            .entry(k.to_string())
                            .or_insert_with(|| v.clone());
                        let initial = format!("$initial_{}", k.strip_prefix('$').unwrap_or(k));
                        updates.set_once.entry(initial).or_insert_with(|| v.clone());
                    }
                }
            }
        }
        // More than 23 hours after arrival is taken as arrival (PostHog's future cut-off).
        let ts = event
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(NOW, |t| t.timestamp_millis());
        let ts = if ts - NOW > 23 * 3_600_000 { NOW } else { ts };
        let ev = Ev { uuid, ts, updates };

        let other = match name.as_str() {
            "$identify" => props.get("$anon_distinct_id").map(js_string),
            "$create_alias" | "$merge_dangerously" => {
                props.get("alias").filter(|v| truthy(v)).map(js_string)
            }
            _ => None,
        };
        match other {
            Some(other) => self.merge(&ev, name == "$merge_dangerously", &other, &did),
            None => self.ordinary(&ev, &did),
        }
    }

    /// §5 creation.
    fn create(&mut self, ev: &Ev, ids: Vec<String>, identified: bool) {
        let mut properties = ev.updates.set_once.clone();
        properties.extend(ev.updates.set.clone());
        if let Some(u) = &ev.uuid {
            properties.insert("$creator_event_uuid".into(), Value::String(u.clone()));
        }
        let name = format!("{PROJECT}:{}", ids[0]);
        let uuid = uuid::Uuid::new_v5(&PERSON_NS, name.as_bytes())
            .hyphenated()
            .to_string();
        let index = self.persons.len();
        for id in &ids {
            self.ids.insert(id.clone(), index);
        }
        self.persons.push(Some(ModelPerson {
            uuid,
            distinct_ids: ids,
            properties,
            is_identified: identified,
            version: 0,
            created_at_ms: ev.ts,
        }));
    }

    fn person(&mut self, index: usize) -> &mut ModelPerson {
        self.persons[index].as_mut().expect("live person")
    }

    /// §5 update; returns whether anything changed.
    fn update(&mut self, ev: &Ev, index: usize) -> bool {
        let p = self.person(index);
        let mut to_set = Map::new();
        for (k, v) in &ev.updates.set_once {
            if !p.properties.contains_key(k) {
                to_set.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in &ev.updates.set {
            if !p.properties.get(k).is_some_and(|c| js_equal(c, v)) {
                to_set.insert(k.clone(), v.clone());
            }
        }
        let to_unset: Vec<String> = ev
            .updates
            .unset
            .iter()
            .filter(|k| p.properties.contains_key(*k))
            .cloned()
            .collect();
        let changed = !to_set.is_empty() || !to_unset.is_empty();
        p.properties.extend(to_set);
        for k in to_unset {
            p.properties.remove(&k);
        }
        changed
    }

    /// An ordinary event for `did` (§4 step 6, last sentence).
    fn ordinary(&mut self, ev: &Ev, did: &str) {
        match self.ids.get(did).copied() {
            None => self.create(ev, vec![did.to_string()], false),
            Some(i) => {
                if self.update(ev, i) {
                    self.person(i).version += 1;
                }
            }
        }
    }

    /// Property changes plus the identified flag on person `i`, one version for everything
    /// (`changed` says whether something else already changed it in this event).
    fn finish_identified(&mut self, ev: &Ev, i: usize, changed: bool) {
        let changed = self.update(ev, i) | changed | !self.person(i).is_identified;
        let p = self.person(i);
        p.is_identified = true;
        if changed {
            p.version += 1;
        }
    }

    /// merge(other, into) of §4.
    fn merge(&mut self, ev: &Ev, dangerously: bool, other: &str, into: &str) {
        if other == into {
            self.stat("merge with itself");
            return self.ordinary(ev, into);
        }
        if model_is_illegal(into) || model_is_illegal(other) {
            self.warn("cannot_merge_with_illegal_distinct_id");
            self.stat("illegal merge");
            return self.ordinary(ev, into);
        }
        match (self.ids.get(into).copied(), self.ids.get(other).copied()) {
            (None, None) => {
                self.stat("created identified");
                self.create(ev, vec![into.to_string(), other.to_string()], true);
            }
            (Some(i), None) | (None, Some(i)) => {
                self.stat("attached");
                let missing = if self.ids.contains_key(into) {
                    other
                } else {
                    into
                };
                self.ids.insert(missing.to_string(), i);
                self.person(i).distinct_ids.push(missing.to_string());
                self.finish_identified(ev, i, true);
            }
            (Some(i), Some(j)) if i == j => {
                self.stat("already together");
                self.finish_identified(ev, i, false);
            }
            (Some(i), Some(j)) => {
                let source = self.persons[j].as_ref().expect("live person");
                if !dangerously && source.is_identified {
                    self.warn("cannot_merge_already_identified");
                    self.stat("refused: identified");
                    return self.finish_identified(ev, i, false);
                }
                if self
                    .merge_limit
                    .is_some_and(|n| source.distinct_ids.len() > n)
                {
                    self.warn("merge_limit_exceeded");
                    self.stat("refused: limit");
                    return self.finish_identified(ev, i, false);
                }
                self.stat(if dangerously {
                    "merged dangerously"
                } else {
                    "merged"
                });
                let source = self.persons[j].take().expect("live person");
                for id in &source.distinct_ids {
                    self.ids.insert(id.clone(), i);
                }
                let into_p = self.person(i);
                let mut properties = source.properties;
                properties.extend(std::mem::take(&mut into_p.properties));
                into_p.properties = properties;
                into_p.distinct_ids.extend(source.distinct_ids);
                into_p.created_at_ms = into_p.created_at_ms.min(source.created_at_ms);
                self.finish_identified(ev, i, true);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

/// A person in a form every target can produce.
#[derive(Clone, Debug, PartialEq)]
pub struct ComparablePerson {
    /// Hyphenated UUID.
    pub uuid: String,
    /// In attachment order.
    pub distinct_ids: Vec<String>,
    /// Properties as a JSON object.
    pub properties: Value,
    /// Identified flag.
    pub is_identified: bool,
    /// Version.
    pub version: u64,
    /// Creation time, ms.
    pub created_at_ms: i64,
}

/// Something that ingests events and shows persons: the model, the domain engine, later the
/// daemon on RocksDB.
pub trait Target {
    /// Ingest one event, as an SDK sent it (token handling is the target's business).
    fn send(&mut self, ev: &Value);
    /// Restart the target (a no-op for in-memory targets).
    fn restart(&mut self);
    /// Every person, in creation order.
    fn persons(&self) -> Vec<ComparablePerson>;
    /// Number of ingestion warnings of each type.
    fn warning_counts(&self) -> BTreeMap<String, usize>;
}

impl Target for Model {
    fn send(&mut self, ev: &Value) {
        Model::send(self, ev);
    }

    fn restart(&mut self) {}

    fn persons(&self) -> Vec<ComparablePerson> {
        self.persons
            .iter()
            .flatten()
            .map(|p| ComparablePerson {
                uuid: p.uuid.clone(),
                distinct_ids: p.distinct_ids.clone(),
                properties: Value::Object(p.properties.clone()),
                is_identified: p.is_identified,
                version: p.version,
                created_at_ms: p.created_at_ms,
            })
            .collect()
    }

    fn warning_counts(&self) -> BTreeMap<String, usize> {
        self.warnings.clone()
    }
}

/// The real domain engine (`World`: normalize, decide, apply_entry over `MemState`) plus the
/// duplicate-delivery check of §1.7, which `World` does not have.
#[derive(Default)]
pub struct WorldTarget {
    /// The engine.
    pub world: World,
    /// uuids of events `decide` accepted (did not drop).
    pub accepted: HashSet<String>,
}

impl WorldTarget {
    /// A world with `--merge-limit`.
    pub fn new(merge_limit: Option<u64>) -> Self {
        let mut t = WorldTarget::default();
        t.world.merge_limit = merge_limit;
        t
    }

    /// Every distinct ID maps to a live person that lists it, and vice versa.
    pub fn check_id_map(&self) -> Result<(), String> {
        let s = &self.world.state;
        let listed: usize = s.persons.values().map(|p| p.distinct_ids.len()).sum();
        if listed != s.dids.len() {
            return Err(format!(
                "{listed} distinct IDs listed on persons, {} mapped",
                s.dids.len()
            ));
        }
        for ((project, did), uuid) in &s.dids {
            match s.persons.get(&(*project, *uuid)) {
                Some(p) if p.distinct_ids.contains(did) => {}
                _ => return Err(format!("{did:?} maps to {uuid} which does not list it")),
            }
        }
        Ok(())
    }
}

impl Target for WorldTarget {
    fn send(&mut self, ev: &Value) {
        let uuid = normalize(ev, NOW).expect("generated events are valid").uuid;
        if uuid.as_ref().is_some_and(|u| self.accepted.contains(u)) {
            return;
        }
        let decision = self.world.send(ev.clone());
        if let (None, Some(u)) = (decision.dropped, uuid) {
            self.accepted.insert(u);
        }
    }

    fn restart(&mut self) {}

    fn persons(&self) -> Vec<ComparablePerson> {
        let mut persons: Vec<_> = self.world.state.persons.values().collect();
        persons.sort_by_key(|p| p.created_seq);
        persons
            .into_iter()
            .map(|p| ComparablePerson {
                uuid: p.uuid.to_string(),
                distinct_ids: p.distinct_ids.clone(),
                properties: Value::Object(p.properties.0.clone()),
                is_identified: p.is_identified,
                version: p.version,
                created_at_ms: p.created_at_ms,
            })
            .collect()
    }

    fn warning_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (kind, _) in self.world.warnings() {
            *counts.entry(kind).or_default() += 1;
        }
        counts
    }
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// One step of a stream.
#[derive(Clone)]
pub enum Op {
    /// Deliver an event.
    Send(Value),
    /// Restart the target between two events.
    Restart,
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Send(v) => write!(f, "{v}"),
            Op::Restart => write!(f, "RESTART"),
        }
    }
}

const ANON: [&str; 6] = ["a0", "a1", "a2", "a3", "a4", "a5"];
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
const ILLEGAL: [&str; 5] = ["null", "undefined", " ", "Guest", "'email'"];
const SHARP: [&str; 4] = ["Null", " guest", "00", "7"];
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];
/// Before `NOW` (2026-01-01), 18 hours after it, and a year after it (past the 23-hour cut-off,
/// so taken as `NOW`), for `created_at = min(both)`.
const TIMESTAMPS: [&str; 4] = [
    "2024-01-01T00:00:00Z",
    "2025-06-01T12:00:00.500Z",
    "2026-01-01T20:00:00+02:00",
    "2027-01-01T00:00:00+02:00",
];

/// A distinct ID string: mostly the small pools, sometimes illegal, sharp or long (200 stays,
/// 201 is cut to 200 as an event's ID but legal as an alias, 401 is illegal as an alias).
fn id_str() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(&ANON[..]).prop_map(String::from),
        3 => select(&USERS[..]).prop_map(String::from),
        1 => select(&ILLEGAL[..]).prop_map(String::from),
        1 => select(&SHARP[..]).prop_map(String::from),
        1 => select(vec![200usize, 201, 401]).prop_map(|n| "L".repeat(n)),
    ]
}

/// A distinct ID as JSON: mostly strings, sometimes numbers (`7` is the ID "7", `0` is "0").
fn id_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        14 => id_str().prop_map(Value::String),
        1 => Just(json!(7)),
        1 => Just(json!(0)),
    ]
}

fn small_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        (0i64..3).prop_map(Value::from),
        select(vec!["x", "y"]).prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ]
}

fn props_map() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::vec((select(&KEYS[..]), small_value()), 0..4)
        .prop_map(|kvs| kvs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn unset_value() -> impl Strategy<Value = Value> {
    let keys = || proptest::collection::vec(select(&KEYS[..]), 0..3);
    prop_oneof![
        3 => keys().prop_map(|ks| json!(ks)),
        1 => keys().prop_map(|ks| Value::Object(ks.into_iter().map(|k| (k.to_string(), json!(1))).collect())),
        1 => keys().prop_map(|ks| { let mut a = vec![json!(3)]; a.extend(ks.into_iter().map(Value::from)); Value::Array(a) }),
    ]
}

/// Event name and the properties that make it what it is.
fn kind() -> impl Strategy<Value = (&'static str, Map<String, Value>)> {
    let one = |k: &str, v: Option<Value>| {
        v.map(|v| Map::from_iter([(k.to_string(), v)]))
            .unwrap_or_default()
    };
    let anon = prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => Just(Some(json!(false))),
        12 => id_value().prop_map(Some),
    ];
    let alias = || {
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(json!(""))),
            1 => Just(Some(json!(0))),
            1 => Just(Some(json!("0"))),
            14 => id_value().prop_map(Some),
        ]
    };
    prop_oneof![
        6 => Just(("$pageview", Map::new())),
        4 => anon.prop_map(move |a| ("$identify", one("$anon_distinct_id", a))),
        2 => alias().prop_map(move |a| ("$create_alias", one("alias", a))),
        2 => alias().prop_map(move |a| ("$merge_dangerously", one("alias", a))),
        1 => Just(("$exception", Map::new())),
        1 => Just(("signed_up", Map::new())),
    ]
}

/// One event without a uuid.
fn event_body() -> impl Strategy<Value = Value> {
    let ppp = prop_oneof![
        14 => Just(None),
        2 => Just(Some(json!(false))),
        1 => Just(Some(json!(true))),
        1 => Just(Some(json!("false"))),
    ];
    let sets = (
        proptest::option::weighted(0.5, props_map()),
        proptest::option::weighted(0.25, props_map()),
        proptest::option::weighted(0.3, props_map()),
        proptest::option::weighted(0.2, props_map()),
        proptest::option::weighted(0.25, unset_value()),
        proptest::option::weighted(0.05, unset_value()),
    );
    let extras = (
        ppp,
        proptest::option::weighted(0.1, select(vec!["Firefox", "Safari"])),
        proptest::option::weighted(0.2, select(&TIMESTAMPS[..])),
    );
    (kind(), id_value(), 0u8..8, id_value(), sets, extras).prop_map(
        |(
            (name, mut props),
            did,
            place,
            decoy,
            (set, top_set, set_once, top_set_once, unset, top_unset),
            (ppp, browser, ts),
        )| {
            let mut ev = Map::new();
            ev.insert("event".into(), json!(name));
            match place {
                0..=5 => drop(ev.insert("distinct_id".into(), did)),
                6 => drop(props.insert("distinct_id".into(), did)),
                _ => {
                    ev.insert("distinct_id".into(), did);
                    props.insert("distinct_id".into(), decoy);
                }
            }
            let put = |m: &mut Map<String, Value>, k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            };
            put(&mut props, "$set", set.map(Value::Object));
            put(&mut ev, "$set", top_set.map(Value::Object));
            put(&mut props, "$set_once", set_once.map(Value::Object));
            put(&mut ev, "$set_once", top_set_once.map(Value::Object));
            put(&mut props, "$unset", unset);
            // §1.4: `$unset` is read only from properties; a top-level one is ignored.
            put(&mut ev, "$unset", top_unset);
            put(&mut props, "$process_person_profile", ppp);
            put(&mut props, "$browser", browser.map(Value::from));
            put(&mut ev, "timestamp", ts.map(Value::from));
            ev.insert("properties".into(), Value::Object(props));
            Value::Object(ev)
        },
    )
}

/// How an event gets its uuid.
#[derive(Clone, Debug)]
enum UuidPlan {
    None,
    Fresh,
    /// Reuse the uuid of an earlier event (`selector` modulo their number); `resend`: deliver
    /// that earlier event again verbatim, else this new body under the old uuid.
    Repeat {
        selector: usize,
        resend: bool,
    },
}

/// A stream of events over the small pools; most carry a uuid unique to their position,
/// some repeat an earlier one.
pub fn events(max_len: usize) -> impl Strategy<Value = Vec<Value>> {
    let plan = prop_oneof![
        1 => Just(UuidPlan::None),
        8 => Just(UuidPlan::Fresh),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(selector, resend)| UuidPlan::Repeat { selector, resend }),
    ];
    proptest::collection::vec((event_body(), plan), 0..max_len).prop_map(|items| {
        let mut sent: Vec<Value> = Vec::new();
        let mut out = Vec::new();
        for (i, (mut body, plan)) in items.into_iter().enumerate() {
            match plan {
                UuidPlan::None => {}
                UuidPlan::Repeat { selector, resend } if !sent.is_empty() => {
                    let earlier = &sent[selector % sent.len()];
                    if resend {
                        out.push(earlier.clone());
                        continue;
                    }
                    body["uuid"] = earlier["uuid"].clone();
                }
                _ => {
                    body["uuid"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
                    sent.push(body.clone());
                }
            }
            out.push(body);
        }
        out
    })
}

/// Insert [`Op::Restart`] markers into an event stream: before any event, each with
/// probability `p`, and possibly at the end.
pub fn restart_points(events: Vec<Value>, p: f64) -> impl Strategy<Value = Vec<Op>> {
    let n = events.len();
    proptest::collection::vec(proptest::bool::weighted(p), n + 1).prop_map(move |marks| {
        let mut ops = Vec::new();
        for (ev, restart) in events.iter().zip(&marks) {
            if *restart {
                ops.push(Op::Restart);
            }
            ops.push(Op::Send(ev.clone()));
        }
        if marks[n] {
            ops.push(Op::Restart);
        }
        ops
    })
}

/// Event streams with restart markers.
pub fn ops(max_len: usize) -> impl Strategy<Value = Vec<Op>> {
    events(max_len).prop_flat_map(|evs| restart_points(evs, 0.1))
}

/// Feed `ops` to `target`.
pub fn run<T: Target>(target: &mut T, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Send(ev) => target.send(ev),
            Op::Restart => target.restart(),
        }
    }
}

/// Every person and every warning count of `actual` equals the model's.
pub fn compare<T: Target>(model: &Model, actual: &T) -> Result<(), TestCaseError> {
    let want = model.persons();
    let got = actual.persons();
    let by_ids = |ps: &[ComparablePerson]| -> BTreeMap<Vec<String>, ComparablePerson> {
        ps.iter()
            .map(|p| {
                let mut ids = p.distinct_ids.clone();
                ids.sort();
                (ids, p.clone())
            })
            .collect()
    };
    let (want_by, got_by) = (by_ids(&want), by_ids(&got));
    prop_assert_eq!(
        want_by.keys().collect::<Vec<_>>(),
        got_by.keys().collect::<Vec<_>>(),
        "persons differ (as distinct-ID sets)"
    );
    for (ids, w) in &want_by {
        prop_assert_eq!(
            w,
            &got_by[ids],
            "person {:?} differs (left: model, right: engine)",
            ids
        );
    }
    prop_assert_eq!(
        &want,
        &got,
        "persons are listed in a different creation order"
    );
    prop_assert_eq!(
        model.warning_counts(),
        actual.warning_counts(),
        "warning counts differ (left: model)"
    );
    Ok(())
}

fn check_against_world(ops: &[Op], merge_limit: Option<usize>) -> Result<(), TestCaseError> {
    let mut model = Model::new(merge_limit);
    let mut world = WorldTarget::new(merge_limit.map(|n| n as u64));
    run(&mut model, ops);
    run(&mut world, ops);
    world.check_id_map().map_err(TestCaseError::fail)?;
    replay_matches(&world)?;
    compare(&model, &world)
}

/// The world's log, replayed the way `verify` replays a store (each entry encoded and
/// skimmed, created persons kept as their rows, the rest applied by value), rebuilds the
/// world's state exactly.
fn replay_matches(world: &WorldTarget) -> Result<(), TestCaseError> {
    use idstitch::store::codec::{encode_entry, skim_for_replay};
    use idstitch::store::verify::Replayed;
    let fail = |e: &dyn std::fmt::Display| TestCaseError::fail(e.to_string());
    let mut scratch = Replayed::new();
    for (seq, entry) in &world.world.log {
        let (mut changes, mut rows) = (Vec::new(), Vec::new());
        let skimmed = skim_for_replay(&encode_entry(entry), *seq, &mut changes, &mut rows)
            .map_err(|e| fail(&e))?;
        scratch.add_rows(rows);
        scratch.apply(*seq, skimmed, &mut changes.into_iter());
    }
    let replayed = scratch.into_state().map_err(|e| fail(&e))?.with_dids();
    prop_assert_eq!(&replayed, &world.world.state);
    Ok(())
}

/// `PROPTEST_CASES` when set (for long hunts), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1024), ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_sequential_model_on_random_streams(ops in ops(60)) {
        check_against_world(&ops, None)?;
    }

    #[test]
    fn engine_matches_the_sequential_model_under_a_merge_limit(ops in ops(60), limit in 1usize..4) {
        check_against_world(&ops, Some(limit))?;
    }
}

// ---------------------------------------------------------------------------------------------
// The model and the generator, checked on their own
// ---------------------------------------------------------------------------------------------

#[test]
fn the_model_compares_values_as_javascript_parses_them() {
    let parse = |t: &str| serde_json::from_str::<Value>(t).expect(t);
    for (a, b) in [
        ("1", "1.0"),
        ("1", "1e0"),
        ("1.0", "1e0"),
        ("100", "1e2"),
        ("0", "-0"),
        ("0", "-0.0"),
        ("0.1", "1e-1"),
        ("12345678901234567890", "12345678901234567000"),
        ("null", "null"),
        ("\"x\"", "\"x\""),
        ("[]", "[]"),
        ("{}", "{}"),
        ("[1,[2,[3.0]]]", "[1.0,[2e0,[3]]]"),
        (
            r#"{"a":[1,{"b":2}],"c":true}"#,
            r#"{"c":true,"a":[1.0,{"b":2e0}]}"#,
        ),
    ] {
        assert!(js_equal(&parse(a), &parse(b)), "{a} === {b} once parsed");
        assert!(js_equal(&parse(b), &parse(a)), "{b} === {a} once parsed");
    }
    for (a, b) in [
        ("1", "1.5"),
        ("1", "\"1\""),
        ("0", "false"),
        ("null", "0"),
        ("null", "\"\""),
        ("true", "1"),
        ("[]", "{}"),
        ("[1]", "[1,1]"),
        ("[1,2]", "[2,1]"),
        ("[[1]]", "[[1.5]]"),
        (r#"{"a":1}"#, r#"{"b":1}"#),
        (r#"{"a":1}"#, r#"{"a":1,"b":1}"#),
        (r#"{"a":{"b":1}}"#, r#"{"a":{"b":1.5}}"#),
        (r#"{"a":null}"#, "{}"),
    ] {
        assert!(!js_equal(&parse(a), &parse(b)), "{a} !== {b} once parsed");
        assert!(!js_equal(&parse(b), &parse(a)), "{b} !== {a} once parsed");
    }
}

#[test]
fn the_model_illegal_id_check_follows_the_spec_examples() {
    for id in [
        "",
        " ",
        "\u{3000}\t",
        "null",
        "'null'",
        "\"NaN\"",
        "0",
        "undefined",
        "Guest",
        "GUEST",
        "'email'",
        "\"Email\"",
        "[object Object]",
        "none",
        "None",
        "'distinct_id'",
        &"x".repeat(401),
    ] {
        assert!(model_is_illegal(id), "{id:?} is illegal");
    }
    for id in [
        "Null",
        "NULL",
        "nan",
        "00",
        " guest",
        "\u{85}",
        "'null",
        "a0",
        "7",
        &"x".repeat(400),
    ] {
        assert!(!model_is_illegal(id), "{id:?} is legal");
    }
}

#[test]
fn the_model_follows_the_spec_walkthrough_of_identify_and_alias() {
    let mut m = Model::default();
    m.send(&json!({"event": "$pageview", "distinct_id": "anon", "uuid": "e1", "$set": {"a": 1}}));
    m.send(&json!({"event": "$pageview", "distinct_id": "user", "uuid": "e2", "properties": {"$set": {"a": 2, "b": 2}}}));
    m.send(&json!({"event": "$identify", "distinct_id": "user", "uuid": "e3", "properties": {"$anon_distinct_id": "anon"}}));
    let ps = Target::persons(&m);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].distinct_ids, ["user", "anon"]);
    assert_eq!(
        ps[0].properties,
        json!({"a": 2, "b": 2, "$creator_event_uuid": "e2"})
    );
    assert!(ps[0].is_identified);
    assert_eq!(ps[0].version, 1);
    // An identified source person is not merged; the target is identified anyway.
    m.send(&json!({"event": "$pageview", "distinct_id": "other", "uuid": "e4"}));
    m.send(&json!({"event": "$create_alias", "distinct_id": "other", "uuid": "e5", "properties": {"alias": "user"}}));
    assert_eq!(m.warnings["cannot_merge_already_identified"], 1);
    assert_eq!(Target::persons(&m).len(), 2);
    assert!(Target::persons(&m).iter().all(|p| p.is_identified));
    // A duplicate uuid is ignored; the uuid of a dropped event is not.
    m.send(&json!({"event": "$identify", "distinct_id": "x", "uuid": "e6", "properties": {"$process_person_profile": false}}));
    m.send(&json!({"event": "$pageview", "distinct_id": "x", "uuid": "e6"}));
    m.send(&json!({"event": "$pageview", "distinct_id": "y", "uuid": "e6"}));
    assert!(m.ids.contains_key("x") && !m.ids.contains_key("y"));
}

#[test]
fn the_generator_reaches_every_branch_of_the_rules() {
    let mut runner = TestRunner::deterministic();
    let strategy = ops(60);
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        let ops = strategy.new_tree(&mut runner).expect("a stream").current();
        let mut m = Model::new(Some(2));
        run(&mut m, &ops);
        for (k, v) in m
            .stats
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .chain(m.warnings.clone())
        {
            *totals.entry(k).or_default() += v;
        }
        *totals.entry("restarts".into()).or_default() +=
            ops.iter().filter(|o| matches!(o, Op::Restart)).count();
    }
    for branch in [
        "attached",
        "created identified",
        "merged",
        "merged dangerously",
        "already together",
        "refused: identified",
        "refused: limit",
        "illegal merge",
        "merge with itself",
        "duplicate ignored",
        "dropped",
        "personless",
        "restarts",
        "distinct_id_truncated",
        "invalid_process_person_profile",
    ] {
        assert!(
            totals.get(branch).copied().unwrap_or(0) >= 5,
            "{branch} is rarely reached: {totals:?}"
        );
    }
    eprintln!("branches reached in 200 streams: {totals:?}");
}
