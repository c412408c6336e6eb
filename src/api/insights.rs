//! Insights counted per person after merges: unique persons of an event, and ordered funnels.
//!
//! Both read the `evname` index (event name, time → distinct ID) and map each distinct ID to its
//! *current* person through `dids`, so an anonymous visitor who later identified counts once.
//! A distinct ID without a person (personless events, or a deleted person's events) counts as
//! its own unit, as PostHog counts personless events under their distinct ID.
//!
//! Helpers return `Result<T, HttpResponse>`: the error is the answer to send (see `read.rs`).
#![allow(clippy::result_large_err)]

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::projects::settings_of;
use super::read::{find_project, tri};
use super::{error, json as render, AppState};
use crate::domain::filters::CompiledFilters;
use crate::domain::funnel::{furthest_step, StepEvent, MAX_STEPS};
use crate::domain::{PersonUuid, ProjectId};
use crate::store::{Store, StoreError};

/// Default funnel window: 14 days, as PostHog's.
pub const DEFAULT_FUNNEL_WINDOW_SECS: i64 = 14 * 86_400;

/// Distinct IDs looked up per batched read.
const LOOKUP_CHUNK: usize = 8192;
/// From this many distinct IDs (or persons) on, and a sixteenth of all the stored ones, one
/// sequential read of all the project's beats point reads.
const SCAN_FROM: usize = 20_000;

/// Who an event counts for: its distinct ID's current person, or the distinct ID itself (by
/// its index in the query's list of distinct IDs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Unit {
    Person(PersonUuid),
    DistinctId(u32),
}

/// A fast hash, seeded per query, for the query's in-memory maps: SipHash took a fifth of a
/// query's time, and these maps live only for one query.
#[derive(Clone, Copy)]
struct Fast(u64);

impl Fast {
    fn new() -> Fast {
        Fast(RandomState::new().hash_one(0u8))
    }
}

impl BuildHasher for Fast {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

/// The hasher of [`Fast`] (the multiply-rotate of rustc's FxHash, with a final mix).
struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(c.try_into().map(u64::from_le_bytes).unwrap_or(0));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, w: u64) {
        self.add(w);
    }

    fn write_usize(&mut self, w: usize) {
        self.add(w as u64);
    }

    fn finish(&self) -> u64 {
        let h = self.0 ^ (self.0 >> 33);
        let h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }
}

type FastMap<K, V> = HashMap<K, V, Fast>;
type FastSet<K> = HashSet<K, Fast>;

fn bad(field: &str, reason: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({
        "type": "validation_error", "code": "invalid_input", "detail": format!("{field}: {reason}"), "attr": field,
    }))
}

fn storage(e: StoreError) -> HttpResponse {
    tracing::error!(error = %e, "Insight query failed.");
    error(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", e)
}

/// A date bound: RFC 3339, `YYYY-MM-DD` (the whole day), relative (`-7d`, `-24h`, `-30m`,
/// `-2w`), or `all`/empty for no bound.
pub fn parse_date(
    field: &str,
    s: Option<&str>,
    end: bool,
    now_ms: i64,
) -> Result<i64, HttpResponse> {
    let unbounded = if end { i64::MAX } else { i64::MIN };
    let s = match s.map(str::trim) {
        None | Some("") | Some("all") => return Ok(unbounded),
        Some(s) => s,
    };
    if let Some(rel) = s.strip_prefix('-') {
        let (n, unit) = rel.split_at(rel.len().saturating_sub(1));
        let secs = match unit {
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => 0,
        };
        if let (Ok(n), true) = (n.parse::<i64>(), secs > 0) {
            return Ok(now_ms.saturating_sub(n.saturating_mul(secs * 1000)));
        }
    }
    if let Some(ms) = crate::domain::normalize::parse_timestamp_ms(Some(&Value::String(s.into()))) {
        return Ok(ms);
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let day = d
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc()
            .timestamp_millis();
        return Ok(if end { day + 86_400_000 - 1 } else { day });
    }
    Err(bad(
        field,
        "must be a date (2026-01-31), a time (2026-01-31T12:00:00Z), relative (-7d, -24h) or all",
    ))
}

/// The query's answer for `filter_test_accounts`.
fn filters_of(
    store: &Store,
    project: &crate::store::ProjectRecord,
    on: bool,
) -> Result<Option<CompiledFilters>, HttpResponse> {
    if !on {
        return Ok(None);
    }
    let s = settings_of(store, project)?;
    let f = CompiledFilters::new(&s.test_account_filters);
    Ok((!f.is_empty()).then_some(f))
}

/// Maps distinct IDs to units, and units to "is a test account", with batched reads and caches.
struct Resolver<'s> {
    store: &'s Store,
    project: ProjectId,
    filters: Option<CompiledFilters>,
    tested: FastMap<PersonUuid, bool>,
}

