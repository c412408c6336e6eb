//! The router: maps distinct IDs to person actors and sequences every decision.
//!
//! For each event, in order: find the persons it names (asking their actors for a snapshot),
//! run the pure `decide`, give the resulting entry a seq and hand it to the log writer, then
//! apply it in memory (id map, actors). The caller waits for the writer to report that seq
//! durable before it answers, so nothing is acknowledged that is not on disk. Handlers are
//! atomic: no other message interleaves with a batch.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use hashbrown::{Equivalent, HashMap};

use super::person::{Apply, PersonActor, Snapshot, Stop};
use super::writer::{WriterFailed, WriterHandle};
use crate::domain::admin::{decide_delete, decide_split, AdminError};
use crate::domain::apply::{created_person, split_parts};
use crate::domain::buffer::{may_wait, qualifies, BufferedEvent};
use crate::domain::{
    decide, lookups, Change, Ctx, Entry, Normalized, Person, PersonUuid, ProjectId,
    ProjectSettings, Seq, SettingsPatch, Warning, WarningLimiter,
};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// `--merge-limit`.
    pub merge_limit: Option<u64>,
    /// `--max-distinct-ids-per-person`.
    pub max_ids_per_person: Option<u64>,
    /// Person actors kept resident at most.
    pub max_resident_persons: usize,
    /// Distinct-ID map entries cached at most.
    pub max_cached_ids: usize,
    /// `--test-clock`: let tests move the conversion buffer's clock forward.
    pub test_clock: bool,
    /// `--buffer-max-waiting`: events waiting in the conversion buffers at most.
    pub buffer_max_waiting: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            merge_limit: None,
            max_ids_per_person: None,
            max_resident_persons: 100_000,
            max_cached_ids: 1_000_000,
            test_clock: false,
            buffer_max_waiting: 200_000,
        }
    }
}

/// The time the conversion buffer goes by: the system clock, plus an offset that only a daemon
/// started with `--test-clock` lets tests move forward (so they never sleep through a window).
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
    adjustable: bool,
}

impl Clock {
    /// The system clock, adjustable when `adjustable`.
    pub fn new(adjustable: bool) -> Clock {
        Clock {
            offset_ms: Arc::new(AtomicI64::new(0)),
            adjustable,
        }
    }

    /// Now, ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Move the clock forward by `ms`; the new offset, or `None` when not adjustable.
    pub fn advance(&self, ms: i64) -> Option<i64> {
        self.adjustable
            .then(|| self.offset_ms.fetch_add(ms, Ordering::Relaxed) + ms)
    }
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The writer is poisoned.
    #[error(transparent)]
    Writer(#[from] WriterFailed),
    /// An operator action was refused.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// No such person.
    #[error("person not found")]
    NotFound,
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    Stopped,
}

/// One event to ingest, already normalised, with its project.
#[derive(Clone, Debug, PartialEq)]
pub struct IngestItem {
    /// The project.
    pub project: ProjectId,
    /// The event.
    pub event: Normalized,
}

/// What happened to one event.
#[derive(Clone, Debug, PartialEq)]
pub enum ItemOutcome {
    /// Stored (and applied).
    Accepted,
    /// Its uuid was already accepted: acknowledged, not applied again.
    Duplicate,
    /// Dropped by a rule, with the reason.
    Dropped(String),
}

/// What happened to a batch, and the seq to wait for before acknowledging it.
#[derive(Clone, Debug, PartialEq)]
pub struct IngestOutcome {
    /// Wait until this seq is durable (`None`: nothing to wait for).
    pub wait_for: Option<Seq>,
    /// One outcome per item, in order.
    pub outcomes: Vec<ItemOutcome>,
    /// The events, handed back so that they are freed on the thread that parsed them: with
    /// mimalloc, memory freed by another thread is queued for its owner to collect, which was
    /// ~7% of the daemon's samples under load when the router freed them.
    pub events: Vec<IngestItem>,
}

/// Ingest events in order.
#[derive(Message)]
#[rtype(result = "Result<IngestOutcome, EngineError>")]
pub struct Ingest(pub Vec<IngestItem>);

/// Find (and, when `create`, make) the project of a token.
#[derive(Message)]
#[rtype(result = "Result<Option<ProjectId>, EngineError>")]
pub struct ResolveProject {
    /// Its token.
    pub token: String,
    /// Name for a new project.
    pub name: Option<String>,
    /// Create it when unknown.
    pub create: bool,
}

/// Split a person into one person per distinct ID.
#[derive(Message)]
#[rtype(result = "Result<(Option<Seq>, Vec<Person>), EngineError>")]
pub struct Split {
    /// Project.
    pub project: ProjectId,
    /// Person.
    pub person: PersonUuid,
    /// The ID that keeps the properties.
    pub main: Option<String>,
}

/// Delete a person (a logged tombstone).
#[derive(Message)]
#[rtype(result = "Result<Seq, EngineError>")]
pub struct Delete {
    /// Project.
    pub project: ProjectId,
    /// Person.
    pub person: PersonUuid,
    /// Delete its events too.
    pub delete_events: bool,
}

/// The last seq handed to the writer.
#[derive(Message)]
#[rtype(result = "Seq")]
pub struct LastSeq;

/// Change a project's settings (a logged change, unless nothing changes).
#[derive(Message)]
#[rtype(result = "Result<(Option<Seq>, ProjectSettings), EngineError>")]
pub struct PatchSettings {
    /// The project (it exists).
    pub project: ProjectId,
    /// What to change, validated.
    pub patch: SettingsPatch,
}

/// Release the buffered events that are due (sent by the router to itself).
#[derive(Message)]
#[rtype(result = "Result<(), EngineError>")]
struct ReleaseDue;

/// An event waiting in the conversion buffer.
struct Waiting {
    project: ProjectId,
    release_at_ms: i64,
    event: BufferedEvent,
}

/// How often the router looks for due buffered events.
const RELEASE_TICK: Duration = Duration::from_millis(100);
/// Buffered events released per router message at most (the router serves others between).
const RELEASE_BATCH: usize = 256;

/// Key of the router's maps by (project, distinct ID) and (project, event uuid).
type IdKey = (ProjectId, String);

/// An [`IdKey`] borrowed, to look one up without allocating a `String`: it hashes exactly as
/// the owned key does (the fields in the same order, `&str` as `String`), which the maps need.
/// The maps hash with hashbrown's default, foldhash, seeded per process (distinct IDs and
/// uuids come from clients: they cannot be aimed at one bucket), instead of SipHash.
#[derive(Hash)]
struct IdRef<'a>(ProjectId, &'a str);

