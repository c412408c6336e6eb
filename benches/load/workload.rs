//! The workload: simulated users of a web shop, turned into capture requests, together with the
//! persons the daemon must end up with (spec identity.md §1-§5).
//!
//! Every user lives on one connection and its events are sent in order; users never share a
//! distinct ID, so the final state does not depend on how connections interleave. What a user
//! does (each step optional, shares set by [`Knobs`]):
//!
//! 1. browses anonymously under a posthog-js anonymous ID, personless
//!    (`$process_person_profile: false`);
//! 2. (merge) is already known to the backend as a CRM customer `cust-…`: posthog-python events
//!    with `$set` create an unidentified person for that ID;
//! 3. signs up: `$identify` with `$anon_distinct_id` and `$set`/`$set_once` → one person
//!    `[user, anon]`, identified. An *illegal* sign-up sends an illegal `$anon_distinct_id`
//!    instead (`null`, `"GUEST"`, `"'undefined'"`, whitespace only, …): warning, no merge,
//!    person `[user]`, not identified (until a later merge or attach of a legal ID marks it
//!    identified). A *look-alike* sign-up sends a legal ID that resembles an illegal one
//!    (`"Null"`, `" guest"`, `"00"`, 400 code points, …): it merges like any other;
//! 4. browses as the user (person processing on) and is seen by the backend (`$lib:
//!    posthog-python`, `$set` of an order count);
//! 5. (update) `$set` of a plan with a trial, later `$set` of another plan with `$unset` of the
//!    trial; (duplicate) the stale first `$set` is delivered again with the same uuid and must be
//!    ignored; (set ops) `$set` and `$unset` of one key in one event, `$set` against `$set_once`
//!    of one key, top-level against `properties.$set`;
//! 6. (merge) `$create_alias` of `cust-…`: the customer person merges into the user's;
//! 7. (alias) `$create_alias` of a new account ID: attached;
//! 8. (work account) a second identified person `work-…` on a third device; then (already
//!    identified) `$identify` or `$create_alias` of it into the user: refused with a warning,
//!    the user still gets the `$set`; and/or (dangerously) `$merge_dangerously`: merged;
//! 9. (second device) browses under a second anonymous ID, then `$identify` again: the second
//!    anonymous ID is attached; (device merge) the second device browses with person
//!    processing on and `$set`s properties first, so the `$identify` merges two persons.
//!
//! The persons, personless IDs, warnings and merge counts are not written by hand: every event
//! (not its duplicate deliveries) also goes, in sending order, through [`World`], a model of the
//! spec's rules (normalising, auto-promoted properties, merge and refusal rules, illegal IDs,
//! property precedence), independent of the daemon's code.
//!
//! Users who never sign up stay personless: they have no person at all. Any event may also be
//! re-delivered right after it was sent (`resend_rate`), as SDKs do on retry. Browser events
//! carry 40 properties (about 1.2 KB), backend events about 0.4 KB; the mix averages about 1 KB.

use serde_json::{json, Map, Value};

/// SplitMix64: a small, fast, seedable generator (the workload must not depend on a crate's
/// algorithm changing between versions).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }

    /// A count of at least 1 with the given mean (geometric), capped at ten times the mean.
    pub fn count(&mut self, mean: f64) -> u32 {
        if mean <= 1.0 {
            return 1;
        }
        let cap = (mean * 10.0) as u32;
        let mut k = 1;
        while k < cap && !self.chance(1.0 / mean) {
            k += 1;
        }
        k
    }

    /// A random UUIDv4, as event uuids are.
    pub fn uuid4(&mut self) -> String {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        b[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(b).into_uuid().to_string()
    }

    /// A UUIDv7-shaped ID at time `ms`, as posthog-js makes anonymous, session and window IDs.
    pub fn uuid7(&mut self, ms: u64) -> String {
        let mut b = [0u8; 10];
        b[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        b[8..].copy_from_slice(&self.next_u64().to_le_bytes()[..2]);
        uuid::Builder::from_unix_timestamp_millis(ms, &b)
            .into_uuid()
            .to_string()
    }
}

/// The workload mix. Shares are probabilities per user (the sign-up sub-shares apply to users
/// who sign up); means are average event counts.
#[derive(clap::Args, Clone, Debug, serde::Serialize)]
pub struct Knobs {
    /// Share of users who sign up (the rest stay anonymous and personless).
    #[arg(long, default_value_t = 0.4)]
    pub signup_share: f64,
    /// Share of signing-up users whose `$identify` carries an illegal `$anon_distinct_id`
    /// (`null`, `"GUEST"`, `"'undefined'"`, whitespace only, … spec §4).
    #[arg(long, default_value_t = 0.02)]
    pub illegal_share: f64,
    /// Share of signing-up users whose `$anon_distinct_id` is a legal look-alike of an illegal
    /// ID (`"Null"`, `" guest"`, `"00"`, 400 code points, …), which must merge. Each look-alike
    /// is used once per run.
    #[arg(long, default_value_t = 0.01)]
    pub lookalike_share: f64,
    /// Share of signed-up users who come back on a second device and identify again.
    #[arg(long, default_value_t = 0.3)]
    pub second_device_share: f64,
    /// Share of signed-up users whose second device browses with person processing on before
    /// identifying: a merge of two persons (the user's survives and wins conflicts).
    #[arg(long, default_value_t = 0.05)]
    pub device_merge_share: f64,
    /// Share of signed-up users with a work account identified on its own laptop, who then
    /// `$identify` or `$create_alias` it into their own: refused (already identified).
    #[arg(long, default_value_t = 0.03)]
    pub already_identified_share: f64,
    /// Share of signed-up users with a work account (as above) merged into their own with
    /// `$merge_dangerously`.
    #[arg(long, default_value_t = 0.02)]
    pub merge_dangerously_share: f64,
    /// Share of signed-up users sent `$set` and `$unset` of one key in one event, and `$set`
    /// against `$set_once` of one key (spec §5).
    #[arg(long, default_value_t = 0.05)]
    pub set_ops_share: f64,
    /// Share of signed-up users given an account alias (`$create_alias`).
    #[arg(long, default_value_t = 0.2)]
    pub alias_share: f64,
    /// Share of signed-up users first known to the backend as a CRM customer, merged by alias.
    #[arg(long, default_value_t = 0.1)]
    pub merge_share: f64,
    /// Share of signed-up users whose plan is `$set` and later changed with `$unset`.
    #[arg(long, default_value_t = 0.5)]
    pub update_share: f64,
    /// Share of updated users whose stale plan `$set` is delivered again (must be ignored).
    #[arg(long, default_value_t = 0.2)]
    pub duplicate_share: f64,
    /// Probability that any event is delivered a second time right after it was sent.
    #[arg(long, default_value_t = 0.005)]
    pub resend_rate: f64,
    /// Mean number of anonymous browser events per device.
    #[arg(long, default_value_t = 4.0)]
    pub anon_events: f64,
    /// Mean number of browser events after identifying, per device.
    #[arg(long, default_value_t = 6.0)]
    pub user_events: f64,
    /// Mean number of backend (posthog-python) events per signed-up user.
    #[arg(long, default_value_t = 3.0)]
    pub backend_events: f64,
    /// Users active at once on one connection (their events interleave).
    #[arg(long, default_value_t = 64)]
    pub active_users: usize,
}

/// A person the workload must produce, as the spec determines it.
#[derive(Clone, Debug)]
pub struct ExpectedPerson {
    /// The distinct ID the person was created for (its uuid is UUIDv5 of
    /// `"<project id>:<user_id>"`, spec §6).
    pub user_id: String,
    /// Exactly these distinct IDs, in this order.
    pub distinct_ids: Vec<String>,
    /// `is_identified`.
    pub identified: bool,
    /// Exactly these properties: explicit `$set`/`$set_once`, the auto-promoted ones and their
    /// `$initial_` names (spec §1.6), `$creator_event_uuid`. Any other key is a mismatch.
    pub properties: Map<String, Value>,
    /// `created_at`, in milliseconds since the epoch (the creating event's timestamp; the
    /// earlier of the two after a merge).
    pub created_at_ms: i64,
}

/// An ingestion warning the workload must cause (spec §8): its type and the details compared.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExpectedWarning {
    /// `cannot_merge_with_illegal_distinct_id`, `cannot_merge_already_identified`, …
    pub kind: String,
    /// The details' fields, by name (all strings).
    pub details: Vec<(String, String)>,
}

