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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
/// Parts each scan is cut into per core, so that a core that finishes early takes more.
const SLICES_PER_SCAN: usize = 2;

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

/// A date bound: RFC 3339, `YYYY-MM-DD` (the whole day), relative as PostHog writes it
/// (`-7d`, `-24h`, `-3m`: see [`relative_ms`]), or `all`/empty for no bound.
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
        match relative_ms(rel, now_ms) {
            Some(Some(at)) => return Ok(at),
            // Further back than a date can be written is not a bound the answer could echo.
            Some(None) => return Err(bad(field, "reaches further back than dates go")),
            None => {}
        }
    }
    if let Some(ms) = crate::domain::normalize::parse_rfc3339_ms(s) {
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
        "must be a date (2026-01-31), a time (2026-01-31T12:00:00Z), relative (-24h, -7d, -3m for months, -30M for minutes) or all",
    ))
}

/// `now_ms` minus `rel` (what follows the `-`) when `rel` is a relative date as PostHog's
/// `relative_date_parse` reads it: a count, then `s` seconds, `M` minutes, `h` hours, `d`
/// days, `w` weeks, `m` months, `q` quarters (13 weeks) or `y` years; months and years by the
/// calendar (a month back from March 31 is February's last day). `None` when `rel` is not
/// one; `Some(None)` when it reaches further back than a date can be written.
fn relative_ms(rel: &str, now_ms: i64) -> Option<Option<i64>> {
    let unit = *rel.as_bytes().last()?;
    let seconds = match unit {
        b's' => 1,
        b'M' => 60,
        b'h' => 3600,
        b'd' => 86_400,
        b'w' => 7 * 86_400,
        b'q' => 13 * 7 * 86_400,
        b'm' | b'y' => 0,
        _ => return None,
    };
    // The unit is one ASCII byte, so the count ends on a character boundary.
    let n = &rel[..rel.len() - 1];
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits only, so a count that does not parse is one too large for any date.
    let Ok(n) = n.parse::<i64>() else {
        return Some(None);
    };
    let at = match unit {
        b'm' | b'y' => {
            let months = if unit == b'y' {
                n.checked_mul(12)
            } else {
                Some(n)
            };
            chrono::DateTime::from_timestamp_millis(now_ms)
                .zip(months.and_then(|m| u32::try_from(m).ok()))
                .and_then(|(now, m)| now.checked_sub_months(chrono::Months::new(m)))
                .map(|at| at.timestamp_millis())
        }
        _ => n
            .checked_mul(seconds * 1000)
            .and_then(|ms| now_ms.checked_sub(ms)),
    };
    Some(at.filter(|&at| chrono::DateTime::from_timestamp_millis(at).is_some()))
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

/// Threads a query spreads its reads over (this one included).
fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Each worker's accumulator after `f` ran on every item: up to [`workers`] threads (this one
/// included) take the next item as they finish one, so uneven items still keep every core busy.
/// The first error wins; the others' work is dropped with it.
fn on_all_cores<I: Sync, A: Send>(
    items: &[I],
    init: impl Fn() -> A + Sync,
    f: impl Fn(&mut A, &I) -> Result<(), StoreError> + Sync,
) -> Result<Vec<A>, StoreError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let work = || -> Result<A, StoreError> {
        let mut acc = init();
        while !failed.load(Ordering::Relaxed) {
            let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            if let Err(e) = f(&mut acc, item) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(acc)
    };
    let n = workers().min(items.len()).max(1);
    std::thread::scope(|s| {
        let others: Vec<_> = (1..n).map(|_| s.spawn(work)).collect();
        let mut out = vec![work()];
        for h in others {
            out.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        out.into_iter().collect()
    })
}

/// One piece of an event scan: events named `name` from `from` to `to` (ms, inclusive), that
/// match the steps of `mask`.
struct Slice<'a> {
    name: &'a str,
    mask: u32,
    from: i64,
    to: i64,
}

/// Cut the scans of `names` (with their step masks) into time slices for [`on_all_cores`]:
/// each name's span of stored events in `[from, to]` in equal parts.
fn slices<'a>(
    store: &Store,
    project: ProjectId,
    names: &[(&'a str, u32)],
    from: i64,
    to: i64,
) -> Result<Vec<Slice<'a>>, StoreError> {
    let parts = if workers() > 1 {
        SLICES_PER_SCAN * workers()
    } else {
        1
    };
    let mut out = Vec::new();
    for &(name, mask) in names {
        let Some((first, last)) = store.event_time_span(project, name, from, to)? else {
            continue;
        };
        let width = (i128::from(last) - i128::from(first)) / parts as i128 + 1;
        let mut start = i128::from(first);
        while start <= i128::from(last) {
            let end = (start + width - 1).min(i128::from(last));
            // Both within [first, last], so they fit an i64.
            out.push(Slice {
                name,
                mask,
                from: start as i64,
                to: end as i64,
            });
            start = end + 1;
        }
    }
    Ok(out)
}

/// Longest distinct ID kept inside a [`Key`]: a key takes 24 bytes, as a `Vec` would without its
/// separate allocation. Longer IDs (a UUID's 36 characters) are boxed, which costs what every
/// key cost before.
const INLINE: usize = 22;

/// A distinct ID as a map key: inline when short, which is most of them, so a probe compares
/// bytes in the table instead of following a pointer to them, and a query makes no allocation
/// per distinct ID. Hashes and compares as its bytes, so a map of them is looked up by `&[u8]`.
enum Key {
    Inline(u8, [u8; INLINE]),
    Boxed(Box<[u8]>),
}

impl Key {
    fn new(did: &[u8]) -> Key {
        match did.len() {
            n if n <= INLINE => {
                let mut b = [0u8; INLINE];
                b[..n].copy_from_slice(did);
                Key::Inline(n as u8, b)
            }
            _ => Key::Boxed(did.into()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Key::Inline(n, b) => &b[..*n as usize],
            Key::Boxed(b) => b,
        }
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.bytes()
    }
}

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.bytes().hash(h)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Key {}

/// The distinct IDs a scan met, numbered `0..len` in the values.
type Dids = FastMap<Key, u32>;

/// Merge the workers' maps of distinct IDs into the largest: the new number of each worker's
/// local numbers (the largest keeps its own).
fn merge_dids(mut maps: Vec<Dids>) -> (Dids, Vec<Vec<u32>>) {
    let big = (0..maps.len())
        .max_by_key(|i| maps[*i].len())
        .unwrap_or_default();
    if maps.is_empty() {
        return (HashMap::with_hasher(Fast::new()), Vec::new());
    }
    let mut all = std::mem::replace(&mut maps[big], HashMap::with_hasher(Fast::new()));
    let mut renumber = Vec::with_capacity(maps.len());
    for (w, map) in maps.into_iter().enumerate() {
        if w == big {
            renumber.push(Vec::new());
            continue;
        }
        let mut to = vec![0u32; map.len()];
        for (did, local) in map {
            let next = all.len() as u32;
            to[local as usize] = *all.entry(did).or_insert(next);
        }
        renumber.push(to);
    }
    (all, renumber)
}

/// The query's distinct IDs by number.
fn by_number(ids: &Dids) -> Vec<&[u8]> {
    let mut dids: Vec<&[u8]> = vec![&[]; ids.len()];
    for (did, n) in ids {
        dids[*n as usize] = did.bytes();
    }
    dids
}

/// Which persons are test accounts: those whose verdict differs from that of a person without
/// properties (a missing person, or a personless distinct ID) are listed in `odd`.
struct Verdicts {
    empty: bool,
    odd: FastSet<PersonUuid>,
}

impl Verdicts {
    fn excluded(&self, unit: &Unit) -> bool {
        match unit {
            Unit::DistinctId(_) => self.empty,
            Unit::Person(p) => self.empty != self.odd.contains(p),
        }
    }
}

/// The unit of each distinct ID (by number): batched point reads of `dids`, or, for a large
/// share of the project's IDs, one sequential read of them; both spread over the cores.
fn units_of(store: &Store, project: ProjectId, ids: &Dids) -> Result<Vec<Unit>, StoreError> {
    let dids = by_number(ids);
    let all = store.estimate_keys("dids") as usize;
    let found: Vec<Vec<(u32, PersonUuid)>> =
        if dids.len() >= SCAN_FROM && dids.len().saturating_mul(16) >= all {
            // Cut the project's IDs at quantiles of a sample of the query's, in key order
            // (shorter first, then bytewise), so the parts are about even.
            let step = (dids.len() / 64).max(1);
            let mut sample: Vec<&[u8]> = dids.iter().step_by(step).copied().collect();
            sample.sort_unstable_by_key(|d| (d.len(), *d));
            let parts = SLICES_PER_SCAN * workers();
            let mut cuts: Vec<Option<&[u8]>> = vec![None];
            cuts.extend((1..parts).map(|i| Some(sample[i * sample.len() / parts])));
            cuts.dedup();
            cuts.push(None);
            let ranges: Vec<&[Option<&[u8]>]> = cuts.windows(2).collect();
            on_all_cores(&ranges, Vec::new, |found, range| {
                store.for_each_did_between(project, range[0], range[1], |did, person| {
                    if let Some(n) = ids.get(did) {
                        found.push((*n, person));
                    }
                })
            })?
        } else {
            let chunks: Vec<(usize, &[&[u8]])> = dids
                .chunks(LOOKUP_CHUNK)
                .enumerate()
                .map(|(i, c)| (i * LOOKUP_CHUNK, c))
                .collect();
            on_all_cores(&chunks, Vec::new, |found, (start, chunk)| {
                let persons = store.persons_of(project, chunk)?;
                found.extend(
                    persons
                        .into_iter()
                        .enumerate()
                        .filter_map(|(i, p)| Some(((start + i) as u32, p?))),
                );
                Ok(())
            })?
        };
    let mut units: Vec<Unit> = (0..dids.len() as u32).map(Unit::DistinctId).collect();
    for (n, person) in found.into_iter().flatten() {
        units[n as usize] = Unit::Person(person);
    }
    Ok(units)
}

/// The test-account verdicts of the persons among `units`, when the query filters them:
/// point reads, or, for a large share of the project's persons, one sequential read of them;
/// both spread over the cores, and both read only the properties the filters name.
fn verdicts_of(
    store: &Store,
    project: ProjectId,
    filters: &CompiledFilters,
    units: &[Unit],
) -> Result<Verdicts, StoreError> {
    let empty = filters.is_test_account(&Map::new());
    let verdict = |json: &str| {
        filters
            .is_test_account_json(json)
            .map_err(|e| StoreError::Corrupt(format!("person properties do not parse: {e}")))
    };
    // At most this many persons (a person with several distinct IDs may be counted more than
    // once): enough to choose between the two ways to read them.
    let persons = units
        .iter()
        .filter(|u| matches!(u, Unit::Person(_)))
        .count();
    let all = store.estimate_keys("persons") as usize;
    let odd: Vec<Vec<PersonUuid>> = if persons >= SCAN_FROM && persons.saturating_mul(16) >= all {
        // Every person of the project: asking whether each is wanted costs more (a random
        // probe of a large set) than deciding it, and an unwanted verdict is never asked
        // for. v5 uuids spread evenly over their first byte.
        let parts = (SLICES_PER_SCAN * workers()).clamp(1, 256);
        let ranges: Vec<(u8, Option<u8>)> = (0..parts)
            .map(|i| {
                let at = |i: usize| (i * 256 / parts) as u8;
                (at(i), (i + 1 < parts).then(|| at(i + 1)))
            })
            .collect();
        on_all_cores(&ranges, Vec::new, |odd, (from, to)| {
            store.for_each_person_properties(project, *from, *to, |uuid, json| {
                if verdict(json)? != empty {
                    odd.push(uuid);
                }
                Ok(())
            })
        })?
    } else {
        let mut wanted: FastSet<PersonUuid> = HashSet::with_hasher(Fast::new());
        wanted.extend(units.iter().filter_map(|u| match u {
            Unit::Person(p) => Some(*p),
            Unit::DistinctId(_) => None,
        }));
        let wanted: Vec<PersonUuid> = wanted.into_iter().collect();
        let chunks: Vec<&[PersonUuid]> = wanted.chunks(LOOKUP_CHUNK).collect();
        on_all_cores(&chunks, Vec::new, |odd, chunk| {
            for uuid in chunk.iter() {
                if let Some(v) = store.person_properties(project, *uuid, verdict)? {
                    if v? != empty {
                        odd.push(*uuid);
                    }
                }
            }
            Ok(())
        })?
    };
    let mut set: FastSet<PersonUuid> = HashSet::with_hasher(Fast::new());
    set.extend(odd.into_iter().flatten());
    Ok(Verdicts { empty, odd: set })
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
        count_unique(&store, project, filters.as_ref(), &name, (from, to), by_did)
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
    store: &Store,
    project: ProjectId,
    filters: Option<&CompiledFilters>,
    event: &str,
    (from, to): (i64, i64),
    by_did: bool,
) -> Result<u64, StoreError> {
    let started = std::time::Instant::now();
    let slices = slices(store, project, &[(event, 1)], from, to)?;
    let maps = on_all_cores(
        &slices,
        || Dids::with_hasher(Fast::new()),
        |seen, s| {
            store.for_each_event_named(project, s.name, s.from, s.to, |_, _, did| {
                if !seen.contains_key(did) {
                    seen.insert(Key::new(did), 0);
                }
            })
        },
    )?;
    let (mut ids, _) = merge_dids(maps);
    ids.values_mut()
        .enumerate()
        .for_each(|(i, n)| *n = i as u32);
    tracing::debug!(
        phase = "scan",
        elapsed_ms = started.elapsed().as_millis() as u64,
        dids = ids.len(),
        "Insight phase."
    );
    let Some(filters) = filters else {
        if by_did {
            return Ok(ids.len() as u64);
        }
        let units = units_of(store, project, &ids)?;
        let mut counted: FastSet<Unit> = HashSet::with_hasher(Fast::new());
        counted.extend(units);
        return Ok(counted.len() as u64);
    };
    let units = units_of(store, project, &ids)?;
    tracing::debug!(
        phase = "units",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Insight phase."
    );
    let verdicts = verdicts_of(store, project, filters, &units)?;
    tracing::debug!(
        phase = "filters",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Insight phase."
    );
    let kept = units.into_iter().filter(|u| !verdicts.excluded(u));
    if by_did {
        return Ok(kept.count() as u64);
    }
    let mut counted: FastSet<Unit> = HashSet::with_hasher(Fast::new());
    counted.extend(kept);
    Ok(counted.len() as u64)
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
        count_funnel(
            &store,
            project,
            filters.as_ref(),
            &names,
            (from, to),
            window.saturating_mul(1000),
        )
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

/// One event met by a funnel's scan: a [`StepEvent`] with the number of its distinct ID, in
/// 24 bytes (a tuple of the two takes 32).
struct Hit {
    timestamp_ms: i64,
    seq: u64,
    did: u32,
    steps: u32,
}

/// Persons (units) that reached each step.
fn count_funnel(
    store: &Store,
    project: ProjectId,
    filters: Option<&CompiledFilters>,
    steps: &[String],
    (from, to): (i64, i64),
    window_ms: i64,
) -> Result<Vec<u64>, StoreError> {
    let started = std::time::Instant::now();
    // Each name once, with every step it stands for.
    let mut names: Vec<(&str, u32)> = Vec::new();
    for (k, name) in steps.iter().enumerate() {
        match names.iter_mut().find(|(n, _)| n == name) {
            Some((_, mask)) => *mask |= 1 << k,
            None => names.push((name, 1 << k)),
        }
    }
    let slices = slices(store, project, &names, from, to)?;
    // Per worker: its distinct IDs (numbered locally) and its events by local number.
    let scanned = on_all_cores(
        &slices,
        || (Dids::with_hasher(Fast::new()), Vec::<Hit>::new()),
        |(ids, events), s| {
            store.for_each_event_named(project, s.name, s.from, s.to, |ms, seq, did| {
                let id = match ids.get(did) {
                    Some(id) => *id,
                    None => {
                        let next = ids.len() as u32;
                        ids.insert(Key::new(did), next);
                        next
                    }
                };
                events.push(Hit {
                    timestamp_ms: ms,
                    seq: seq.0,
                    did: id,
                    steps: s.mask,
                });
            })
        },
    )?;
    let (maps, events): (Vec<Dids>, Vec<Vec<Hit>>) = scanned.into_iter().unzip();
    let (ids, renumber) = merge_dids(maps);
    tracing::debug!(
        phase = "scan",
        elapsed_ms = started.elapsed().as_millis() as u64,
        events = events.iter().map(Vec::len).sum::<usize>(),
        "Insight phase."
    );
    // Each distinct ID's unit, as a dense number.
    let mut person_no: FastMap<PersonUuid, u32> = HashMap::with_hasher(Fast::new());
    let mut units: Vec<Unit> = Vec::new();
    let mut did_unit: Vec<u32> = Vec::with_capacity(ids.len());
    for u in units_of(store, project, &ids)? {
        let next = units.len() as u32;
        let n = match u {
            Unit::DistinctId(_) => next,
            Unit::Person(p) => *person_no.entry(p).or_insert(next),
        };
        if n == next {
            units.push(u);
        }
        did_unit.push(n);
    }
    drop(ids);
    tracing::debug!(
        phase = "units",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Insight phase."
    );
    let verdicts = filters
        .map(|f| verdicts_of(store, project, f, &units))
        .transpose()?;
    tracing::debug!(
        phase = "filters",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Insight phase."
    );
    // Group the events by unit (a counting sort: linear, where sorting them all was not);
    // `furthest_step` orders each unit's own.
    let unit_of = |w: usize, local: u32| match renumber[w].get(local as usize) {
        Some(global) => did_unit[*global as usize],
        None => did_unit[local as usize],
    };
    let mut start = vec![0u32; units.len() + 1];
    for (w, evs) in events.iter().enumerate() {
        for e in evs {
            start[unit_of(w, e.did) as usize + 1] += 1;
        }
    }
    for i in 1..start.len() {
        start[i] += start[i - 1];
    }
    let total = start[units.len()] as usize;
    let mut fill = start.clone();
    let mut grouped = vec![
        StepEvent {
            timestamp_ms: 0,
            seq: 0,
            steps: 0,
        };
        total
    ];
    for (w, evs) in events.into_iter().enumerate() {
        for e in evs {
            let at = &mut fill[unit_of(w, e.did) as usize];
            grouped[*at as usize] = StepEvent {
                timestamp_ms: e.timestamp_ms,
                seq: e.seq,
                steps: e.steps,
            };
            *at += 1;
        }
    }
    tracing::debug!(
        phase = "group",
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Insight phase."
    );
    let mut counts = vec![0u64; steps.len()];
    for (unit, w) in units.iter().zip(start.windows(2)) {
        let evs = &mut grouped[w[0] as usize..w[1] as usize];
        let Some(reached) = furthest_step(evs, steps.len(), window_ms) else {
            continue;
        };
        if verdicts.as_ref().is_some_and(|v| v.excluded(unit)) {
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

#[cfg(test)]
mod tests {
    use super::relative_ms;

    fn at(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn relative_dates_read_as_posthog_reads_them() {
        let now = at("2026-03-31T12:00:00Z");
        for (rel, want) in [
            ("90s", "2026-03-31T11:58:30Z"),
            ("30M", "2026-03-31T11:30:00Z"),
            ("24h", "2026-03-30T12:00:00Z"),
            ("7d", "2026-03-24T12:00:00Z"),
            ("2w", "2026-03-17T12:00:00Z"),
            // Months by the calendar: a month before March 31 is February's last day.
            ("1m", "2026-02-28T12:00:00Z"),
            ("3m", "2025-12-31T12:00:00Z"),
            ("1q", "2025-12-30T12:00:00Z"),
            ("1y", "2025-03-31T12:00:00Z"),
            ("0d", "2026-03-31T12:00:00Z"),
        ] {
            assert_eq!(relative_ms(rel, now), Some(Some(at(want))), "-{rel}");
        }
    }

    #[test]
    fn other_forms_are_not_relative_and_too_far_back_is_said() {
        let now = at("2026-03-31T12:00:00Z");
        for rel in [
            "", "m", "d", "1x", "1D", "1é", "é", "1.5d", "+1d", " 1d", "1dStart",
        ] {
            assert_eq!(relative_ms(rel, now), None, "-{rel}");
        }
        for rel in [
            "99999999999d",
            "4294967295y",
            "300000y",
            "9999999999999999999999M",
            // Counts whose milliseconds overflow an i64 (once wrapped into a later date).
            "2346197619q",
            "2346197600q",
            "9223372036854775807s",
        ] {
            assert_eq!(relative_ms(rel, now), Some(None), "-{rel}");
        }
        // Far back, but a date: past what a u32 count holds.
        assert_eq!(
            relative_ms("5000000000s", now),
            Some(Some(now - 5_000_000_000_000))
        );
    }
}