impl Equivalent<IdKey> for IdRef<'_> {
    fn equivalent(&self, key: &IdKey) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

struct IdSlot {
    person: Option<PersonUuid>,
    seq: u64,
}

struct Resident {
    addr: Addr<PersonActor>,
    seq: u64,
    used: u64,
}

struct Inner {
    store: Store,
    writer: WriterHandle,
    metrics: Arc<Metrics>,
    config: EngineConfig,
    next_seq: u64,
    projects: HashMap<String, ProjectId>,
    next_project: u32,
    ids: HashMap<IdKey, IdSlot>,
    actors: HashMap<(ProjectId, PersonUuid), Resident>,
    /// Persons that a merge, split or deletion removed, with the seq of that entry, until it is
    /// durable: the store still holds them until then, and must not be asked for them.
    gone: HashMap<(ProjectId, PersonUuid), u64>,
    uuids: HashMap<IdKey, u64>,
    /// Requests in progress that looked their uuids up in the store: the durable seq when each
    /// lookup ran, with how many requests share it ([`Inner::pin`]).
    pins: BTreeMap<u64, usize>,
    limiter: WarningLimiter,
    tick: u64,
    settings: HashMap<ProjectId, ProjectSettings>,
    waiting: BTreeMap<Seq, Waiting>,
    /// For each distinct ID with events in `waiting`: how many, and the latest time one of
    /// them is released at.
    waiting_ids: HashMap<IdKey, (usize, i64)>,
    clock: Clock,
    releasing: bool,
    /// Whether the last release failed (logged once, not at every tick).
    release_failing: bool,
    /// Whether the last event that would have waited found the buffers full (logged once).
    buffer_full: bool,
}

type Shared = Rc<RefCell<Inner>>;

/// The router actor.
pub struct Router {
    inner: Shared,
}

impl Router {
    /// A router over `store`, continuing after `last_seq`.
    pub fn new(
        store: Store,
        writer: WriterHandle,
        metrics: Arc<Metrics>,
        config: EngineConfig,
        last_seq: Seq,
    ) -> Result<Router, StoreError> {
        let projects: HashMap<String, ProjectId> = store
            .projects()?
            .into_iter()
            .map(|p| (p.token, p.id))
            .collect();
        let next_project = projects.values().map(|p| p.0).max().unwrap_or(0) + 1;
        let mut limiter = WarningLimiter::default();
        for (project, w) in store.rate_limited_warnings()? {
            limiter.remember(project, &w);
        }
        limiter.prune(now_ms());
        let settings = store.all_settings()?.into_iter().collect();
        let waiting: BTreeMap<Seq, Waiting> = store
            .buffered_events()?
            .into_iter()
            .map(|b| {
                let w = Waiting {
                    project: b.project,
                    release_at_ms: b.release_at_ms,
                    event: b.event,
                };
                (b.seq, w)
            })
            .collect();
        let mut waiting_ids = HashMap::new();
        for w in waiting.values() {
            count_waiting(&mut waiting_ids, w);
        }
        let clock = Clock::new(config.test_clock);
        let inner = Inner {
            store,
            writer,
            metrics,
            config,
            next_seq: last_seq.0 + 1,
            projects,
            next_project,
            ids: HashMap::new(),
            actors: HashMap::new(),
            gone: HashMap::new(),
            uuids: HashMap::new(),
            pins: BTreeMap::new(),
            limiter,
            tick: 0,
            settings,
            waiting,
            waiting_ids,
            clock,
            releasing: false,
            release_failing: false,
            buffer_full: false,
        };
        Ok(Router {
            inner: Rc::new(RefCell::new(inner)),
        })
    }

    /// The conversion buffer's clock.
    pub fn clock(&self) -> Clock {
        self.inner.borrow().clock.clone()
    }