impl Resolver<'_> {
    /// The unit of each distinct ID, in order.
    fn units(&self, dids: &[Vec<u8>]) -> Result<Vec<Unit>, StoreError> {
        let all = self.store.estimate_keys("dids") as usize;
        if dids.len() >= SCAN_FROM && dids.len().saturating_mul(16) >= all {
            return self.units_by_scan(dids);
        }
        let mut out = Vec::with_capacity(dids.len());
        for chunk in dids.chunks(LOOKUP_CHUNK) {
            let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let persons = self.store.persons_of(self.project, &refs)?;
            for person in persons {
                out.push(match person {
                    Some(p) => Unit::Person(p),
                    None => Unit::DistinctId(out.len() as u32),
                });
            }
        }
        Ok(out)
    }

    /// [`Self::units`] for many distinct IDs: one sequential read of the project's IDs.
    fn units_by_scan(&self, dids: &[Vec<u8>]) -> Result<Vec<Unit>, StoreError> {
        let mut index: FastMap<&[u8], usize> = HashMap::with_hasher(Fast::new());
        index.extend(dids.iter().enumerate().map(|(i, d)| (d.as_slice(), i)));
        let mut persons: Vec<Option<PersonUuid>> = vec![None; dids.len()];
        self.store.for_each_did(self.project, |did, person| {
            if let Some(i) = index.get(did) {
                persons[*i] = Some(person);
            }
        })?;
        Ok(persons
            .into_iter()
            .enumerate()
            .map(|(i, p)| match p {
                Some(p) => Unit::Person(p),
                None => Unit::DistinctId(i as u32),
            })
            .collect())
    }

    /// Decide the test-account status of many units at once: one sequential read of the
    /// project's persons when they are many, point reads in [`Self::excluded`] otherwise.
    fn test_all(&mut self, units: &[Unit]) -> Result<(), StoreError> {
        let Some(filters) = &self.filters else {
            return Ok(());
        };
        let mut wanted: FastSet<PersonUuid> = HashSet::with_hasher(Fast::new());
        wanted.extend(units.iter().filter_map(|u| match u {
            Unit::Person(p) => Some(*p),
            Unit::DistinctId(_) => None,
        }));
        let all = self.store.estimate_keys("persons") as usize;
        if wanted.len() < SCAN_FROM || wanted.len().saturating_mul(16) < all {
            return Ok(());
        }
        let tested = &mut self.tested;
        self.store.for_each_person(
            self.project,
            |u| wanted.contains(&u),
            |p| {
                tested.insert(p.uuid, filters.is_test_account(&p.properties.0));
            },
        )
    }

    /// Whether the unit is left out by the test-account filters.
    fn excluded(&mut self, unit: &Unit) -> Result<bool, StoreError> {
        let Some(filters) = &self.filters else {
            return Ok(false);
        };
        let uuid = match unit {
            Unit::DistinctId(_) => return Ok(filters.is_test_account(&Map::new())),
            Unit::Person(u) => *u,
        };
        if let Some(t) = self.tested.get(&uuid) {
            return Ok(*t);
        }
        let props = self
            .store
            .person(self.project, uuid)?
            .map(|p| p.properties.0)
            .unwrap_or_default();
        let t = filters.is_test_account(&props);
        self.tested.insert(uuid, t);
        Ok(t)
    }
}

/// Query of `unique_persons`.
#[derive(Deserialize)]
pub struct UniqueQuery {
    event: Option<String>,
    date_from: Option<String>,
    date_to: Option<String>,
    count_by: Option<String>,
    filter_test_accounts: Option<bool>,
}