/// What the spec says the daemon counts, besides events.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcomes {
    /// Two persons merged into one (spec §4 step 5, "different persons", not refused).
    pub merges: u64,
    /// Merges refused because one side was an illegal distinct ID.
    pub refused_illegal: u64,
    /// Merges refused because the other person was already identified.
    pub refused_identified: u64,
}

impl Outcomes {
    fn add(&mut self, o: &Outcomes) {
        self.merges += o.merges;
        self.refused_illegal += o.refused_illegal;
        self.refused_identified += o.refused_identified;
    }
}

/// One capture request: its body and what it holds.
#[derive(Debug)]
pub struct Request {
    /// The JSON body of `POST /batch/`.
    pub body: Vec<u8>,
    /// Events in it (duplicates included).
    pub events: u32,
    /// A short description for error reports: the first event's name, distinct ID and uuid.
    pub first: String,
}

/// Everything one connection sends, and what its users must leave behind.
#[derive(Debug, Default)]
pub struct ConnPlan {
    /// The requests, in sending order.
    pub requests: Vec<Request>,
    /// Persons its users must have produced.
    pub persons: Vec<ExpectedPerson>,
    /// Distinct IDs its users sent events under that must have no person.
    pub personless_ids: Vec<String>,
    /// Events in all requests.
    pub events: u64,
    /// Deliveries of an already-sent uuid.
    pub duplicates: u64,
    /// The ingestion warnings its users must cause.
    pub warnings: Vec<ExpectedWarning>,
    /// Merges and refusals its users must cause.
    pub outcomes: Outcomes,
    /// Users simulated.
    pub users: u64,
    /// Bytes of the events in all request bodies (without the batch envelope).
    pub event_bytes: u64,
    /// The first events, serialised one by one (the raw baseline writes records like them).
    pub samples: Vec<Vec<u8>>,
}

/// How many events the baseline's sample of serialised events holds per connection.
const SAMPLES_PER_CONN: usize = 256;

/// Generate connection `conn`'s plan: users until `events` events, in batches of `batch`.
pub fn generate_conn(
    seed: u64,
    conn: usize,
    conns: usize,
    events: u64,
    batch: usize,
    token: &str,
    knobs: &Knobs,
) -> ConnPlan {
    let mut rng = Rng::new(
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
            .wrapping_add(conn as u64 + 1),
    );
    let mut plan = ConnPlan::default();
    let mut active: Vec<std::collections::VecDeque<Value>> = Vec::new();
    let mut next_user = 0u64;
    let mut scheduled = 0u64;
    let mut batcher = Batcher::new(token, batch);
    let mut lookalikes = Lookalikes {
        next: conn,
        step: conns.max(1),
    };
    loop {
        // Keep `active_users` users going while the event budget lasts.
        while active.len() < knobs.active_users.max(1) && scheduled < events {
            let user = script_user(&mut rng, knobs, token, conn, next_user, &mut lookalikes);
            next_user += 1;
            scheduled += user.events.len() as u64;
            plan.duplicates += user.duplicates;
            plan.warnings.extend(user.warnings);
            plan.outcomes.add(&user.outcomes);
            plan.personless_ids.extend(user.personless_ids);
            plan.persons.extend(user.persons);
            active.push(user.events.into());
        }
        if active.is_empty() {
            break;
        }
        let i = rng.below(active.len() as u64) as usize;
        match active[i].pop_front() {
            Some(ev) => batcher.add(&ev, &mut plan),
            None => {
                active.swap_remove(i);
            }
        }
    }
    batcher.flush(&mut plan);
    plan.users = next_user;
    plan
}