    /// Every tick: publish the buffer's metrics, and release what is due.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let mut s = self.inner.borrow_mut();
        let now = s.clock.now_ms();
        // Arrival order is seq order: the first waiting event is the oldest.
        let oldest = s.waiting.values().next().map(|w| w.event.received_at_ms);
        let age = oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
        s.metrics.buffer_oldest_age_seconds.set(age);
        s.metrics.buffer_waiting.set(s.waiting.len() as i64);
        if !s.releasing && s.due(now).next().is_some() {
            s.releasing = true;
            ctx.notify(ReleaseDue);
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        ctx.run_interval(RELEASE_TICK, Self::tick);
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Inner {
    /// The settings of a project nobody configured are the defaults.
    fn merge_limit_of(&self, project: ProjectId) -> Option<u64> {
        self.settings
            .get(&project)
            .and_then(|s| s.merge_limit)
            .or(self.config.merge_limit)
    }

    /// The buffer window of a project, in ms, when its buffer is on.
    fn buffer_window_ms(&self, project: ProjectId) -> Option<i64> {
        let b = self.settings.get(&project)?.conversion_buffer;
        b.enabled.then_some(b.window_secs as i64 * 1000)
    }

    /// Waiting events that are due at `now`, in arrival order. Turning a project's buffer off
    /// releases its waiting events at once.
    fn due(&self, now: i64) -> impl Iterator<Item = Seq> + '_ {
        self.waiting
            .iter()
            .filter(move |(_, w)| {
                w.release_at_ms <= now || self.buffer_window_ms(w.project).is_none()
            })
            .map(|(seq, _)| *seq)
    }

    fn spawn(&mut self, person: Person, seq: u64) {
        self.tick += 1;
        let key = (person.project, person.uuid);
        self.gone.remove(&key);
        let addr = PersonActor::new(person).start();
        if let Some(old) = self.actors.insert(
            key,
            Resident {
                addr,
                seq,
                used: self.tick,
            },
        ) {
            old.addr.do_send(Stop);
        }
    }

    fn unspawn(&mut self, project: ProjectId, uuid: PersonUuid) {
        if let Some(r) = self.actors.remove(&(project, uuid)) {
            r.addr.do_send(Stop);
        }
    }

    /// Entry `seq` removed the person: stop its actor, and answer that it is gone, not what
    /// the store holds, until that entry is durable (a split part or a new person that takes
    /// the uuid again lifts this, see [`Inner::spawn`]).
    fn remove(&mut self, project: ProjectId, uuid: PersonUuid, seq: u64) {
        self.unspawn(project, uuid);
        self.gone.insert((project, uuid), seq);
    }

    fn map_id(&mut self, project: ProjectId, did: &str, person: Option<PersonUuid>, seq: u64) {
        let slot = IdSlot { person, seq };
        match self.ids.get_mut(&IdRef(project, did)) {
            Some(known) => *known = slot,
            None => {
                self.ids.insert((project, did.to_string()), slot);
            }
        }
    }

    fn person_uuid_of(
        &mut self,
        project: ProjectId,
        did: &str,
    ) -> Result<Option<PersonUuid>, StoreError> {
        if let Some(slot) = self.ids.get(&IdRef(project, did)) {
            return Ok(slot.person);
        }
        let found = self.store.person_of(project, did)?;
        self.map_id(project, did, found, 0);
        Ok(found)
    }

    fn actor_of(
        &mut self,
        project: ProjectId,
        uuid: PersonUuid,
    ) -> Result<Option<Addr<PersonActor>>, StoreError> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(r) = self.actors.get_mut(&(project, uuid)) {
            r.used = tick;
            return Ok(Some(r.addr.clone()));
        }
        if self.gone.contains_key(&(project, uuid)) {
            return Ok(None);
        }
        match self.store.person(project, uuid)? {
            None => Ok(None),
            Some(p) => {
                self.spawn(p, 0);
                Ok(self.actors.get(&(project, uuid)).map(|r| r.addr.clone()))
            }
        }
    }

    /// The seq of the last entry decided (handed to the writer), durable or not: what memory
    /// shows rests on every entry up to it. `Seq(0)` before the first.
    fn last_decided(&self) -> Seq {
        Seq(self.next_seq - 1)
    }

    /// Give `changes` the next seq, hand them to the writer and apply them in memory.
    fn commit(
        &mut self,
        project: ProjectId,
        cause: Option<String>,
        changes: Vec<Change>,
        originals: &[Arc<Person>],
    ) -> Result<Seq, EngineError> {
        let seq = Seq(self.next_seq);
        let entry = Arc::new(Entry {
            project,
            at_ms: now_ms(),
            cause,
            changes,
        });
        self.writer.append(seq, entry.clone())?;
        self.next_seq += 1;
        self.apply_in_memory(seq, &entry, originals);
        Ok(seq)
    }

    fn apply_in_memory(&mut self, seq: Seq, entry: &Arc<Entry>, originals: &[Arc<Person>]) {
        let project = entry.project;
        let mut touched = BTreeSet::new();
        for c in &entry.changes {
            if let Some(u) = c.touched() {
                touched.insert(u);
            }
            match c {
                Change::ProjectCreated { id, token, .. } => {
                    self.projects.insert(token.clone(), *id);
                }
                Change::PersonCreated { .. } => {
                    if let Some(p) = created_person(project, seq, c) {
                        for did in &p.distinct_ids {
                            self.map_id(project, did, Some(p.uuid), seq.0);
                        }
                        self.spawn(p, seq.0);
                    }
                }
                Change::DistinctIdAttached {
                    person,
                    distinct_id,
                    ..
                } => self.map_id(project, distinct_id, Some(*person), seq.0),
                Change::PersonsMerged {
                    survivor,
                    absorbed,
                    moved_ids,
                    ..
                } => {
                    self.metrics.merges.inc();
                    self.remove(project, *absorbed, seq.0);
                    for did in moved_ids {
                        self.map_id(project, did, Some(*survivor), seq.0);
                    }
                }
                Change::MergeRefused { reason, .. } => {
                    Metrics::inc(&self.metrics.merge_refusals, reason.as_str())
                }
                Change::EventStored { event } => {
                    if let Some(u) = &event.uuid {
                        self.uuids.insert((project, u.clone()), seq.0);
                    }
                }
                Change::EventBuffered {
                    event,
                    release_at_ms,
                } => {
                    if let Some(u) = &event.uuid {
                        self.uuids.insert((project, u.clone()), seq.0);
                    }
                    let w = Waiting {
                        project,
                        release_at_ms: *release_at_ms,
                        event: event.clone(),
                    };
                    count_waiting(&mut self.waiting_ids, &w);
                    self.waiting.insert(seq, w);
                    self.metrics.buffer_waiting.set(self.waiting.len() as i64);
                }
                Change::BufferReleased { buffered } => {
                    if let Some(w) = self.waiting.remove(buffered) {
                        let key = IdRef(w.project, &w.event.distinct_id);
                        if let Some((n, _)) = self.waiting_ids.get_mut(&key) {
                            *n -= 1;
                            if *n == 0 {
                                self.waiting_ids.remove(&key);
                            }
                        }
                    }
                    self.metrics.buffer_released.inc();
                    self.metrics.buffer_waiting.set(self.waiting.len() as i64);
                }
                Change::ProjectSettingsChanged { settings } => {
                    self.settings.insert(project, settings.clone());
                }
                Change::PersonSplit {
                    person,
                    main,
                    parts,
                } => {
                    self.remove(project, *person, seq.0);
                    if let Some(original) = originals.iter().find(|p| p.uuid == *person) {
                        for part in split_parts(original, seq, main, parts) {
                            self.map_id(project, &part.distinct_ids[0], Some(part.uuid), seq.0);
                            self.spawn(part, seq.0);
                        }
                    }
                }
                Change::PersonDeleted {
                    person,
                    distinct_ids,
                    ..
                } => {
                    self.remove(project, *person, seq.0);
                    for did in distinct_ids {
                        self.map_id(project, did, None, seq.0);
                    }
                }
                _ => {}
            }
        }
        for uuid in touched {
            if let Some(r) = self.actors.get_mut(&(project, uuid)) {
                r.seq = seq.0;
                r.addr.do_send(Apply(entry.clone()));
            }
        }
    }