/// `GET /api/projects/{project}/insights/unique_persons/?event=E`: distinct persons who sent E.
pub async fn unique_persons(
    path: web::Path<String>,
    q: web::Query<UniqueQuery>,
    st: web::Data<AppState>,
) -> HttpResponse {
    let store = st.engine.store().clone();
    let p = tri!(find_project(&store, &path));
    let now = chrono::Utc::now().timestamp_millis();
    let Some(event) = q.event.clone().filter(|e| !e.is_empty()) else {
        return bad("event", "give the event name, e.g. ?event=$pageview");
    };
    let from = tri!(parse_date("date_from", q.date_from.as_deref(), false, now));
    let to = tri!(parse_date("date_to", q.date_to.as_deref(), true, now));
    let by_did = match q.count_by.as_deref() {
        None | Some("person") => false,
        Some("distinct_id") => true,
        Some(_) => return bad("count_by", "must be person or distinct_id"),
    };
    let filter = q.filter_test_accounts.unwrap_or(false);
    let filters = tri!(filters_of(&store, &p, filter));
    let (project, name) = (p.id, event.clone());
    let counted = web::block(move || {
        let mut r = Resolver {
            store: &store,
            project,
            filters,
            tested: HashMap::with_hasher(Fast::new()),
        };
        count_unique(&mut r, &name, from, to, by_did)
    })
    .await;
    let count = match counted {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return storage(e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    };
    HttpResponse::Ok().json(json!({
        "event": event, "count": count, "count_by": if by_did { "distinct_id" } else { "person" },
        "date_from": bound(from), "date_to": bound(to), "filter_test_accounts": filter,
    }))
}

fn bound(ms: i64) -> Value {
    match ms {
        i64::MIN | i64::MAX => Value::Null,
        ms => Value::String(render::time(ms)),
    }
}

fn count_unique(
    r: &mut Resolver<'_>,
    event: &str,
    from: i64,
    to: i64,
    by_did: bool,
) -> Result<u64, StoreError> {
    let started = std::time::Instant::now();
    let mut dids: FastSet<Vec<u8>> = HashSet::with_hasher(Fast::new());
    r.store
        .for_each_event_named(r.project, event, from, to, |_, _, did| {
            if !dids.contains(did) {
                dids.insert(did.to_vec());
            }
        })?;
    let dids: Vec<Vec<u8>> = dids.into_iter().collect();
    tracing::debug!(
        phase = "scan",
        elapsed_ms = started.elapsed().as_millis() as u64,
        dids = dids.len(),
        "Insight phase."
    );
    if by_did && r.filters.is_none() {
        return Ok(dids.len() as u64);
    }
    let units = r.units(&dids)?;
    r.test_all(&units)?;
    tracing::debug!(
        phase = "units",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Insight phase."
    );
    let mut counted: FastSet<Unit> = HashSet::with_hasher(Fast::new());
    let mut n = 0u64;
    for unit in units {
        if r.excluded(&unit)? {
            continue;
        }
        if by_did || counted.insert(unit) {
            n += 1;
        }
    }
    Ok(n)
}

/// Query of `funnel`.
#[derive(Deserialize)]
pub struct FunnelQuery {
    steps: Option<String>,
    window_secs: Option<i64>,
    date_from: Option<String>,
    date_to: Option<String>,
    filter_test_accounts: Option<bool>,
}

/// `GET /api/projects/{project}/insights/funnel/?steps=A,B,C&window_secs=N`: for each step, the
/// persons who reached it in order within the window, and the conversion from the first step.
pub async fn funnel(
    path: web::Path<String>,
    q: web::Query<FunnelQuery>,
    st: web::Data<AppState>,
) -> HttpResponse {
    let store = st.engine.store().clone();
    let p = tri!(find_project(&store, &path));
    let now = chrono::Utc::now().timestamp_millis();
    let steps: Vec<String> = q
        .steps
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if !(2..=MAX_STEPS).contains(&steps.len()) {
        return bad(
            "steps",
            format!("give 2 to {MAX_STEPS} event names separated by commas, e.g. ?steps=$pageview,signed_up"),
        );
    }
    let window = q.window_secs.unwrap_or(DEFAULT_FUNNEL_WINDOW_SECS);
    if window < 1 {
        return bad("window_secs", "must be at least 1");
    }
    let from = tri!(parse_date("date_from", q.date_from.as_deref(), false, now));
    let to = tri!(parse_date("date_to", q.date_to.as_deref(), true, now));
    let filter = q.filter_test_accounts.unwrap_or(false);
    let filters = tri!(filters_of(&store, &p, filter));
    let (project, names) = (p.id, steps.clone());
    let counted = web::block(move || {
        let mut r = Resolver {
            store: &store,
            project,
            filters,
            tested: HashMap::with_hasher(Fast::new()),
        };
        count_funnel(&mut r, &names, from, to, window.saturating_mul(1000))
    })
    .await;
    let counts = match counted {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return storage(e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    };
    let rate = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let results: Vec<Value> = steps
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let prev = if i == 0 { counts[0] } else { counts[i - 1] };
            json!({
                "order": i, "name": name, "count": counts[i],
                "conversion_rate": rate(counts[i], counts[0]),
                "conversion_rate_from_previous": rate(counts[i], prev),
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "results": results, "window_secs": window, "date_from": bound(from), "date_to": bound(to),
        "filter_test_accounts": filter,
    }))
}

/// Persons (units) that reached each step.
fn count_funnel(
    r: &mut Resolver<'_>,
    steps: &[String],
    from: i64,
    to: i64,
    window_ms: i64,
) -> Result<Vec<u64>, StoreError> {
    let started = std::time::Instant::now();
    let mut ids: FastMap<Vec<u8>, u32> = HashMap::with_hasher(Fast::new());
    let mut events: Vec<(u32, StepEvent)> = Vec::new();
    let mut seen_names: HashSet<&str> = HashSet::new();
    for name in steps {
        if !seen_names.insert(name) {
            continue;
        }
        let mask = steps
            .iter()
            .enumerate()
            .filter(|(_, s)| *s == name)
            .fold(0u32, |m, (k, _)| m | (1 << k));
        r.store
            .for_each_event_named(r.project, name, from, to, |ms, seq, did| {
                let next = ids.len() as u32;
                let id = match ids.get(did) {
                    Some(id) => *id,
                    None => *ids.entry(did.to_vec()).or_insert(next),
                };
                let e = StepEvent {
                    timestamp_ms: ms,
                    seq: seq.0,
                    steps: mask,
                };
                events.push((id, e));
            })?;
    }
    tracing::debug!(
        phase = "scan",
        elapsed_ms = started.elapsed().as_millis() as u64,
        events = events.len(),
        "Insight phase."
    );
    let mut dids: Vec<Vec<u8>> = vec![Vec::new(); ids.len()];
    for (did, id) in ids {
        dids[id as usize] = did;
    }
    // Each distinct ID's unit, as a dense number.
    let mut unit_no: FastMap<Unit, u32> = HashMap::with_hasher(Fast::new());
    let mut units: Vec<Unit> = Vec::new();
    let mut did_unit: Vec<u32> = Vec::with_capacity(dids.len());
    for u in r.units(&dids)? {
        let next = units.len() as u32;
        let n = *unit_no.entry(u).or_insert(next);
        if n == next {
            units.push(u);
        }
        did_unit.push(n);
    }
    r.test_all(&units)?;
    let mut by_unit: Vec<(u32, StepEvent)> = events
        .into_iter()
        .map(|(d, e)| (did_unit[d as usize], e))
        .collect();
    tracing::debug!(
        phase = "units",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Insight phase."
    );
    by_unit.sort_unstable_by_key(|(u, e)| (*u, e.timestamp_ms, e.seq));
    tracing::debug!(
        phase = "sort",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Insight phase."
    );
    let mut counts = vec![0u64; steps.len()];
    for group in by_unit.chunk_by(|a, b| a.0 == b.0) {
        let unit = group[0].0;
        let mut evs: Vec<StepEvent> = group.iter().map(|(_, e)| *e).collect();
        let Some(reached) = furthest_step(&mut evs, steps.len(), window_ms) else {
            continue;
        };
        if r.excluded(&units[unit as usize])? {
            continue;
        }
        counts.iter_mut().take(reached + 1).for_each(|c| *c += 1);
    }
    tracing::debug!(
        phase = "funnel",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Insight phase."
    );
    Ok(counts)
}
