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
//!    `[user, anon]`, identified. An *illegal* sign-up sends `$anon_distinct_id: "null"` instead:
//!    warning, no merge, person `[user]`, not identified (until a later merge or attach of a
//!    legal ID in steps 6-8 marks it identified);
//! 4. browses as the user (person processing on) and is seen by the backend (`$lib:
//!    posthog-python`, `$set` of an order count);
//! 5. (update) `$set` of a plan with a trial, later `$set` of another plan with `$unset` of the
//!    trial; (duplicate) the stale first `$set` is delivered again with the same uuid and must be
//!    ignored;
//! 6. (merge) `$create_alias` of `cust-…`: the customer person merges into the user's;
//! 7. (alias) `$create_alias` of a new account ID: attached;
//! 8. (second device) browses personless under a second anonymous ID, then `$identify` again:
//!    the second anonymous ID is attached.
//!
//! Users who never sign up stay personless: they have no person at all. Any event may also be
//! re-delivered right after it was sent (`resend_rate`), as SDKs do on retry. Browser events
//! carry 40 properties (about 1.2 KB), backend events about 0.4 KB; the mix averages about 1 KB.

use std::collections::{BTreeMap, BTreeSet};

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
    /// Share of signing-up users whose `$identify` carries the illegal `$anon_distinct_id: "null"`.
    #[arg(long, default_value_t = 0.02)]
    pub illegal_share: f64,
    /// Share of signed-up users who come back on a second device and identify again.
    #[arg(long, default_value_t = 0.3)]
    pub second_device_share: f64,
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
    /// The user's own distinct ID (the person's uuid is UUIDv5 of `"<project id>:<user_id>"`).
    pub user_id: String,
    /// Exactly these distinct IDs, in this order.
    pub distinct_ids: Vec<String>,
    /// `is_identified`.
    pub identified: bool,
    /// Explicitly `$set` properties: each key with its value, or `None` when it must be absent.
    pub props: Vec<(String, Option<Value>)>,
    /// `$creator_event_uuid`: the uuid of the event that created the person.
    pub creator_event_uuid: String,
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
    /// Sign-ups with the illegal `$anon_distinct_id: "null"`.
    pub illegal_identifies: u64,
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
    loop {
        // Keep `active_users` users going while the event budget lasts.
        while active.len() < knobs.active_users.max(1) && scheduled < events {
            let user = script_user(&mut rng, knobs, token, conn, next_user);
            next_user += 1;
            scheduled += user.events.len() as u64;
            plan.duplicates += user.duplicates;
            plan.illegal_identifies += u64::from(user.illegal);
            plan.personless_ids.extend(user.personless_ids);
            plan.persons.extend(user.person);
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
        self.body
            .extend_from_slice(b"],\"sent_at\":\"2026-01-01T00:00:00.000Z\"}");
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
    person: Option<ExpectedPerson>,
    personless_ids: Vec<String>,
    duplicates: u64,
    illegal: bool,
}

/// The spec's outcome for one person, tracked while scripting (explicit properties only: the
/// auto-promoted browser properties are not checked).
#[derive(Default)]
struct Model {
    ids: Vec<String>,
    identified: bool,
    props: BTreeMap<String, Value>,
    mentioned: BTreeSet<String>,
    creator: String,
}

impl Model {
    /// A person created from an event (spec §5, creation): `{...$set_once, ...$set}`.
    fn create(
        ids: Vec<String>,
        identified: bool,
        set_once: &Map<String, Value>,
        set: &Map<String, Value>,
        creator: &str,
    ) -> Model {
        let mut m = Model {
            ids,
            identified,
            creator: creator.to_string(),
            ..Model::default()
        };
        for (k, v) in set_once.iter().chain(set) {
            m.props.insert(k.clone(), v.clone());
            m.mentioned.insert(k.clone());
        }
        m
    }

    /// One event's property changes on an existing person (spec §5, update).
    fn update(&mut self, set_once: &Map<String, Value>, set: &Map<String, Value>, unset: &[&str]) {
        let to_unset: Vec<String> = unset
            .iter()
            .filter(|k| self.props.contains_key(**k))
            .map(|k| k.to_string())
            .collect();
        for (k, v) in set_once {
            self.mentioned.insert(k.clone());
            self.props.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for (k, v) in set {
            self.mentioned.insert(k.clone());
            self.props.insert(k.clone(), v.clone());
        }
        for k in unset {
            self.mentioned.insert(k.to_string());
        }
        for k in to_unset {
            self.props.remove(&k);
        }
    }

    /// Merge `other` into this person (spec §4 step 5): the survivor wins conflicts.
    fn absorb(&mut self, other: Model) {
        for (k, v) in other.props {
            self.props.entry(k).or_insert(v);
        }
        self.mentioned.extend(other.mentioned);
        self.ids.extend(other.ids);
        self.identified = true;
    }

    fn expected(self, user_id: String) -> ExpectedPerson {
        let props = self
            .mentioned
            .iter()
            .map(|k| (k.clone(), self.props.get(k).cloned()))
            .collect();
        ExpectedPerson {
            user_id,
            distinct_ids: self.ids,
            identified: self.identified,
            props,
            creator_event_uuid: self.creator,
        }
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
}

impl Scripter<'_> {
    /// Append an event (and maybe its immediate re-delivery); return its uuid.
    fn push(&mut self, ev: Value) -> String {
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
        put("$is_identified", json!(person));
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

    /// Anonymous, personless browsing under the device's anonymous ID.
    fn browse_anonymously(&mut self, dev: &Device, mean: f64) {
        for _ in 0..self.rng.count(mean) {
            let name = *self
                .rng
                .pick(&["$pageview", "$pageview", "$pageleave", "product_viewed"]);
            let ev = self.browser(dev, &dev.anon_id, false, name);
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
        anon: &str,
        set: &Map<String, Value>,
        set_once: &Map<String, Value>,
    ) -> Value {
        let mut ev = self.browser(dev, user, true, "$identify");
        ev["properties"]["$anon_distinct_id"] = json!(anon);
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

/// Script user `k` of connection `conn`: its events and its expected person.
fn script_user(rng: &mut Rng, knobs: &Knobs, token: &str, conn: usize, k: u64) -> UserScript {
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
    };
    s.browse_anonymously(&dev1, knobs.anon_events);
    if !signs_up {
        let events = s.events;
        return UserScript {
            events,
            person: None,
            personless_ids: vec![dev1.anon_id],
            duplicates: s.duplicates,
            illegal: false,
        };
    }

    let user = format!("user-{conn}-{k}@hedgehogmail.example");
    let illegal = s.rng.chance(knobs.illegal_share);
    let merge = s.rng.chance(knobs.merge_share);
    let alias = s.rng.chance(knobs.alias_share);
    let second_device = s.rng.chance(knobs.second_device_share);
    let update = s.rng.chance(knobs.update_share);
    let duplicate = update && s.rng.chance(knobs.duplicate_share);
    let mut personless = Vec::new();

    // The backend knew this customer before sign-up: an unidentified person `[cust]`.
    let cust = format!("cust-{conn}-{k}");
    let mut cust_person = None;
    if merge {
        let set = obj(
            json!({"crm_id": format!("C{conn:02}{k:07}"), "company": "Acme Hedgehogs", "email": format!("legacy-{conn}-{k}@acme.example")}),
        );
        let ev = s.backend_set(&cust, &set, &Map::new(), &[]);
        let creator = s.push(ev);
        cust_person = Some(Model::create(
            vec![cust.clone()],
            false,
            &Map::new(),
            &set,
            &creator,
        ));
        let ev = s.backend(
            &cust,
            "invoice_paid",
            json!({"amount": 49.0, "currency": "EUR"}),
        );
        s.push(ev);
    }

    // Sign-up.
    let set = obj(json!({"email": user, "name": format!("Hedgehog Fan {conn}-{k}")}));
    let set_once = obj(json!({"signup_source": "web", "signup_plan": "free"}));
    let anon = if illegal {
        "null".to_string()
    } else {
        dev1.anon_id.clone()
    };
    let ev = s.identify(&dev1, &user, &anon, &set, &set_once);
    let creator = s.push(ev);
    let mut person = if illegal {
        // Warning, no merge: the person of `user` alone, not identified; the anonymous ID stays
        // personless.
        personless.push(dev1.anon_id.clone());
        Model::create(vec![user.clone()], false, &set_once, &set, &creator)
    } else {
        Model::create(
            vec![user.clone(), dev1.anon_id.clone()],
            true,
            &set_once,
            &set,
            &creator,
        )
    };

    s.browse_as(&dev1, &user, knobs.user_events);
    let orders = s.rng.count(knobs.backend_events);
    for n in 1..=orders {
        let ev = s.backend(&user, "order_completed", json!({"order_id": format!("O{conn}-{k}-{n}"), "revenue": 12.5 * n as f64, "currency": "EUR"}));
        s.push(ev);
    }
    let set = obj(json!({"lifetime_orders": orders}));
    let ev = s.backend_set(&user, &set, &Map::new(), &[]);
    s.push(ev);
    person.update(&Map::new(), &set, &[]);

    if update {
        let set = obj(json!({"plan": "free", "trial_ends": "2026-02-15"}));
        let set_once = obj(json!({"first_plan": "free"}));
        let stale = s.backend_set(&user, &set, &set_once, &[]);
        s.push(stale.clone());
        person.update(&set_once, &set, &[]);
        let plan = *s.rng.pick(&PLANS);
        let set = obj(json!({"plan": plan}));
        let set_once = obj(json!({"first_plan": plan}));
        let ev = s.backend_set(&user, &set, &set_once, &["trial_ends"]);
        s.push(ev);
        person.update(&set_once, &set, &["trial_ends"]);
        if duplicate {
            // The same uuid again: acknowledged, not applied (else `plan` and `trial_ends` revert).
            s.events.push(stale);
            s.duplicates += 1;
        }
    }

    if let Some(cust_person) = cust_person {
        // posthog-python `alias(user, cust)`: both have persons, `cust`'s is not identified: merge.
        let ev = s.backend(
            &user,
            "$create_alias",
            json!({"distinct_id": user, "alias": cust}),
        );
        s.push(ev);
        person.absorb(cust_person);
    }

    if alias {
        let account = format!("acct-{conn}-{k}");
        let ev = s.backend(
            &user,
            "$create_alias",
            json!({"distinct_id": user, "alias": account}),
        );
        s.push(ev);
        person.ids.push(account);
        person.identified = true;
    }

    if second_device {
        let dev2 = Device::new(s.rng, s.clock_ms);
        s.browse_anonymously(&dev2, knobs.anon_events);
        let set = obj(json!({"last_device": dev2.device_type}));
        let ev = s.identify(&dev2, &user, &dev2.anon_id, &set, &Map::new());
        s.push(ev);
        person.ids.push(dev2.anon_id.clone());
        person.identified = true;
        person.update(&Map::new(), &set, &[]);
        s.browse_as(&dev2, &user, knobs.user_events / 2.0);
    }

    UserScript {
        events: s.events,
        person: Some(person.expected(user)),
        personless_ids: personless,
        duplicates: s.duplicates,
        illegal,
    }
}