    /// Keep every uuid accepted after seq `durable` in `uuids`, durable or not, until
    /// [`Inner::unpin`]. A request reads the durable seq, then looks its uuids up in the store:
    /// the entries up to that seq were visible to the lookup (the writer publishes a seq only
    /// after its write), and every uuid after it was in `uuids` then (eviction had removed only
    /// durable ones) and stays there while the request runs.
    fn pin(&mut self, durable: u64) -> u64 {
        *self.pins.entry(durable).or_default() += 1;
        durable
    }

    /// Release a [`Inner::pin`].
    fn unpin(&mut self, pin: u64) {
        if let Some(n) = self.pins.get_mut(&pin) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&pin);
            }
        }
    }

    /// Bound memory: drop resident persons and cached ids whose state is durable.
    fn evict(&mut self) {
        let durable = self.writer.status().durable.0;
        let keep_after = self
            .pins
            .keys()
            .next()
            .map_or(durable, |p| (*p).min(durable));
        self.uuids.retain(|_, s| *s > keep_after);
        self.gone.retain(|_, s| *s > durable);
        if self.actors.len() > self.config.max_resident_persons {
            let target = self.config.max_resident_persons * 9 / 10;
            let mut idle: Vec<_> = self
                .actors
                .iter()
                .filter(|(_, r)| r.seq <= durable)
                .map(|(k, r)| (r.used, *k))
                .collect();
            idle.sort_unstable();
            for (_, key) in idle
                .into_iter()
                .take(self.actors.len().saturating_sub(target))
            {
                self.unspawn(key.0, key.1);
            }
        }
        if self.ids.len() > self.config.max_cached_ids {
            let target = self.config.max_cached_ids * 9 / 10;
            let mut excess = self.ids.len().saturating_sub(target);
            self.ids.retain(|_, slot| {
                if excess > 0 && slot.seq <= durable {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
        self.metrics.resident_actors.set(self.actors.len() as i64);
    }
}

async fn snapshot(
    st: &Shared,
    project: ProjectId,
    did: &str,
) -> Result<Option<Arc<Person>>, EngineError> {
    let addr = {
        let mut s = st.borrow_mut();
        let Some(uuid) = s.person_uuid_of(project, did)? else {
            return Ok(None);
        };
        match s.actor_of(project, uuid)? {
            Some(a) => a,
            None => return Ok(None),
        }
    };
    addr.send(Snapshot)
        .await
        .map(Some)
        .map_err(|_| EngineError::Stopped)
}

async fn ingest(st: Shared, items: Vec<IngestItem>) -> Result<IngestOutcome, EngineError> {
    let (on_disk, pin) = {
        let mut s = st.borrow_mut();
        let durable = s.writer.status().durable.0;
        let on_disk = uuids_on_disk(&s.store, &items)?;
        (on_disk, s.pin(durable))
    };
    let result = process_all(&st, &items, &on_disk).await;
    let mut s = st.borrow_mut();
    s.unpin(pin);
    s.evict();
    let (wait_for, outcomes) = result?;
    Ok(IngestOutcome {
        wait_for,
        outcomes,
        events: items,
    })
}

/// Whether each item's uuid was durable in the store before any of them was processed, in one
/// batched lookup (false for an item without a uuid).
fn uuids_on_disk(store: &Store, items: &[IngestItem]) -> Result<Vec<bool>, EngineError> {
    let with_uuid = items
        .iter()
        .filter_map(|i| Some((i.project, i.event.uuid.as_deref()?)));
    let mut seen = store.event_uuids_seen(with_uuid)?.into_iter();
    Ok(items
        .iter()
        .map(|i| i.event.uuid.is_some() && seen.next().unwrap_or(false))
        .collect())
}

/// Each item in order: a duplicate is answered at once, anything else goes through
/// [`process`]. Returns the seq to wait for and each item's outcome.
async fn process_all(
    st: &Shared,
    items: &[IngestItem],
    on_disk: &[bool],
) -> Result<(Option<Seq>, Vec<ItemOutcome>), EngineError> {
    let mut outcomes = Vec::with_capacity(items.len());
    let mut wait_for: Option<Seq> = None;
    for (IngestItem { project, event }, on_disk) in items.iter().zip(on_disk) {
        let (seq, outcome) = match duplicate_of(st, *project, event, *on_disk) {
            Some(earlier) => {
                st.borrow().metrics.events_duplicate.inc();
                (earlier, ItemOutcome::Duplicate)
            }
            None => process(st, *project, event, None).await?,
        };
        wait_for = wait_for.max(seq);
        outcomes.push(outcome);
    }
    Ok((wait_for, outcomes))
}

/// The seq of an earlier delivery of the event's uuid when it was accepted already (the uuid
/// of an event waiting in the buffer counts), with `Some(None)` when that one is durable.
/// `on_disk` says whether the uuid was in the store when the request's lookup ran
/// ([`uuids_on_disk`]); one that was not there yet is in `uuids`, which the request's pin keeps
/// from eviction ([`Inner::pin`]).
fn duplicate_of(
    st: &Shared,
    project: ProjectId,
    event: &Normalized,
    on_disk: bool,
) -> Option<Option<Seq>> {
    let u = event.uuid.as_ref()?;
    if let Some(seq) = st.borrow().uuids.get(&IdRef(project, u)) {
        return Some(Some(Seq(*seq)));
    }
    on_disk.then_some(None)
}

/// Count one more waiting event of its distinct ID in `ids` (`Inner::waiting_ids`).
fn count_waiting(ids: &mut HashMap<IdKey, (usize, i64)>, w: &Waiting) {
    let slot = ids
        .entry((w.project, w.event.distinct_id.clone()))
        .or_insert((0, i64::MIN));
    slot.0 += 1;
    slot.1 = slot.1.max(w.release_at_ms);
}

/// Delay the event in the conversion buffer when its project's buffer is on and it qualifies
/// (spec §11); the seq of the logged delay.
///
/// An event of a kind that waits ([`may_wait`]) whose distinct ID has events waiting already
/// waits behind them, released right after them, even when its ID has a person by now (the
/// merge they waited for came) or the buffer was turned off since: processed at once, it would
/// overtake them, and an older `$set` would win over its newer one (spec §11: "in order").
fn buffer(
    st: &Shared,
    project: ProjectId,
    event: &Normalized,
    has_person: bool,
) -> Result<Option<Seq>, EngineError> {
    let mut s = st.borrow_mut();
    let behind = s
        .waiting_ids
        .get(&IdRef(project, &event.distinct_id))
        .map(|(_, at)| *at);
    let release_at_ms = match behind {
        Some(at) if may_wait(event) => at,
        _ => {
            let Some(window) = s.buffer_window_ms(project) else {
                return Ok(None);
            };
            if !qualifies(event, has_person) {
                return Ok(None);
            }
            if s.waiting.len() >= s.config.buffer_max_waiting {
                // Held in memory: past the bound, an event is processed as if the buffer
                // were off. Said once per time the bound is reached.
                if !std::mem::replace(&mut s.buffer_full, true) {
                    tracing::warn!(
                        waiting = s.waiting.len(),
                        "The conversion buffers are full (--buffer-max-waiting): new events are processed at once until they drain."
                    );
                }
                s.metrics.buffer_full.inc();
                return Ok(None);
            }
            s.buffer_full = false;
            s.clock.now_ms() + window
        }
    };
    let change = Change::EventBuffered {
        event: BufferedEvent::new(event, now_ms()),
        release_at_ms,
    };
    let seq = s.commit(project, event.uuid.clone(), vec![change], &[])?;
    Ok(Some(seq))
}

/// Process one event that is not a duplicate ([`duplicate_of`]): delay it in the buffer, or
/// decide and log it. `released` is the seq that buffered it, when the buffer releases it
/// now: it is then processed as if it had just arrived, and its release is logged in the same
/// entry.
async fn process(
    st: &Shared,
    project: ProjectId,
    event: &Normalized,
    released: Option<Seq>,
) -> Result<(Option<Seq>, ItemOutcome), EngineError> {
    let (into, other) = lookups(event);
    let into_person = snapshot(st, project, &into).await?;
    if released.is_none() {
        if let Some(seq) = buffer(st, project, event, into_person.is_some())? {
            return Ok((Some(seq), ItemOutcome::Accepted));
        }
    }
    let other_person = match &other {
        Some(o) => snapshot(st, project, o).await?,
        None => None,
    };
    let mut s = st.borrow_mut();
    let now = now_ms();
    let (merge_limit, mut limiter) = (s.merge_limit_of(project), std::mem::take(&mut s.limiter));
    let ctx = Ctx {
        project,
        now_ms: now,
        merge_limit,
        max_ids: s.config.max_ids_per_person,
        into: into_person.as_deref(),
        other: other_person.as_deref(),
        limiter: &mut limiter,
    };
    let cause = event.uuid.clone();
    let decision = decide(event, ctx);
    s.limiter = limiter;
    let mut changes = decision.changes;
    if let Some(buffered) = released {
        changes.insert(0, Change::BufferReleased { buffered });
    }
    let mut seq = None;
    if !changes.is_empty() {
        seq = Some(s.commit(project, cause, changes, &[])?);
    }
    match decision.dropped {
        Some(reason) => {
            Metrics::inc(&s.metrics.events_rejected, "dropped_personless_merge");
            Ok((seq, ItemOutcome::Dropped(reason)))
        }
        None => {
            s.metrics.events_accepted.inc();
            Ok((seq, ItemOutcome::Accepted))
        }
    }
}

/// Release due buffered events in arrival order, each through [`process`]. Returns the seq of
/// the last entry it logged.
async fn release_due(st: Shared) -> Result<Option<Seq>, EngineError> {
    let due: Vec<(Seq, ProjectId, Normalized)> = {
        let s = st.borrow();
        let now = s.clock.now_ms();
        s.due(now)
            .take(RELEASE_BATCH)
            .filter_map(|seq| {
                let w = s.waiting.get(&seq)?;
                Some((seq, w.project, w.event.to_normalized()))
            })
            .collect()
    };
    let mut result = Ok(None);
    for (seq, project, event) in due {
        match process(&st, project, &event, Some(seq)).await {
            Ok((logged, _)) => {
                if let Ok(last) = &mut result {
                    *last = logged.or(*last);
                }
            }
            Err(e) => {
                // Tried again at every tick: said once, until a release succeeds.
                if !std::mem::replace(&mut st.borrow_mut().release_failing, true) {
                    tracing::error!(error = %e, buffered_seq = seq.0, "Could not release a buffered event; it stays buffered, and the release is retried.");
                }
                result = Err(e);
                break;
            }
        }
    }
    let mut s = st.borrow_mut();
    if result.is_ok() && std::mem::take(&mut s.release_failing) {
        tracing::info!("Buffered events are released again.");
    }
    s.evict();
    result
}

async fn patch_settings(
    st: Shared,
    msg: PatchSettings,
) -> Result<(Option<Seq>, ProjectSettings), EngineError> {
    let current = {
        let s = st.borrow();
        match s.settings.get(&msg.project) {
            Some(c) => c.clone(),
            None => {
                let name = s.store.project(msg.project)?.map(|p| p.name);
                ProjectSettings::new(&name.unwrap_or_default())
            }
        }
    };
    let next = current.patched(&msg.patch);
    if next == current {
        // Nothing to log, but the settings answered may come from an entry not durable yet.
        return Ok((Some(st.borrow().last_decided()), next));
    }
    tracing::info!(project = msg.project.0, settings = ?next, "Project settings changed.");
    let change = Change::ProjectSettingsChanged {
        settings: next.clone(),
    };
    let seq = st
        .borrow_mut()
        .commit(msg.project, None, vec![change], &[])?;
    Ok((Some(seq), next))
}

async fn person_snapshot(
    st: &Shared,
    project: ProjectId,
    uuid: PersonUuid,
) -> Result<Arc<Person>, EngineError> {
    let addr = st
        .borrow_mut()
        .actor_of(project, uuid)?
        .ok_or(EngineError::NotFound)?;
    addr.send(Snapshot).await.map_err(|_| EngineError::Stopped)
}

async fn split(st: Shared, msg: Split) -> Result<(Option<Seq>, Vec<Person>), EngineError> {
    let person = person_snapshot(&st, msg.project, msg.person).await?;
    let changes = decide_split(msg.project, &person, msg.main.as_deref())?;
    let Some(Change::PersonSplit { main, parts, .. }) = changes.first().cloned() else {
        // Nothing to split, but the person answered may come from an entry not durable yet.
        return Ok((Some(st.borrow().last_decided()), vec![(*person).clone()]));
    };
    let seq = st
        .borrow_mut()
        .commit(msg.project, None, changes, std::slice::from_ref(&person))?;
    Ok((Some(seq), split_parts(&person, seq, &main, &parts)))
}

async fn delete(st: Shared, msg: Delete) -> Result<Seq, EngineError> {
    let mut person = person_snapshot(&st, msg.project, msg.person).await?;
    if !msg.delete_events {
        // Its events still waiting in the conversion buffer arrived before the deletion:
        // processed now, in order, they reach the person they were meant for and stay stored
        // with it. Released later, they would start a fresh person from its properties. Until
        // none is left: one of them may attach an ID (a merge) whose own events wait too.
        // Each round releases what it processes, so the rounds end.
        loop {
            let waiting: Vec<(Seq, Normalized)> = {
                let s = st.borrow();
                s.waiting
                    .iter()
                    .filter(|(_, w)| {
                        w.project == msg.project
                            && person.distinct_ids.contains(&w.event.distinct_id)
                    })
                    .map(|(seq, w)| (*seq, w.event.to_normalized()))
                    .collect()
            };
            if waiting.is_empty() {
                break;
            }
            for (seq, event) in waiting {
                process(&st, msg.project, &event, Some(seq)).await?;
            }
            person = person_snapshot(&st, msg.project, msg.person).await?;
        }
    }
    let mut s = st.borrow_mut();
    let mut changes = Vec::new();
    if msg.delete_events {
        // Its events still waiting in the conversion buffer go with it: released, they would
        // start a fresh person from the deleted user's properties. What their normalisation
        // found (a cut distinct ID, say) a release would have recorded, at the time of its
        // decision (as `decide` stamps it): it is recorded now, stamped now, as the limiter
        // admits.
        let dropped: Vec<(Seq, Vec<Warning>)> = s
            .waiting
            .iter()
            .filter(|(_, w)| {
                w.project == msg.project && person.distinct_ids.contains(&w.event.distinct_id)
            })
            .map(|(seq, w)| (*seq, w.event.warnings.clone()))
            .collect();
        let now = now_ms();
        for (seq, warnings) in dropped {
            changes.push(Change::BufferReleased { buffered: seq });
            for warning in warnings {
                let warning = Warning {
                    at_ms: now,
                    ..warning
                };
                if s.limiter.admit(msg.project, &warning) {
                    changes.push(Change::WarningRecorded { warning });
                }
            }
        }
    }
    changes.extend(decide_delete(&person, msg.delete_events));
    s.commit(msg.project, None, changes, &[])
}

impl Handler<Ingest> for Router {
    type Result = AtomicResponse<Self, Result<IngestOutcome, EngineError>>;

    fn handle(&mut self, msg: Ingest, _: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(ingest(
            self.inner.clone(),
            msg.0,
        ))))
    }
}

impl Handler<ResolveProject> for Router {
    type Result = Result<Option<ProjectId>, EngineError>;

    fn handle(&mut self, msg: ResolveProject, _: &mut Context<Self>) -> Self::Result {
        let mut s = self.inner.borrow_mut();
        if let Some(id) = s.projects.get(&msg.token) {
            return Ok(Some(*id));
        }
        if !msg.create {
            return Ok(None);
        }
        let id = ProjectId(s.next_project);
        s.next_project += 1;
        let name = msg.name.unwrap_or_else(|| format!("Project {}", id.0));
        tracing::info!(project = id.0, %name, "Project created.");
        s.commit(
            id,
            None,
            vec![Change::ProjectCreated {
                id,
                token: msg.token,
                name,
            }],
            &[],
        )?;
        Ok(Some(id))
    }
}

impl Handler<Split> for Router {
    type Result = AtomicResponse<Self, Result<(Option<Seq>, Vec<Person>), EngineError>>;

    fn handle(&mut self, msg: Split, _: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(split(
            self.inner.clone(),
            msg,
        ))))
    }
}