/// The `sent_at` a request body is built with, until [`stamp_sent_at`] sets the time it is
/// sent: as wide as any time written as the SDKs write it.
const SENT_AT_UNSET: &[u8] = b"2026-01-01T00:00:00.000Z";

/// Sets a request body's `sent_at` (its last value) to `now`, as an SDK does when it sends the
/// request. The daemon corrects event times by the client's clock skew, `sent_at` against the
/// arrival, as PostHog does: a body that carried the time it was built at, or a fixed one,
/// would have every event's time moved by that much.
pub fn stamp_sent_at(body: &mut [u8], now: chrono::DateTime<chrono::Utc>) {
    let stamp = now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let end = body.len() - 2; // `"}`
    assert!(
        stamp.len() == SENT_AT_UNSET.len() && body[..end].ends_with(SENT_AT_UNSET),
        "a body ends with its sent_at"
    );
    body[end - stamp.len()..end].copy_from_slice(stamp.as_bytes());
}

/// Builds request bodies `{"api_key": …, "batch": [event, …], "sent_at": …}` one event at a
/// time (as posthog-python and posthog-node send them).
struct Batcher {
    head: Vec<u8>,
    size: usize,
    body: Vec<u8>,
    events: u32,
    first: String,
}

impl Batcher {
    fn new(token: &str, size: usize) -> Batcher {
        let mut head = b"{\"api_key\":".to_vec();
        head.extend_from_slice(Value::from(token).to_string().as_bytes());
        head.extend_from_slice(b",\"batch\":[");
        Batcher {
            head,
            size: size.max(1),
            body: Vec::new(),
            events: 0,
            first: String::new(),
        }
    }

    /// Append one event; a full batch becomes the plan's next request.
    fn add(&mut self, ev: &Value, plan: &mut ConnPlan) {
        if self.events == 0 {
            self.body = Vec::with_capacity(self.size * 1_400 + 128);
            self.body.extend_from_slice(&self.head);
            let did = ev
                .get("distinct_id")
                .or_else(|| ev["properties"].get("distinct_id"));
            self.first = format!(
                "{} by {} (uuid {})",
                ev["event"],
                did.unwrap_or(&Value::Null),
                ev["uuid"]
            );
        } else {
            self.body.push(b',');
        }
        let at = self.body.len();
        serde_json::to_writer(&mut self.body, ev).expect("a Value serialises");
        plan.event_bytes += (self.body.len() - at) as u64;
        if plan.samples.len() < SAMPLES_PER_CONN {
            plan.samples.push(self.body[at..].to_vec());
        }
        self.events += 1;
        plan.events += 1;
        if self.events as usize == self.size {
            self.flush(plan);
        }
    }

    /// Close the current body, if it holds any event, into a request.
    fn flush(&mut self, plan: &mut ConnPlan) {
        if self.events == 0 {
            return;
        }
        self.body.extend_from_slice(b"],\"sent_at\":\"");
        self.body.extend_from_slice(SENT_AT_UNSET);
        self.body.extend_from_slice(b"\"}");
        plan.requests.push(Request {
            body: std::mem::take(&mut self.body),
            events: self.events,
            first: std::mem::take(&mut self.first),
        });
        self.events = 0;
    }
}

/// One simulated user: its events in order and what they must produce.
struct UserScript {
    events: Vec<Value>,
    persons: Vec<ExpectedPerson>,
    personless_ids: Vec<String>,
    duplicates: u64,
    warnings: Vec<ExpectedWarning>,
    outcomes: Outcomes,
}

/// The keys auto-promoted to person properties (spec §1.6).
const PROMOTED: [&str; 44] = [
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

/// JavaScript's whitespace for `String.prototype.trim` (spec §4: U+0085 is not one).
fn js_whitespace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\u{b}' | '\u{c}' | ' ' | '\u{a0}' | '\u{feff}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\n'
                | '\r'
                | '\u{2028}'
                | '\u{2029}'
    )
}

/// Whether a distinct ID is illegal (spec §4, "Illegal distinct IDs").
pub fn illegal_id(id: &str) -> bool {
    const ANY_CASE: [&str; 10] = [
        "anonymous",
        "guest",
        "distinctid",
        "distinct_id",
        "id",
        "not_authenticated",
        "email",
        "undefined",
        "true",
        "false",
    ];
    const EXACT: [&str; 7] = [
        "[object Object]",
        "NaN",
        "None",
        "none",
        "null",
        "0",
        "undefined",
    ];
    // The ID itself and, when wrapped in matching single or double quotes, what is inside.
    fn forms(s: &str) -> impl Iterator<Item = &str> {
        let inner = ['\'', '"'].into_iter().find_map(|q| {
            (s.len() >= 2 && s.starts_with(q) && s.ends_with(q)).then(|| &s[1..s.len() - 1])
        });
        std::iter::once(s).chain(inner)
    }
    if id.chars().count() > 400 || id.trim_matches(js_whitespace).is_empty() {
        return true;
    }
    let lower = id.to_lowercase();
    forms(&lower).any(|f| ANY_CASE.contains(&f)) || forms(id).any(|f| EXACT.contains(&f))
}

/// `String(v)` in JavaScript, for the values the workload sends.
fn js_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// JavaScript truthiness, for `alias` (spec §3).
fn truthy(v: &Value) -> bool {
    match v {
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::Bool(b) => *b,
        Value::Array(_) | Value::Object(_) => true,
        Value::Null => false,
    }
}

/// One event's person property changes after normalising (spec §1.4, §1.6).
struct Changes {
    set: Map<String, Value>,
    set_once: Map<String, Value>,
    unset: Vec<String>,
}