impl Handler<Delete> for Router {
    type Result = AtomicResponse<Self, Result<Seq, EngineError>>;

    fn handle(&mut self, msg: Delete, _: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(delete(
            self.inner.clone(),
            msg,
        ))))
    }
}

impl Handler<LastSeq> for Router {
    type Result = MessageResult<LastSeq>;

    fn handle(&mut self, _: LastSeq, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.inner.borrow().last_decided())
    }
}

impl Handler<PatchSettings> for Router {
    type Result = AtomicResponse<Self, Result<(Option<Seq>, ProjectSettings), EngineError>>;

    fn handle(&mut self, msg: PatchSettings, _: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(patch_settings(
            self.inner.clone(),
            msg,
        ))))
    }
}

impl Handler<ReleaseDue> for Router {
    type Result = AtomicResponse<Self, Result<(), EngineError>>;

    fn handle(&mut self, _: ReleaseDue, _: &mut Context<Self>) -> Self::Result {
        let release = actix::fut::wrap_future(release_due(self.inner.clone()));
        AtomicResponse::new(Box::pin(release.map(
            |result, router: &mut Router, ctx: &mut Context<Router>| {
                let mut s = router.inner.borrow_mut();
                // More due than one batch: the next batch goes as soon as this one is durable,
                // not a tick later, which held releases to 2,560 a second. Waiting for the
                // disk keeps the writer's queue short: released faster than it writes, a
                // backlog of released events would delay every other request's 200.
                let more = result.is_ok() && s.due(s.clock.now_ms()).next().is_some();
                match (more, &result) {
                    (true, Ok(Some(last))) => {
                        let (writer, last) = (s.writer.clone(), *last);
                        let durable = async move { writer.wait_durable(last).await };
                        let next = actix::fut::wrap_future(durable).map(
                            |_, _: &mut Router, ctx: &mut Context<Router>| ctx.notify(ReleaseDue),
                        );
                        ctx.spawn(next);
                    }
                    (true, _) => ctx.notify(ReleaseDue),
                    (false, _) => s.releasing = false,
                }
                result.map(|_| ())
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RawProps, StoredEvent};

    fn stored(uuid: &str) -> Change {
        Change::EventStored {
            event: StoredEvent {
                uuid: Some(uuid.into()),
                event: "e".into(),
                distinct_id: "d".into(),
                properties: RawProps::empty(),
                timestamp_ms: 0,
                personless: true,
            },
        }
    }

    /// A borrowed key must hash as the owned one, or a lookup would miss what is there (and
    /// an event would pass for new, an ID for unknown).
    #[test]
    fn a_borrowed_key_finds_what_its_owned_key_stored() {
        let mut map: HashMap<IdKey, usize> = HashMap::new();
        let keys: Vec<IdKey> = (0..2_000u32)
            .map(|i| {
                (
                    ProjectId(i % 7),
                    format!("id-{i}-{}", "x".repeat((i % 50) as usize)),
                )
            })
            .collect();
        for (i, k) in keys.iter().enumerate() {
            map.insert(k.clone(), i);
        }
        for (i, (p, id)) in keys.iter().enumerate() {
            assert_eq!(map.get(&IdRef(*p, id)), Some(&i), "{p:?} {id}");
            assert_eq!(map.get(&IdRef(ProjectId(p.0 + 7), id)), None);
        }
    }

    /// Stop the router's writer thread and put in its place a writer with which nothing after
    /// `durable` ever becomes durable, while the returned control lives.
    fn hold_writer(
        st: &Shared,
        writer: WriterHandle,
        join: std::thread::JoinHandle<()>,
        durable: Seq,
    ) -> super::super::writer::Held {
        writer.stop();
        join.join().unwrap();
        let (held, control) = super::super::writer::held(durable);
        st.borrow_mut().writer = held;
        control
    }

    /// A router over a new store in a temp dir (kept alive by the first item), with its
    /// writer thread.
    fn fresh_router() -> (
        tempfile::TempDir,
        Router,
        WriterHandle,
        std::thread::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let metrics = Metrics::new();
        let (writer, join) = WriterHandle::spawn(store.clone(), Seq(0), metrics.clone(), |_| {});
        let config = EngineConfig::default();
        let router = Router::new(store, writer.clone(), metrics, config, Seq(0)).unwrap();
        (dir, router, writer, join)
    }

    fn created(project: ProjectId, dids: &[&str]) -> (PersonUuid, Change) {
        let uuid = crate::domain::person_uuid(project, dids[0]);
        let change = Change::PersonCreated {
            person: uuid,
            distinct_ids: dids.iter().map(|d| d.to_string()).collect(),
            properties: Default::default(),
            is_identified: false,
            created_at_ms: 0,
        };
        (uuid, change)
    }

    /// A merge, a split or a deletion removes a person in memory at once, but from the store
    /// only when its entry is durable. Until then, the store's copy of that person is stale:
    /// a split or a deletion by uuid that acted on it would log changes the disk never
    /// applies (the disk removes the person first), and would point its distinct IDs at
    /// persons that never exist on disk. Such a person must read as gone.
    #[test]
    fn a_person_removed_by_an_entry_not_yet_durable_is_not_read_back_from_the_store() {
        let p = ProjectId(1);
        actix::System::new().block_on(async move {
            let (_dir, router, writer, join) = fresh_router();
            let st = router.inner.clone();
            let (a, make_a) = created(p, &["a1"]);
            let (b, make_b) = created(p, &["b1", "b2"]);
            let (c, make_c) = created(p, &["c1", "c2"]);
            let (d, make_d) = created(p, &["d1", "d2"]);
            let last = {
                let mut s = st.borrow_mut();
                for change in [make_a, make_b, make_c, make_d] {
                    s.commit(p, None, vec![change], &[]).unwrap();
                }
                s.last_decided()
            };
            writer.wait_durable(last).await.unwrap();
            // From here on nothing becomes durable: the store keeps all four persons.
            let control = hold_writer(&st, writer, join, last);

            let merge = Change::PersonsMerged {
                survivor: a,
                absorbed: b,
                moved_ids: vec!["b1".into(), "b2".into()],
                brought: Default::default(),
                kept: vec![],
                created_at_ms: 0,
                kind: crate::domain::MergeKind::MergeDangerously,
            };
            st.borrow_mut().commit(p, None, vec![merge], &[]).unwrap();
            let c_now = person_snapshot(&st, p, c).await.unwrap();
            let parts = vec![
                ("c1".to_string(), crate::domain::person_uuid(p, "c1")),
                ("c2".to_string(), crate::domain::person_uuid(p, "c2-part")),
            ];
            let split_c = Change::PersonSplit {
                person: c,
                main: "c1".into(),
                parts,
            };
            st.borrow_mut()
                .commit(p, None, vec![split_c], std::slice::from_ref(&c_now))
                .unwrap();
            let delete_d = Change::PersonDeleted {
                person: d,
                distinct_ids: vec!["d1".into(), "d2".into()],
                delete_events: false,
            };
            st.borrow_mut()
                .commit(p, None, vec![delete_d], &[])
                .unwrap();

            for (gone, how) in [(b, "merged away"), (d, "deleted")] {
                assert!(
                    st.borrow().store.person(p, gone).unwrap().is_some(),
                    "the store still holds the {how} person"
                );
                assert!(
                    matches!(
                        person_snapshot(&st, p, gone).await,
                        Err(EngineError::NotFound)
                    ),
                    "a {how} person whose removal is not durable reads as gone"
                );
                let split = Split {
                    project: p,
                    person: gone,
                    main: None,
                };
                assert!(matches!(
                    super::split(st.clone(), split).await,
                    Err(EngineError::NotFound)
                ));
                let delete = Delete {
                    project: p,
                    person: gone,
                    delete_events: false,
                };
                assert!(matches!(
                    super::delete(st.clone(), delete).await,
                    Err(EngineError::NotFound)
                ));
            }
            // The split kept c's uuid for its main part: that one is there, and owns c1 only.
            let main = person_snapshot(&st, p, c).await.unwrap();
            assert_eq!(main.distinct_ids, vec!["c1".to_string()]);
            // Once the removals are durable, the store answers for those persons again.
            let mut s = st.borrow_mut();
            assert_eq!(s.gone.len(), 2, "b and d; c lives on as its main part");
            control.publish(Seq(s.next_seq - 2));
            s.evict();
            assert_eq!(
                s.gone.len(),
                1,
                "only the entry not durable yet keeps its person"
            );
            control.publish(Seq(s.next_seq - 1));
            s.evict();
            assert!(s.gone.is_empty());
        });
    }

    /// A settings change that changes nothing, and the split of a person with one distinct
    /// ID, log nothing, but answer from memory: what they answer may come from an entry not
    /// durable yet, so they wait for every entry decided before them.
    #[test]
    fn a_no_op_settings_change_or_split_waits_for_what_memory_shows_to_be_durable() {
        let p = ProjectId(1);
        actix::System::new().block_on(async move {
            let (_dir, router, writer, join) = fresh_router();
            let st = router.inner.clone();
            // From here on nothing becomes durable.
            let _control = hold_writer(&st, writer, join, Seq(0));
            let (a, make_a) = created(p, &["a1"]);
            let made = st.borrow_mut().commit(p, None, vec![make_a], &[]).unwrap();
            let split = Split {
                project: p,
                person: a,
                main: None,
            };
            let (wait, parts) = super::split(st.clone(), split).await.unwrap();
            assert_eq!(parts.len(), 1, "one distinct ID: nothing to split");
            assert_eq!(wait, Some(made), "the person's creation is not durable yet");
            let patch = crate::domain::SettingsPatch {
                buffer_window_secs: Some(123),
                ..Default::default()
            };
            let patch_settings = || PatchSettings {
                project: p,
                patch: patch.clone(),
            };
            let (changed, _) = super::patch_settings(st.clone(), patch_settings())
                .await
                .unwrap();
            let changed = changed.expect("a change is logged");
            assert!(changed > made);
            let (same, settings) = super::patch_settings(st.clone(), patch_settings())
                .await
                .unwrap();
            assert_eq!(
                same,
                Some(changed),
                "the change it repeats is not durable yet"
            );
            assert_eq!(settings, st.borrow().settings[&p]);
        });
    }

    /// The batched duplicate check looks a request's uuids up in the store first: a uuid not
    /// durable when the lookup ran (accepted just before it, or after it) must stay in `uuids`,
    /// even once durable, for as long as the request runs, or a redelivery of it in that
    /// request would pass for new.
    #[test]
    fn a_pin_keeps_the_uuids_not_durable_at_the_lookup_until_it_is_released() {
        let (_dir, router, writer, join) = fresh_router();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let p = ProjectId(1);
        let mut s = router.inner.borrow_mut();
        let accept =
            |s: &mut Inner, u: &str| s.commit(p, Some(u.into()), vec![stored(u)], &[]).unwrap();
        let durable_before = accept(&mut s, "durable-before");
        rt.block_on(writer.wait_durable(durable_before)).unwrap();
        accept(&mut s, "pending-at-lookup");
        // As if the request's lookup ran now, with only the first entry durable.
        let pin = s.pin(durable_before.0);
        let last = accept(&mut s, "accepted-after");
        rt.block_on(writer.wait_durable(last)).unwrap();
        let has = |s: &Inner, u: &str| s.uuids.contains_key(&IdRef(p, u));
        s.evict();
        assert!(!has(&s, "durable-before"), "durable at the lookup: evicted");
        assert!(
            has(&s, "pending-at-lookup"),
            "not durable at the lookup: kept"
        );
        assert!(has(&s, "accepted-after"), "accepted after the lookup: kept");
        s.unpin(pin);
        s.evict();
        assert!(!has(&s, "pending-at-lookup") && !has(&s, "accepted-after"));
        assert!(s.pins.is_empty());
        drop(s);
        writer.stop();
        join.join().unwrap();
    }
}