impl Changes {
    fn of(ev: &Value) -> Changes {
        let props = &ev["properties"];
        let object = |v: Option<&Value>| match v {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        // Top-level `$set`/`$set_once` merged into the properties' ones; top level wins.
        let mut set = object(props.get("$set"));
        set.extend(object(ev.get("$set")));
        let mut set_once = object(props.get("$set_once"));
        set_once.extend(object(ev.get("$set_once")));
        let unset = match props.get("$unset") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            Some(Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let name = ev["event"].as_str().unwrap_or_default();
        if name != "$snapshot" && name != "$performance_event" {
            for k in PROMOTED {
                let Some(v) = props.get(k) else { continue };
                if !set.contains_key(k) {
                    set.insert(k.to_string(), v.clone());
                }
                let initial = format!("$initial_{}", k.strip_prefix('$').unwrap_or(k));
                if !set_once.contains_key(&initial) {
                    set_once.insert(initial, v.clone());
                }
            }
        }
        Changes {
            set,
            set_once,
            unset,
        }
    }
}

/// One person as the spec makes it.
#[derive(Clone, Debug)]
struct Model {
    created_for: String,
    ids: Vec<String>,
    identified: bool,
    props: Map<String, Value>,
    created_at_ms: i64,
}

impl Model {
    /// A person created from an event (spec §5, creation): `{...$set_once, ...$set}` and
    /// `$creator_event_uuid`; `$unset` is ignored.
    fn create(ids: Vec<String>, identified: bool, c: &Changes, uuid: &str, at_ms: i64) -> Model {
        let mut props = c.set_once.clone();
        props.extend(c.set.clone());
        if !uuid.is_empty() {
            props.insert("$creator_event_uuid".into(), json!(uuid));
        }
        Model {
            created_for: ids[0].clone(),
            ids,
            identified,
            props,
            created_at_ms: at_ms,
        }
    }

    /// One event's property changes on an existing person (spec §5, update).
    fn update(&mut self, c: &Changes) {
        let to_unset: Vec<&String> = c
            .unset
            .iter()
            .filter(|k| self.props.contains_key(*k))
            .collect();
        let mut to_set = Map::new();
        for (k, v) in &c.set_once {
            if !self.props.contains_key(k) {
                to_set.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in &c.set {
            to_set.insert(k.clone(), v.clone());
        }
        self.props.extend(to_set);
        for k in to_unset {
            self.props.remove(k);
        }
    }

    fn expected(self) -> ExpectedPerson {
        ExpectedPerson {
            user_id: self.created_for,
            distinct_ids: self.ids,
            identified: self.identified,
            properties: self.props,
            created_at_ms: self.created_at_ms,
        }
    }
}

/// The spec's outcome of one user's events (§1-§5), fed the same events the daemon is sent, in
/// the same order. Users never share a distinct ID, so each user's world is independent.
#[derive(Default)]
struct World {
    persons: Vec<Option<Model>>,
    owner: std::collections::HashMap<String, usize>,
    /// Distinct IDs that events were sent under, or that merges named, in order.
    seen: Vec<String>,
    warnings: Vec<ExpectedWarning>,
    outcomes: Outcomes,
}

impl World {
    fn see(&mut self, id: &str) {
        if !self.seen.iter().any(|s| s == id) {
            self.seen.push(id.to_string());
        }
    }

    fn warn(&mut self, kind: &str, details: [(&str, &str); 3]) {
        self.warnings.push(ExpectedWarning {
            kind: kind.into(),
            details: details
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
    }

    fn add(&mut self, m: Model) -> usize {
        let i = self.persons.len();
        for id in &m.ids {
            self.owner.insert(id.clone(), i);
        }
        self.persons.push(Some(m));
        i
    }

    fn person(&mut self, i: usize) -> &mut Model {
        self.persons[i].as_mut().expect("a live person")
    }

    /// Apply one delivered (not duplicate) event.
    fn process(&mut self, ev: &Value) {
        let props = &ev["properties"];
        let did = js_string(
            ev.get("distinct_id")
                .filter(|v| !v.is_null())
                .or_else(|| props.get("distinct_id"))
                .expect("every event has a distinct ID"),
        );
        self.see(&did);
        let name = ev["event"].as_str().unwrap_or_default();
        if props.get("$process_person_profile") == Some(&Value::Bool(false)) {
            // Personless (§2); the workload sends no personless merge events.
            assert!(!matches!(
                name,
                "$identify" | "$create_alias" | "$merge_dangerously" | "$groupidentify"
            ));
            return;
        }
        let uuid = ev["uuid"].as_str().unwrap_or_default();
        let at_ms = ev["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(0, |t| t.timestamp_millis());
        let c = Changes::of(ev);
        let other = match name {
            "$identify" => props.get("$anon_distinct_id").map(js_string),
            "$create_alias" | "$merge_dangerously" => {
                props.get("alias").filter(|v| truthy(v)).map(js_string)
            }
            _ => None,
        };
        match other {
            Some(other) => self.merge(&other, &did, name == "$merge_dangerously", uuid, at_ms, &c),
            None => self.ordinary(&did, uuid, at_ms, &c),
        }
    }

    /// An event that merges nothing: its person is created or updated, not identified.
    fn ordinary(&mut self, did: &str, uuid: &str, at_ms: i64, c: &Changes) {
        match self.owner.get(did).copied() {
            Some(i) => self.person(i).update(c),
            None => {
                self.add(Model::create(vec![did.to_string()], false, c, uuid, at_ms));
            }
        }
    }

    /// `merge(other, into)` (spec §4).
    fn merge(
        &mut self,
        other: &str,
        into: &str,
        dangerously: bool,
        uuid: &str,
        at_ms: i64,
        c: &Changes,
    ) {
        const ILLEGAL: &str = "cannot_merge_with_illegal_distinct_id";
        if other == into {
            return self.ordinary(into, uuid, at_ms, c);
        }
        for (bad, good) in [(into, other), (other, into)] {
            if illegal_id(bad) {
                self.warn(
                    ILLEGAL,
                    [
                        ("illegalDistinctId", bad),
                        ("otherDistinctId", good),
                        ("eventUuid", uuid),
                    ],
                );
                self.outcomes.refused_illegal += 1;
                return self.ordinary(into, uuid, at_ms, c);
            }
        }
        self.see(other);
        let target = match (
            self.owner.get(other).copied(),
            self.owner.get(into).copied(),
        ) {
            (None, None) => {
                let ids = vec![into.to_string(), other.to_string()];
                self.add(Model::create(ids, true, c, uuid, at_ms));
                return;
            }
            (Some(i), None) | (None, Some(i)) => {
                let missing = if self.owner.contains_key(other) {
                    into
                } else {
                    other
                };
                self.person(i).ids.push(missing.to_string());
                self.owner.insert(missing.to_string(), i);
                i
            }
            (Some(o), Some(i)) if o == i => i,
            (Some(o), Some(i)) => {
                if !dangerously && self.person(o).identified {
                    self.warn(
                        "cannot_merge_already_identified",
                        [
                            ("sourcePersonDistinctId", other),
                            ("targetPersonDistinctId", into),
                            ("eventUuid", uuid),
                        ],
                    );
                    self.outcomes.refused_identified += 1;
                } else {
                    let gone = self.persons[o].take().expect("a live person");
                    let survivor = self.person(i);
                    let mut props = gone.props;
                    props.extend(std::mem::take(&mut survivor.props));
                    survivor.props = props;
                    survivor.created_at_ms = survivor.created_at_ms.min(gone.created_at_ms);
                    survivor.ids.extend(gone.ids.iter().cloned());
                    for id in gone.ids {
                        self.owner.insert(id, i);
                    }
                    self.outcomes.merges += 1;
                }
                i
            }
        };
        let p = self.person(target);
        p.update(c);
        p.identified = true;
    }
}

/// Legal distinct IDs that look like illegal ones (spec §4): each must merge like any other.
/// One person may own each, so each is used at most once per run (see [`Lookalikes`]).
const LOOKALIKES: [&str; 24] = [
    "Null",
    "NULL",
    " guest",
    "guest ",
    "\tguest",
    "nan",
    "NAN",
    "NONE",
    "00",
    "-0",
    "0.0",
    " null",
    "null ",
    "'null",
    "null'",
    "'Null'",
    "\"NULL\"",
    "`null`",
    "[object object]",
    "\u{85}",
    "\u{85}guest",
    "guests",
    "'guest\"",
    "e-mail",
];

/// Illegal forms of `$anon_distinct_id` (spec §4): case-insensitive names, quoted forms,
/// whitespace only, the exact list, `null` (sent as JSON null: `String(null)`).
const ILLEGAL_FORMS: [&str; 22] = [
    "null",
    "GUEST",
    "Guest",
    "\"Email\"",
    "'undefined'",
    "Undefined",
    "'GUEST'",
    "DISTINCT_ID",
    "DistinctId",
    "Not_Authenticated",
    "Anonymous",
    "TRUE",
    "\"false\"",
    "   ",
    "\u{a0}\t\u{3000}",
    "\u{2028}\u{feff}",
    "[object Object]",
    "'[object Object]'",
    "NaN",
    "\"None\"",
    "none",
    "'0'",
];

/// Hands out the look-alike IDs so that no two users of a run get the same one: connection `c`
/// of `n` takes the list's entries `c`, `c + n`, `c + 2n`, …, then IDs of exactly 400 code
/// points (the longest legal length), made unique by the user's number.
struct Lookalikes {
    next: usize,
    step: usize,
}

impl Lookalikes {
    fn take(&mut self, conn: usize, k: u64) -> String {
        let id = match LOOKALIKES.get(self.next) {
            Some(id) => id.to_string(),
            None => {
                let mut id = format!("long-{conn}-{k}-");
                let pad = 400 - id.chars().count();
                id.extend(std::iter::repeat_n('é', pad));
                id
            }
        };
        self.next += self.step;
        assert!(!illegal_id(&id), "look-alike {id:?} is illegal");
        id
    }
}

/// One browser install: what posthog-js reports about it.
struct Device {
    anon_id: String,
    os: (&'static str, &'static str),
    browser: (&'static str, u32),
    device_type: &'static str,
    screen: (u32, u32),
    lang: &'static str,
    tz: (&'static str, i32),
    referrer: (&'static str, &'static str),
    session_id: String,
    window_id: String,
    entry_path: &'static str,
}

const OSES: [(&str, &str); 5] = [
    ("Mac OS X", "14.6.1"),
    ("Windows", "10.0"),
    ("Linux", ""),
    ("iOS", "17.5.1"),
    ("Android", "14"),
];
const BROWSERS: [(&str, u32); 4] = [
    ("Chrome", 131),
    ("Firefox", 133),
    ("Safari", 17),
    ("Microsoft Edge", 131),
];
const LANGS: [&str; 4] = ["en-US", "de-DE", "fr-FR", "en-GB"];
const TZS: [(&str, i32); 4] = [
    ("Europe/Berlin", -60),
    ("America/New_York", 300),
    ("Europe/London", 0),
    ("Asia/Tokyo", -540),
];
const REFERRERS: [(&str, &str); 4] = [
    ("$direct", "$direct"),
    ("https://www.google.com/", "www.google.com"),
    ("https://news.ycombinator.com/", "news.ycombinator.com"),
    ("https://duckduckgo.com/", "duckduckgo.com"),
];
/// Pages of the shop: path, title, category, SKU, price.
const PAGES: [(&str, &str, &str, &str, f64); 8] = [
    ("/", "HogShop", "home", "", 0.0),
    ("/p/house", "House | HogShop", "houses", "HH-01", 49.9),
    ("/p/treats", "Treats | HogShop", "food", "FD-07", 8.5),
    ("/p/wheel", "Wheel | HogShop", "toys", "TY-03", 24.0),
    ("/cart", "Cart | HogShop", "checkout", "", 0.0),
    ("/checkout", "Checkout | HogShop", "checkout", "", 0.0),
    ("/blog/winter", "Winter care | HogShop", "blog", "", 0.0),
    ("/account", "Account | HogShop", "account", "", 0.0),
];
const HOST: &str = "hogshop.example";
const PLANS: [&str; 3] = ["starter", "pro", "business"];

impl Device {
    fn new(rng: &mut Rng, at_ms: u64) -> Device {
        let mobile = rng.chance(0.35);
        let os = if mobile {
            OSES[3 + rng.below(2) as usize]
        } else {
            OSES[rng.below(3) as usize]
        };
        Device {
            anon_id: rng.uuid7(at_ms),
            os,
            browser: *rng.pick(&BROWSERS),
            device_type: if mobile { "Mobile" } else { "Desktop" },
            screen: if mobile {
                (390, 844)
            } else {
                *rng.pick(&[(1920, 1080), (2560, 1440), (1440, 900)])
            },
            lang: LANGS[rng.below(LANGS.len() as u64) as usize],
            tz: *rng.pick(&TZS),
            referrer: *rng.pick(&REFERRERS),
            session_id: rng.uuid7(at_ms),
            window_id: rng.uuid7(at_ms),
            entry_path: rng.pick(&PAGES).0,
        }
    }

    fn user_agent(&self) -> String {
        format!(
            "Mozilla/5.0 ({} {}) {}/{}.0",
            self.os.0, self.os.1, self.browser.0, self.browser.1
        )
    }
}

/// An ISO 8601 timestamp with milliseconds, as the SDKs send.
fn iso(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Builds one user's events in order, with the clock moving forward.
struct Scripter<'a> {
    rng: &'a mut Rng,
    knobs: &'a Knobs,
    token: &'a str,
    clock_ms: u64,
    events: Vec<Value>,
    duplicates: u64,
    /// What the events sent so far must have produced.
    world: World,
}

impl Scripter<'_> {
    /// Append an event (and maybe its immediate re-delivery); return its uuid.
    fn push(&mut self, ev: Value) -> String {
        self.world.process(&ev);
        let uuid = ev["uuid"].as_str().unwrap_or_default().to_string();
        let resend = self.rng.chance(self.knobs.resend_rate);
        if resend {
            self.events.push(ev.clone());
            self.duplicates += 1;
        }
        self.events.push(ev);
        uuid
    }

    fn tick(&mut self) -> u64 {
        self.clock_ms += 1_000 + self.rng.below(60_000);
        self.clock_ms
    }

    /// A posthog-js event: 40 properties, about 1.2 KB. `person` turns person processing on.
    fn browser(&mut self, dev: &Device, distinct_id: &str, person: bool, event: &str) -> Value {
        let at = self.tick();
        let (path, title, category, sku, price) = *self.rng.pick(&PAGES);
        let mut p = Map::new();
        let mut put = |k: &str, v: Value| {
            p.insert(k.to_string(), v);
        };
        put("$os", json!(dev.os.0));
        put("$os_version", json!(dev.os.1));
        put("$browser", json!(dev.browser.0));
        put("$browser_version", json!(dev.browser.1));
        put("$device_type", json!(dev.device_type));
        put("$timezone", json!(dev.tz.0));
        put("$timezone_offset", json!(dev.tz.1));
        put("$current_url", json!(format!("https://{HOST}{path}")));
        put("$host", json!(HOST));
        put("$pathname", json!(path));
        put("$raw_user_agent", json!(dev.user_agent()));
        put("$browser_language", json!(dev.lang));
        put("$browser_language_prefix", json!(&dev.lang[..2]));
        put("$screen_height", json!(dev.screen.1));
        put("$screen_width", json!(dev.screen.0));
        put("$viewport_height", json!(dev.screen.1 - 120));
        put("$viewport_width", json!(dev.screen.0));
        put("$lib", json!("web"));
        put("$lib_version", json!("1.200.2"));
        put("$insert_id", json!(format!("{:016x}", self.rng.next_u64())));
        put("$time", json!(at as f64 / 1000.0));
        put("distinct_id", json!(distinct_id));
        put("$device_id", json!(dev.anon_id));
        put(
            "$is_identified",
            json!(person && distinct_id != dev.anon_id),
        );
        put("$process_person_profile", json!(person));
        put("$referrer", json!(dev.referrer.0));
        put("$referring_domain", json!(dev.referrer.1));
        put("$session_id", json!(dev.session_id));
        put("$window_id", json!(dev.window_id));
        put("$pageview_id", json!(self.rng.uuid7(at)));
        put("$session_entry_pathname", json!(dev.entry_path));
        put(
            "$search_engine",
            json!(if dev.referrer.1.contains("google") {
                "google"
            } else {
                ""
            }),
        );
        put("title", json!(title));
        put("token", json!(self.token));
        put("category", json!(category));
        put("sku", json!(sku));
        put("price", json!(price));
        put("currency", json!("EUR"));
        put("in_stock", json!(price > 0.0));
        put("qty", json!(1 + self.rng.below(3)));
        json!({"uuid": self.rng.uuid4(), "event": event, "properties": p, "timestamp": iso(at)})
    }

    /// Anonymous browsing under the device's anonymous ID: personless, or with person
    /// processing on (posthog-js `person_profiles: 'always'`), which creates a person.
    fn browse_anonymously(&mut self, dev: &Device, mean: f64, person: bool) {
        for _ in 0..self.rng.count(mean) {
            let name = *self
                .rng
                .pick(&["$pageview", "$pageview", "$pageleave", "product_viewed"]);
            let ev = self.browser(dev, &dev.anon_id, person, name);
            self.push(ev);
        }
    }

    /// Browsing after identifying: person processing on.
    fn browse_as(&mut self, dev: &Device, user: &str, mean: f64) {
        for _ in 0..self.rng.count(mean) {
            let name = *self.rng.pick(&[
                "$pageview",
                "$pageview",
                "$pageleave",
                "product_viewed",
                "added_to_cart",
            ]);
            let ev = self.browser(dev, user, true, name);
            self.push(ev);
        }
    }

    /// posthog-js `identify(user, $set, $set_once)` from a device whose anonymous ID is `anon`.
    fn identify(
        &mut self,
        dev: &Device,
        user: &str,
        anon: Value,
        set: &Map<String, Value>,
        set_once: &Map<String, Value>,
    ) -> Value {
        let mut ev = self.browser(dev, user, true, "$identify");
        ev["properties"]["$anon_distinct_id"] = anon;
        ev["properties"]["$is_identified"] = json!(false);
        ev["$set"] = Value::Object(set.clone());
        ev["$set_once"] = Value::Object(set_once.clone());
        ev
    }

    /// A posthog-python event (top-level `distinct_id`, `$lib: posthog-python`).
    fn backend(&mut self, distinct_id: &str, event: &str, props: Value) -> Value {
        let at = self.tick();
        let mut p = Map::new();
        p.insert("$lib".into(), json!("posthog-python"));
        p.insert("$lib_version".into(), json!("6.7.6"));
        p.insert("$geoip_disable".into(), json!(true));
        if let Value::Object(extra) = props {
            p.extend(extra);
        }
        json!({
            "uuid": self.rng.uuid4(), "event": event, "distinct_id": distinct_id, "properties": p,
            "timestamp": iso(at), "type": "capture", "library": "posthog-python", "library_version": "6.7.6",
        })
    }

    /// A posthog-python `$set` (top-level `$set` and `$set_once`, `$unset` in properties).
    fn backend_set(
        &mut self,
        distinct_id: &str,
        set: &Map<String, Value>,
        set_once: &Map<String, Value>,
        unset: &[&str],
    ) -> Value {
        let props = if unset.is_empty() {
            json!({})
        } else {
            json!({"$unset": unset})
        };
        let mut ev = self.backend(distinct_id, "$set", props);
        ev["$set"] = Value::Object(set.clone());
        if !set_once.is_empty() {
            ev["$set_once"] = Value::Object(set_once.clone());
        }
        ev
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Script user `k` of connection `conn`: its events, and (from the spec model fed the same
/// events) its persons, personless IDs and warnings.
fn script_user(
    rng: &mut Rng,
    knobs: &Knobs,
    token: &str,
    conn: usize,
    k: u64,
    lookalikes: &mut Lookalikes,
) -> UserScript {
    let start = 1_767_225_600_000 + rng.below(30 * 24 * 3_600_000); // January 2026
    let dev1 = Device::new(rng, start);
    let signs_up = rng.chance(knobs.signup_share);
    let mut s = Scripter {
        rng,
        knobs,
        token,
        clock_ms: start,
        events: Vec::new(),
        duplicates: 0,
        world: World::default(),
    };
    s.browse_anonymously(&dev1, knobs.anon_events, false);
    let mut extra_personless = Vec::new();
    if signs_up {
        script_signed_up(&mut s, conn, k, &dev1, lookalikes, &mut extra_personless);
    }
    let Scripter {
        events,
        duplicates,
        world,
        ..
    } = s;
    let persons: Vec<ExpectedPerson> = world
        .persons
        .into_iter()
        .flatten()
        .map(Model::expected)
        .collect();
    let mut personless_ids: Vec<String> = world
        .seen
        .into_iter()
        .filter(|id| !world.owner.contains_key(id))
        .collect();
    personless_ids.extend(extra_personless);
    UserScript {
        events,
        persons,
        personless_ids,
        duplicates,
        warnings: world.warnings,
        outcomes: world.outcomes,
    }
}

/// The steps of a user who signs up (see the module's documentation).
fn script_signed_up(
    s: &mut Scripter<'_>,
    conn: usize,
    k: u64,
    dev1: &Device,
    lookalikes: &mut Lookalikes,
    personless: &mut Vec<String>,
) {
    let knobs = s.knobs;
    let user = format!("user-{conn}-{k}@hedgehogmail.example");
    let illegal = s.rng.chance(knobs.illegal_share);
    let lookalike = !illegal && s.rng.chance(knobs.lookalike_share);
    let merge = s.rng.chance(knobs.merge_share);
    let alias = s.rng.chance(knobs.alias_share);
    let second_device = s.rng.chance(knobs.second_device_share);
    let device_merge = s.rng.chance(knobs.device_merge_share);
    let update = s.rng.chance(knobs.update_share);
    let duplicate = update && s.rng.chance(knobs.duplicate_share);
    let set_ops = s.rng.chance(knobs.set_ops_share);
    let refused = s.rng.chance(knobs.already_identified_share);
    let dangerously = s.rng.chance(knobs.merge_dangerously_share);

    // The backend knew this customer before sign-up: an unidentified person `[cust]`.
    let cust = format!("cust-{conn}-{k}");
    if merge {
        let set = obj(
            json!({"crm_id": format!("C{conn:02}{k:07}"), "company": "Acme Hedgehogs", "email": format!("legacy-{conn}-{k}@acme.example")}),
        );
        let ev = s.backend_set(&cust, &set, &Map::new(), &[]);
        s.push(ev);
        let ev = s.backend(
            &cust,
            "invoice_paid",
            json!({"amount": 49.0, "currency": "EUR"}),
        );
        s.push(ev);
    }

    // Sign-up: `$identify` from the first device. An illegal `$anon_distinct_id` is refused
    // with a warning (the person is `[user]`, not identified, the anonymous ID stays
    // personless); a legal look-alike merges like any ID.
    let set = obj(json!({"email": user, "name": format!("Hedgehog Fan {conn}-{k}")}));
    let set_once = obj(json!({"signup_source": "web", "signup_plan": "free"}));
    let anon = if illegal {
        match *s.rng.pick(&ILLEGAL_FORMS) {
            "null" => Value::Null,
            form => {
                assert!(illegal_id(form), "{form:?} is legal");
                json!(form)
            }
        }
    } else if lookalike {
        json!(lookalikes.take(conn, k))
    } else {
        json!(dev1.anon_id)
    };
    let ev = s.identify(dev1, &user, anon, &set, &set_once);
    s.push(ev);

    s.browse_as(dev1, &user, knobs.user_events);
    let orders = s.rng.count(knobs.backend_events);
    for n in 1..=orders {
        let ev = s.backend(&user, "order_completed", json!({"order_id": format!("O{conn}-{k}-{n}"), "revenue": 12.5 * n as f64, "currency": "EUR"}));
        s.push(ev);
    }
    let set = obj(json!({"lifetime_orders": orders}));
    let ev = s.backend_set(&user, &set, &Map::new(), &[]);
    s.push(ev);

    if update {
        let set = obj(json!({"plan": "free", "trial_ends": "2026-02-15"}));
        let set_once = obj(json!({"first_plan": "free"}));
        let stale = s.backend_set(&user, &set, &set_once, &[]);
        s.push(stale.clone());
        let plan = *s.rng.pick(&PLANS);
        let set = obj(json!({"plan": plan}));
        let set_once = obj(json!({"first_plan": plan}));
        let ev = s.backend_set(&user, &set, &set_once, &["trial_ends"]);
        s.push(ev);
        if duplicate {
            // The same uuid again: acknowledged, not applied (else `plan` and `trial_ends` revert).
            s.events.push(stale);
            s.duplicates += 1;
        }
    }

    if set_ops {
        // Spec §5 in one event: `$set` and `$unset` of a key the person lacks: it takes the
        // value; of a key it has: it disappears. `$set` beats `$set_once` on one key.
        let set = obj(json!({"coupon": "WELCOME10", "promo": "WINTER"}));
        let ev = s.backend_set(&user, &set, &Map::new(), &["coupon"]);
        s.push(ev);
        let set = obj(json!({"promo": "SPRING", "tier": "gold"}));
        let ev = s.backend_set(&user, &set, &obj(json!({"tier": "silver"})), &["promo"]);
        s.push(ev);
        // `$set_once` of a present key changes nothing; top-level `$set` beats the properties'
        // `$set` on one key (spec §1.4).
        let mut ev = s.backend_set(
            &user,
            &obj(json!({"channel": "top"})),
            &obj(json!({"tier": "bronze", "first_channel": "email"})),
            &[],
        );
        ev["properties"]["$set"] = json!({"channel": "properties", "locale": "de"});
        s.push(ev);
    }

    if merge {
        // posthog-python `alias(user, cust)`: both have persons, `cust`'s is not identified: merge.
        let ev = s.backend(
            &user,
            "$create_alias",
            json!({"distinct_id": user, "alias": cust}),
        );
        s.push(ev);
    }

    if alias {
        let account = format!("acct-{conn}-{k}");
        let ev = s.backend(
            &user,
            "$create_alias",
            json!({"distinct_id": user, "alias": account}),
        );
        s.push(ev);
    }

    if refused || dangerously {
        // A work account, identified on its own laptop: a second identified person.
        let work = format!("work-{conn}-{k}@acme.example");
        let dev3 = Device::new(s.rng, s.clock_ms);
        s.browse_anonymously(&dev3, knobs.anon_events / 2.0, false);
        let set = obj(
            json!({"email": work, "name": format!("Hedgehog Fan {conn}-{k} (work)"), "company": "Acme Hedgehogs"}),
        );
        let ev = s.identify(&dev3, &work, json!(dev3.anon_id), &set, &Map::new());
        s.push(ev);
        s.browse_as(&dev3, &work, knobs.user_events / 3.0);
        if refused {
            // Merging an identified person by `$identify` or `$create_alias` is refused
            // (spec §4 step 5): warning, no merge; the user's person still gets the `$set`.
            let ev = if s.rng.chance(0.5) {
                let set = obj(json!({"last_login_from": "work laptop"}));
                s.identify(&dev3, &user, json!(work), &set, &Map::new())
            } else {
                let mut ev = s.backend(
                    &user,
                    "$create_alias",
                    json!({"distinct_id": user, "alias": work}),
                );
                ev["$set"] = json!({"last_login_from": "backend"});
                ev
            };
            s.push(ev);
        }
        if dangerously {
            // `$merge_dangerously` merges even an identified person: the user's survives.
            let mut ev = s.backend(
                &user,
                "$merge_dangerously",
                json!({"distinct_id": user, "alias": work}),
            );
            ev["$set"] = json!({"accounts_merged": true});
            s.push(ev);
        }
    }

    if second_device || device_merge {
        // The second device browses anonymously (personless, or with person processing on:
        // then it has a person of its own, which the `$identify` merges into the user's),
        // then identifies: the second anonymous ID joins the user's person.
        let dev2 = Device::new(s.rng, s.clock_ms);
        s.browse_anonymously(&dev2, knobs.anon_events, device_merge);
        if device_merge {
            // posthog-js `setPersonProperties` before sign-in: `name` conflicts with the
            // user's (the survivor wins), `theme` is new (it carries over).
            let mut ev = s.browser(&dev2, &dev2.anon_id, true, "$set");
            ev["$set"] = json!({"theme": "dark", "name": "Guest Visitor"});
            ev["$set_once"] = json!({"first_theme": "dark"});
            s.push(ev);
        }
        let set = obj(json!({"last_device": dev2.device_type}));
        let ev = s.identify(&dev2, &user, json!(dev2.anon_id), &set, &Map::new());
        s.push(ev);
        s.browse_as(&dev2, &user, knobs.user_events / 2.0);
    }

    if illegal {
        // The illegal ID itself must have no person.
        if let Some(id) = s.world.warnings.first().and_then(|w| {
            w.details
                .iter()
                .find(|(k, _)| k == "illegalDistinctId")
                .map(|(_, v)| v.clone())
        }) {
            if !id.is_empty() {
                personless.push(id);
            }
        }
    }
}
