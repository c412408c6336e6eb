//! `idstitch verify`: replay the whole log into scratch state and compare with the live
//! derived state.

use std::collections::HashMap;
use std::ops::Range;

use foldhash::fast::RandomState;

use super::codec::DERIVED_FORMAT;
use super::codec::{self, CodecError, ReplayChange, ReplayEntry};
use super::db::{Store, StoreError};
use super::keys;
use super::recovery::recover;
use crate::domain::memstate::{DidMap, MemState};
use crate::domain::{Applying, Change, Person, PersonUuid, ProjectId, Seq, State};

/// Log entries per stripe: the log is cut into stripes of consecutive seqs, read and decoded
/// by several threads at once and applied in order.
pub const STRIPE: u64 = 4_096;

/// The state a replay rebuilds: the persons, and the stored events counted per project.
///
/// A person no later entry changes stays the `persons` row its creation gives
/// ([`codec::skim_for_replay`]): most persons of a log never change after their creation, and
/// for those a replay neither parses their properties nor encodes them again to compare them
/// with the live rows. A person a later entry changes is decoded then, and stays decoded.
///
/// The rows of each stripe stay in the buffer its decoder wrote them into ([`Arena`]), in log
/// order: walking every row (the digests, the distinct IDs) reads memory in order instead of
/// jumping from one allocation to the next in the map's order, a cache miss each. A row
/// whose person changed or went away keeps its bytes there until the replay is dropped: at
/// most the log's creations, which the replay reads anyway.
///
/// Rows are indexed by person only when something looks a person up: a change to an existing
/// person, or a comparison after the digests disagreed. A log of creations alone (most of a
/// log that is mostly new visitors) never pays for the inserts into a map of millions, a cache
/// miss each. Until then a person created twice (which no log `decide` wrote holds: a second
/// creation always follows a lookup) has two rows, and the digests disagree with the live state.
pub struct Replayed {
    /// Where each indexed person still as its row is.
    rows: HashMap<(ProjectId, PersonUuid), Loc, RandomState>,
    /// The first row not indexed yet.
    unindexed: Loc,
    /// The rows, a stripe's in each.
    arenas: Vec<Arena>,
    /// Persons changed since their creation (no distinct-ID map: see
    /// [`MemState::persons_only`]), and the stored events.
    decoded: MemState,
    /// The first row that did not decode when a change needed its person.
    corrupt: Option<(PersonUuid, CodecError)>,
}

/// The rows of the persons a stripe created, back to back, and where each is: an empty range
/// once the person is no longer its row (changed, merged away, deleted).
struct Arena {
    bytes: Vec<u8>,
    rows: Vec<Range<usize>>,
}

/// Where a row is: its arena, and its place among the arena's rows.
#[derive(Clone, Copy)]
struct Loc {
    arena: u32,
    row: u32,
}

impl Default for Replayed {
    fn default() -> Self {
        Replayed::new()
    }
}

impl std::fmt::Debug for Replayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayed")
            .field("rows", &self.rows.len())
            .field("decoded", &self.decoded.persons.len())
            .field("events", &self.decoded.events)
            .finish_non_exhaustive()
    }
}

/// A replayed person: its row, or decoded.
enum ReplayedPerson<'a> {
    /// As the `persons` row of its creation.
    Row(&'a [u8]),
    /// Decoded, changed since.
    Decoded(&'a Person),
}

impl Replayed {
    /// Empty.
    pub fn new() -> Self {
        Replayed {
            rows: HashMap::default(),
            unindexed: Loc { arena: 0, row: 0 },
            arenas: Vec::new(),
            decoded: MemState::persons_only(0),
            corrupt: None,
        }
    }

    /// Take the rows a decoder wrote for the entries applied next (`rows` of
    /// [`codec::skim_for_replay`]; their changes name where each row is in it).
    pub fn add_rows(&mut self, rows: Vec<u8>) {
        self.arenas.push(Arena {
            bytes: rows,
            rows: Vec::new(),
        });
    }

    /// Fold one log entry in, as [`crate::domain::apply_entry`] would fold the entry it
    /// skims: a created person is saved (no distinct-ID map to point at it, and nothing
    /// recorded for it), any other change is applied. Its changes are the next
    /// `entry.changes` of `changes`, and the rows they name are in the rows added last.
    pub fn apply(
        &mut self,
        seq: Seq,
        entry: ReplayEntry,
        changes: &mut impl Iterator<Item = ReplayChange>,
    ) {
        self.decoded
            .count_events(entry.project, u64::from(entry.events));
        let mut applying = Applying::new(entry.project, seq, entry.at_ms);
        for change in changes.take(entry.changes as usize) {
            match change {
                ReplayChange::Created { person, row } => {
                    debug_assert!(!self.arenas.is_empty(), "rows added before their entries");
                    let key = (entry.project, person);
                    // A creation overwrites, as `State::save` does.
                    if !self.decoded.persons.is_empty() {
                        self.decoded.persons.remove(&key);
                    }
                    if let Some(a) = self.arenas.last_mut() {
                        a.rows.push(row);
                    }
                }
                ReplayChange::Change(change) => applying.change(self, *change),
            }
        }
        applying.finish(self);
    }

    /// Index every row not indexed yet (see [`Replayed`]): a later one of the same person
    /// replaces an earlier one, as a later creation does.
    pub fn index(&mut self) {
        let Loc { mut arena, mut row } = self.unindexed;
        // The map is sized here, by what it is about to hold, rather than up front: a replay
        // that never looks a person up never allocates it.
        let pending = self.arenas[(arena as usize).min(self.arenas.len())..]
            .iter()
            .map(|a| a.rows.len())
            .sum::<usize>()
            .saturating_sub(row as usize);
        self.rows.reserve(pending);
        while let Some(a) = self.arenas.get(arena as usize) {
            if let Some(range) = a.rows.get(row as usize) {
                if !range.is_empty() {
                    let key = codec::row_key(&a.bytes[range.clone()]);
                    if let Some(old) = self.rows.insert(key, Loc { arena, row }) {
                        self.forget(old);
                    }
                }
                row += 1;
            } else if (arena as usize) + 1 < self.arenas.len() {
                (arena, row) = (arena + 1, 0);
            } else {
                break;
            }
        }
        self.unindexed = Loc { arena, row };
    }

    /// How many persons there are (once indexed: see [`Replayed`]).
    pub fn person_count(&self) -> usize {
        self.each_row().count() + self.decoded.persons.len()
    }

    /// How many distinct IDs map to a person.
    pub fn distinct_id_count(&self) -> usize {
        let in_rows: usize = self
            .each_row()
            .map(|row| codec::row_distinct_ids(row).count())
            .sum();
        in_rows + self.decoded.distinct_id_count()
    }

    /// The person with this uuid, once every row is indexed ([`Replayed::index`]).
    fn get(&self, project: ProjectId, uuid: PersonUuid) -> Option<ReplayedPerson<'_>> {
        let key = (project, uuid);
        match self.rows.get(&key) {
            Some(&loc) => Some(ReplayedPerson::Row(self.row(loc))),
            None => self.decoded.persons.get(&key).map(ReplayedPerson::Decoded),
        }
    }

    /// Every person still as its row, in log order.
    fn each_row(&self) -> impl Iterator<Item = &[u8]> {
        self.arenas.iter().flat_map(|a| {
            a.rows
                .iter()
                .filter(|r| !r.is_empty())
                .map(|r| &a.bytes[r.clone()])
        })
    }

    fn row(&self, loc: Loc) -> &[u8] {
        let a = &self.arenas[loc.arena as usize];
        &a.bytes[a.rows[loc.row as usize].clone()]
    }

    /// The row at `loc` is no longer a person's.
    fn forget(&mut self, loc: Loc) {
        self.arenas[loc.arena as usize].rows[loc.row as usize] = 0..0;
    }

    /// Every distinct ID with its person, in no particular order.
    pub fn each_did(&self, mut f: impl FnMut(ProjectId, &str, PersonUuid)) {
        for row in self.each_row() {
            let (project, uuid) = codec::row_key(row);
            for did in codec::row_distinct_ids(row) {
                f(project, did, uuid);
            }
        }
        self.decoded.each_did(f);
    }

    /// The distinct-ID map.
    pub fn dids_map(&self) -> DidMap {
        let mut dids = DidMap::default();
        self.each_did(|project, did, uuid| {
            dids.insert((project, did.to_string()), uuid);
        });
        dids
    }

    /// The whole state decoded (without a distinct-ID map: [`MemState::with_dids`] adds it).
    pub fn into_state(mut self) -> Result<MemState, StoreError> {
        self.index();
        let mut persons = Vec::with_capacity(self.rows.len());
        for row in self.each_row() {
            persons.push(decode_row(codec::row_key(row).1, row)?);
        }
        let mut state = self.decoded;
        for person in persons {
            state.save(person);
        }
        Ok(state)
    }

    /// The person at `loc`, out of its row, which it leaves; a row that does not decode is
    /// remembered, and reported by [`replay`] when it is done.
    fn take_row(&mut self, uuid: PersonUuid, loc: Loc) -> Option<Person> {
        let decoded = codec::decode(self.row(loc));
        self.forget(loc);
        match decoded {
            Ok(p) => Some(p),
            Err(e) => {
                self.corrupt.get_or_insert((uuid, e));
                None
            }
        }
    }
}

/// A person out of the row the replay built for it.
fn decode_row(uuid: PersonUuid, row: &[u8]) -> Result<Person, StoreError> {
    codec::decode(row).map_err(|e| not_decoded(uuid, e))
}

fn not_decoded(uuid: PersonUuid, e: CodecError) -> StoreError {
    StoreError::Corrupt(format!(
        "corrupt record in log: the creation of person {uuid} does not decode: {e}"
    ))
}

impl State for Replayed {
    fn load(&mut self, project: ProjectId, uuid: PersonUuid) -> Option<Person> {
        self.index();
        if let Some(p) = self.decoded.persons.get(&(project, uuid)) {
            return Some(p.clone());
        }
        let loc = *self.rows.get(&(project, uuid))?;
        match codec::decode(self.row(loc)) {
            Ok(p) => Some(p),
            Err(e) => {
                self.corrupt.get_or_insert((uuid, e));
                None
            }
        }
    }

    fn take(&mut self, project: ProjectId, uuid: PersonUuid) -> Option<Person> {
        self.index();
        if let Some(p) = self.decoded.persons.remove(&(project, uuid)) {
            return Some(p);
        }
        let loc = self.rows.remove(&(project, uuid))?;
        self.take_row(uuid, loc)
    }

    fn save(&mut self, person: Person) {
        self.index();
        if let Some(loc) = self.rows.remove(&(person.project, person.uuid)) {
            self.forget(loc);
        }
        self.decoded.save(person);
    }

    fn update(&mut self, person: Person) {
        // Taken, so not among the rows any more.
        self.decoded.save(person);
    }

    fn remove(&mut self, project: ProjectId, uuid: PersonUuid) {
        self.index();
        if let Some(loc) = self.rows.remove(&(project, uuid)) {
            self.forget(loc);
        }
        self.decoded.remove(project, uuid);
    }

    fn map_id(&mut self, project: ProjectId, distinct_id: &str, person: Option<PersonUuid>) {
        self.decoded.map_id(project, distinct_id, person);
    }

    fn record(&mut self, project: ProjectId, seq: Seq, at_ms: i64, change: &Change) {
        self.decoded.record(project, seq, at_ms, change);
    }
}

/// Replay the whole log, from seq 1, into scratch state.
///
/// Decoding is most of a replay's work and needs no order, applying needs order and is
/// cheap. So the log is cut into stripes of [`STRIPE`] seqs; each of a few decoder threads
/// reads and skims every n-th stripe (its own RocksDB iterator, see
/// [`codec::skim_for_replay`]: stored events are checked and counted, not copied, and created
/// persons become their rows), and this thread applies the stripes in seq order as they come.
/// Each decoder runs at most two stripes ahead.
pub fn replay(store: &Store, mut progress: impl FnMut(Seq)) -> Result<Replayed, StoreError> {
    let mut scratch = Replayed::new();
    let last = store.last_log_seq()?.0;
    let decoders = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4)) as u64;
    std::thread::scope(|scope| {
        let (mut stripes, mut spent) = (Vec::new(), Vec::new());
        for first in 0..decoders {
            let (tx, rx) = std::sync::mpsc::sync_channel(2);
            stripes.push(rx);
            // The lists of a stripe applied come back to be filled again: fresh ones would be
            // fresh pages for the kernel to zero, each stripe.
            let (back, lists) = std::sync::mpsc::channel::<(Vec<_>, Vec<_>)>();
            spent.push(back);
            scope.spawn(move || {
                // Room for the rows as many as the last stripe's and a little more: a buffer
                // grown by doubling copies itself and keeps up to twice what it holds.
                let mut room = 0;
                for stripe in (first..last.div_ceil(STRIPE)).step_by(decoders as usize) {
                    let from = 1 + stripe * STRIPE;
                    let (mut entries, mut changes) = lists.try_recv().unwrap_or_else(|_| {
                        let n = STRIPE as usize;
                        (Vec::with_capacity(n), Vec::with_capacity(n))
                    });
                    let mut rows = Vec::with_capacity(room + room / 8);
                    let read = store.each_log_record(Seq(from), Seq(from + STRIPE), |seq, v| {
                        let skimmed = codec::skim_for_replay(v, seq, &mut changes, &mut rows)
                            .map_err(|e| {
                                StoreError::Corrupt(format!(
                                    "corrupt record in log at seq {seq}: {e}"
                                ))
                            })?;
                        entries.push((seq, skimmed));
                        Ok(())
                    });
                    room = rows.len();
                    let chunk = (entries, changes, rows);
                    let failed = read.is_err();
                    // A closed channel means the applier stopped at an error: stop too.
                    if tx.send(read.map(|()| chunk)).is_err() || failed {
                        return;
                    }
                }
            });
        }
        let mut expected = 1u64;
        for stripe in 0..last.div_ceil(STRIPE) {
            let decoder = (stripe % decoders) as usize;
            let (mut entries, mut changes, rows) = stripes[decoder]
                .recv()
                .map_err(|_| StoreError::Corrupt("a log decoder stopped".into()))??;
            scratch.add_rows(rows);
            let mut each_change = changes.drain(..);
            for (seq, skimmed) in entries.drain(..) {
                if seq.0 != expected {
                    return Err(gap(expected, seq));
                }
                scratch.apply(seq, skimmed, &mut each_change);
                if seq.0 % 65_536 == 0 {
                    progress(seq);
                }
                expected += 1;
            }
            drop(each_change);
            // A decoder that has stopped needs no lists.
            let _ = spent[decoder].send((entries, changes));
        }
        if expected <= last {
            return Err(gap(expected, Seq(last)));
        }
        Ok(())
    })?;
    if let Some((uuid, e)) = scratch.corrupt.take() {
        return Err(not_decoded(uuid, e));
    }
    Ok(scratch)
}

/// Free a replayed state on a thread of its own: dropping millions of persons one allocation
/// at a time takes a good part of a second, which the caller (often a command about to exit,
/// where the thread simply ends with the process) need not wait for.
pub fn discard(state: Replayed) {
    std::thread::spawn(move || drop(state));
}

fn gap(expected: u64, found: Seq) -> StoreError {
    StoreError::Corrupt(format!(
        "log has a gap: expected seq {expected}, found {found}"
    ))
}

/// Replay the whole log and compare with the live derived state: the first differences found,
/// at most `max_report` of them (empty when the two agree).
///
/// Two checks, side by side:
///
/// - The persons and the distinct-ID map are replayed in memory ([`replay`], code of its own,
///   independent of the materializer that wrote them) and compared with the live ones. Each
///   side of each column family is reduced to a [`Digest`], four sequential passes side by
///   side (no lookups, which at millions of keys are a cache miss each). Only a column
///   family whose digests differ is compared record by record, to name the differences (or to
///   find that the records differ in their encoding alone).
/// - With `derived`, every derived column family (the indexes, uuids, warnings and limits, the
///   buffer, projects and settings, `meta`; persons and distinct IDs too) is rebuilt from the
///   log into a scratch store in a temporary directory, by the code recovery rebuilds with,
///   and compared with the live one record by record ([`compare_rebuilt`]); the live
///   `applied_seq` must be the log's last seq. The scratch store is removed when done. It
///   runs at recovery's speed, about ten times slower than the rest.
///
/// A live derived state of another build's format ([`other_derived_format`]) is not compared
/// at all, with or without `derived`: only the log is replayed, and no differences are given.
///
/// `progress` is told how far both have come (the lesser of the two).
pub fn verify(
    store: &Store,
    mut progress: impl FnMut(Seq),
    max_report: usize,
    derived: bool,
) -> Result<(Replayed, Vec<String>), StoreError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    if other_derived_format(store)?.is_some() {
        // Another build's records: only the log is checked (it decodes and runs from seq 1
        // without a gap). Compared, a rule that changed would read as damage.
        return Ok((replay(store, progress)?, Vec::new()));
    }
    let started = std::time::Instant::now();
    let digester = Digester::default();
    let rebuilt_seq = AtomicU64::new(if derived { 0 } else { u64::MAX });
    let replayed_seq = AtomicU64::new(0);
    let both = |replayed: u64| Seq(replayed.min(rebuilt_seq.load(Ordering::Relaxed)));
    // The live side's digests need nothing from the replay: they read beside it, and so does
    // the rebuild.
    let (scratch, live_persons, live_dids, rebuilt) = std::thread::scope(|scope| {
        let d = &digester;
        let rebuilt = scope.spawn(|| match derived {
            true => compare_rebuilt(store, &rebuilt_seq),
            false => Ok(Vec::new()),
        });
        let live_persons = scope.spawn(move || d.live(store, "persons"));
        let live_dids = scope.spawn(move || d.live(store, "dids"));
        let scratch = replay(store, |s| {
            replayed_seq.store(s.0, Ordering::Relaxed);
            progress(both(s.0));
        });
        tracing::debug!(
            secs = started.elapsed().as_secs_f64(),
            "verify: log replayed"
        );
        let last = replayed_seq.load(Ordering::Relaxed);
        while !rebuilt.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(100));
            progress(both(last));
        }
        (
            scratch,
            joined(live_persons),
            joined(live_dids),
            joined(rebuilt),
        )
    });
    let scratch = scratch?;
    let (live_persons, live_dids, rebuilt) = (live_persons?, live_dids?, rebuilt?);
    let started = std::time::Instant::now();
    let (persons_agree, dids_agree) = std::thread::scope(|scope| {
        let (d, s) = (&digester, &scratch);
        let replayed_dids = scope.spawn(move || Ok(d.replayed_dids(s)));
        let replayed_persons = d.replayed_persons(s);
        Ok::<_, StoreError>((
            live_persons == replayed_persons,
            live_dids == joined(replayed_dids)?,
        ))
    })?;
    tracing::debug!(
        secs = started.elapsed().as_secs_f64(),
        persons_agree,
        dids_agree,
        "verify: digests compared"
    );
    let mut diffs = Vec::new();
    let mut scratch = scratch;
    if !(persons_agree && dids_agree) {
        scratch.index();
    }
    if !persons_agree {
        diffs.extend(compare_persons(store, &scratch, max_report)?);
    }
    if !dids_agree {
        diffs.extend(compare_dids(store, &scratch, max_report)?);
    }
    // A family the in-memory replay already found different is named once, by it.
    diffs.extend(
        rebuilt
            .into_iter()
            .filter(|(cf, _)| match *cf {
                "persons" => persons_agree,
                "dids" => dids_agree,
                _ => true,
            })
            .map(|(_, d)| d),
    );
    diffs.truncate(max_report);
    Ok((scratch, diffs))
}

fn joined<T>(
    handle: std::thread::ScopedJoinHandle<'_, Result<T, StoreError>>,
) -> Result<T, StoreError> {
    handle
        .join()
        .unwrap_or_else(|_| Err(StoreError::Corrupt("a comparison thread panicked".into())))
}

/// A digest of a set of (key, value) records that does not depend on their order: how many,
/// and the sum of a seeded 64-bit hash of each record. Two different sets have equal digests
/// only by a chance of about one in 2^64 (the seed is random, drawn anew for each verify).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Digest {
    count: u64,
    sum: u64,
}

#[derive(Default)]
struct Digester(foldhash::quality::RandomState);

impl Digester {
    fn add(&self, d: &mut Digest, key: &[u8], value: &[u8]) {
        use std::hash::BuildHasher;
        d.count += 1;
        d.sum = d.sum.wrapping_add(self.0.hash_one((key, value)));
    }

    /// The records of a live column family, as stored.
    fn live(&self, store: &Store, cf: &str) -> Result<Digest, StoreError> {
        let mut d = Digest::default();
        let mut it = store.full_scan(cf);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            self.add(&mut d, k, v);
            it.next();
        }
        it.status()?;
        Ok(d)
    }

    /// The replayed persons, as the live state would store them.
    fn replayed_persons(&self, scratch: &Replayed) -> Digest {
        let mut d = Digest::default();
        let (mut key, mut encoded) = (Vec::new(), Vec::new());
        for row in scratch.each_row() {
            let (project, uuid) = codec::row_key(row);
            keys::person_into(&mut key, project, uuid);
            self.add(&mut d, &key, row);
        }
        for ((project, uuid), person) in &scratch.decoded.persons {
            encoded.clear();
            codec::encode_into(&mut encoded, person);
            keys::person_into(&mut key, *project, *uuid);
            self.add(&mut d, &key, &encoded);
        }
        d
    }

    /// The replayed distinct-ID map, as the live state would store it.
    fn replayed_dids(&self, scratch: &Replayed) -> Digest {
        let mut d = Digest::default();
        let mut key = Vec::new();
        scratch.each_did(|project, did, uuid| {
            keys::did_into(&mut key, project, did);
            self.add(&mut d, &key, uuid.0.as_bytes());
        });
        d
    }
}

fn compare_persons(
    store: &Store,
    scratch: &Replayed,
    max_report: usize,
) -> Result<Vec<String>, StoreError> {
    let mut diffs = Vec::new();
    let mut live_count = 0usize;
    let mut it = store.full_scan("persons");
    let mut encoded = Vec::new();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        live_count += 1;
        let project = ProjectId(u32::from_be_bytes(
            k.get(..4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default(),
        ));
        let uuid = keys::uuid_suffix(k).unwrap_or(PersonUuid(uuid::Uuid::nil()));
        match scratch.get(project, uuid) {
            None => diffs.push(format!(
                "person {uuid} (project {project}) is live but not in the replayed log"
            )),
            Some(replayed) => {
                // Equal bytes are an equal person (encoding is deterministic and decodes back
                // exactly), and encoding is much cheaper than decoding. Only different bytes
                // are decoded, to tell a real difference from one of encoding alone.
                let same = match replayed {
                    ReplayedPerson::Row(row) => row == v,
                    ReplayedPerson::Decoded(p) => {
                        encoded.clear();
                        codec::encode_into(&mut encoded, p);
                        encoded == v
                    }
                };
                if !same {
                    let replayed = match replayed {
                        ReplayedPerson::Row(row) => decode_row(uuid, row)?,
                        ReplayedPerson::Decoded(p) => p.clone(),
                    };
                    let live: Person = codec::decode(v).map_err(|source| StoreError::Codec {
                        cf: "persons",
                        source,
                    })?;
                    if replayed != live {
                        diffs.push(format!(
                            "person {uuid} (project {project}) differs:\n  live:     {}\n  replayed: {}",
                            person_line(&live),
                            person_line(&replayed)
                        ));
                    }
                }
            }
        }
        if diffs.len() >= max_report {
            return Ok(diffs);
        }
        it.next();
    }
    it.status()?;
    if live_count != scratch.person_count() {
        diffs.push(format!(
            "live state has {live_count} persons, the replayed log {}",
            scratch.person_count()
        ));
    }
    Ok(diffs)
}

/// Every live distinct ID must map where the replay maps it, and there must be as many: then
/// the two maps are equal. Only when the counts differ are the replayed IDs looked up one by
/// one, to name those the live state lacks.
fn compare_dids(
    store: &Store,
    scratch: &Replayed,
    max_report: usize,
) -> Result<Vec<String>, StoreError> {
    // Only after the digests disagreed: the map the comparison looks up.
    let dids = scratch.dids_map();
    let mut diffs = Vec::new();
    let mut live_count = 0usize;
    let mut it = store.full_scan("dids");
    let mut key = (ProjectId(0), String::new());
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        if diffs.len() >= max_report {
            return Ok(diffs);
        }
        live_count += 1;
        let project = ProjectId(u32::from_be_bytes(
            k.get(..4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default(),
        ));
        let Some(did) = k.get(6..).and_then(|b| std::str::from_utf8(b).ok()) else {
            diffs.push(format!("a live distinct id key is not readable: {k:?}"));
            it.next();
            continue;
        };
        let live = uuid::Uuid::from_slice(v).ok().map(PersonUuid);
        // One reused key instead of a new String per lookup.
        key.0 = project;
        key.1.clear();
        key.1.push_str(did);
        let replayed = dids.get(&key).copied();
        if live != replayed {
            diffs.push(format!(
                "distinct id {did:?} (project {project}): live {}, replayed {}",
                live.map(|u| u.to_string())
                    .unwrap_or_else(|| "unreadable".into()),
                replayed
                    .map(|u| u.to_string())
                    .unwrap_or_else(|| "none".into())
            ));
        }
        it.next();
    }
    it.status()?;
    if live_count == dids.len() {
        return Ok(diffs);
    }
    for ((project, did), uuid) in dids.iter() {
        if store.person_of(*project, did)?.is_none() {
            diffs.push(format!(
                "distinct id {did:?} (project {project}): live none, replayed {uuid}"
            ));
        }
        if diffs.len() >= max_report {
            break;
        }
    }
    Ok(diffs)
}

fn person_line(p: &Person) -> String {
    serde_json::json!({
        "distinct_ids": p.distinct_ids, "properties": p.properties.0, "is_identified": p.is_identified,
        "created_at_ms": p.created_at_ms, "version": p.version, "created_seq": p.created_seq.0,
    })
    .to_string()
}

/// Derived column families compared record by record with a rebuild from the log: every one
/// but the log itself. `persons` and `dids` are also compared with the in-memory replay
/// ([`verify`]), which reads the log independently of the materializer that wrote them.
///
/// Nothing the materializer writes depends on when it runs (it takes every time from the log
/// entries: a project's creation time, a buffered event's release time, the events'
/// timestamps), so no record is left out of the comparison. `meta` is the exception: its
/// `applied_seq` and `derived_format` are checked by [`compare_meta`] instead (the rebuild
/// always writes both, a store written without start-up recovery has no `derived_format`).
const REBUILT_CFS: [&str; 14] = [
    "meta", "projects", "persons", "order", "dids", "evdid", "uuids", "warnings", "hist",
    "didhist", "limits", "settings", "buffer", "evname",
];

/// Differences named per column family before the rest are only counted.
const SHOWN_PER_FAMILY: usize = 5;

/// The start of the name of a scratch store's directory, followed by the pid of its verify.
const SCRATCH_PREFIX: &str = "idstitch-verify-";

/// A directory for the scratch store of one verify, removed when dropped (also on an error or
/// a panic; not when the process is killed: its name says whose it was, and the next verify
/// removes it, [`remove_dead_scratch_dirs`]).
struct ScratchDir(std::path::PathBuf);

/// Remove the scratch stores in `tmp` that verifies killed before they ended left behind:
/// those whose pid (in the name) is no longer running, as `/proc/<pid>` says. Those of a
/// running process stay, as does anything else. Nothing is removed without a `/proc` to ask
/// (it could not tell a running verify from a dead one). Each removal is logged; the paths
/// removed.
pub fn remove_dead_scratch_dirs(tmp: &std::path::Path) -> Vec<std::path::PathBuf> {
    let proc = std::path::Path::new("/proc");
    if !proc.join("self").exists() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let is_dir = path.symlink_metadata().is_ok_and(|m| m.is_dir());
        if !is_dir || pid == 0 || proc.join(pid.to_string()).exists() {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(
                    path = %path.display(),
                    pid,
                    "Removed the scratch store a verify left when it was killed (its process is gone)."
                );
                removed.push(path);
            }
            Err(e) => tracing::warn!(
                path = %path.display(),
                pid,
                error = %e,
                "Cannot remove the scratch store a killed verify left; remove it by hand."
            ),
        }
    }
    removed
}

impl ScratchDir {
    fn new() -> Result<ScratchDir, StoreError> {
        remove_dead_scratch_dirs(&std::env::temp_dir());
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "{SCRATCH_PREFIX}{}-{n}-{nanos:08x}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).map_err(|e| {
            StoreError::Refused(format!(
                "cannot create the scratch store of verify at {}: {e} (it needs about as much \
                 room as the data dir; set TMPDIR to a directory that has it)",
                dir.display()
            ))
        })?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Log records copied into the scratch store per write.
const COPY_GROUP: usize = 4_096;

/// Rebuild the derived state from `store`'s log into a scratch store, with the code start-up
/// recovery rebuilds with ([`recover`] after a derived-format change or `--rebuild`), and
/// compare each derived column family with the live one, record by record: the differences,
/// at most [`SHOWN_PER_FAMILY`] named per family and a count of the rest, with the family each
/// is in. `rebuilt` is told each seq the rebuild reaches.
fn compare_rebuilt(
    store: &Store,
    rebuilt: &std::sync::atomic::AtomicU64,
) -> Result<Vec<(&'static str, String)>, StoreError> {
    use std::sync::atomic::Ordering;
    let dir = ScratchDir::new()?;
    // Declared after `dir`: closed before the directory is removed.
    let scratch = Store::open_scratch(&dir.0)?;
    let started = std::time::Instant::now();
    // The log as it is, byte for byte: recovery reads it from the store it rebuilds (and a
    // deletion with its events reads earlier entries back). Without the write-ahead log: the
    // scratch store is thrown away.
    let mut unlogged = rocksdb::WriteOptions::default();
    unlogged.disable_wal(true);
    let (log, mut batch) = (scratch.cf("log"), rocksdb::WriteBatch::default());
    let mut it = store.full_scan("log");
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        batch.put_cf(log, k, v);
        if batch.len() == COPY_GROUP {
            scratch
                .db()
                .write_opt(std::mem::take(&mut batch), &unlogged)?;
        }
        it.next();
    }
    it.status()?;
    scratch.db().write_opt(batch, &unlogged)?;
    tracing::debug!(
        secs = started.elapsed().as_secs_f64(),
        "verify: log copied to the scratch store"
    );
    let started = std::time::Instant::now();
    recover(&scratch, true, |seq, _| {
        rebuilt.store(seq.0, Ordering::Relaxed)
    })?;
    rebuilt.store(u64::MAX, Ordering::Relaxed);
    tracing::debug!(
        secs = started.elapsed().as_secs_f64(),
        "verify: derived state rebuilt in the scratch store"
    );
    let started = std::time::Instant::now();
    let mut diffs = compare_meta(store)?;
    for cf in REBUILT_CFS {
        let mut found = Vec::new();
        if store.db().cf_handle(cf).is_none() {
            // A read-only store written before the family existed.
            let n = scratch.count_keys(cf)?;
            if n > 0 {
                found.push(format!(
                    "{cf}: the live store has no such column family, the log rebuilds {n} records"
                ));
            }
        } else {
            compare_family(cf, store, &scratch, &mut found)?;
        }
        diffs.extend(found.into_iter().map(|d| (cf, d)));
    }
    tracing::debug!(
        secs = started.elapsed().as_secs_f64(),
        "verify: rebuilt column families compared"
    );
    Ok(diffs)
}

/// The live derived state's format when it is another build's: what the next start of this
/// build rebuilds from the log, since this build may derive some entries differently
/// (`DERIVED_FORMAT` in `store/codec.rs` lists what changed). Its records are not this build's
/// to compare.
pub fn other_derived_format(store: &Store) -> Result<Option<u64>, StoreError> {
    Ok(store
        .meta_u64(keys::DERIVED_FORMAT_KEY)?
        .filter(|f| *f != DERIVED_FORMAT))
}

/// Records of `meta` that [`compare_meta`] checks, and the record by record comparison leaves
/// out.
const META_CHECKED: [&[u8]; 2] = [keys::APPLIED_SEQ_KEY, keys::DERIVED_FORMAT_KEY];

/// The live `applied_seq` must be the log's last seq: derived state commits with each log
/// group, so a stopped store has applied everything its log holds. (A live `derived_format`
/// of another build is never compared: [`verify`] stops at the replay. None at all is what a
/// store written without start-up recovery holds, tests and tools, whose records the
/// comparison checks as they are.)
fn compare_meta(store: &Store) -> Result<Vec<(&'static str, String)>, StoreError> {
    let mut diffs = Vec::new();
    let last = store.last_log_seq()?;
    let applied = store.meta_u64(keys::APPLIED_SEQ_KEY)?;
    if !(applied == Some(last.0) || (applied.is_none() && last.0 == 0)) {
        diffs.push((
            "meta",
            format!(
                "meta: applied_seq is {}, but the log ends at seq {last}",
                applied.map_or_else(|| "missing".to_string(), |a| a.to_string())
            ),
        ));
    }
    Ok(diffs)
}

/// Merge the live and the rebuilt records of `cf` (both sorted by key): name the first
/// differing ones, and count all.
fn compare_family(
    cf: &'static str,
    live: &Store,
    rebuilt: &Store,
    diffs: &mut Vec<String>,
) -> Result<(), StoreError> {
    use std::cmp::Ordering;
    let (mut l, mut r) = (live.full_scan(cf), rebuilt.full_scan(cf));
    let (mut live_n, mut rebuilt_n, mut differing) = (0u64, 0u64, 0u64);
    // `meta`'s records checked by [`compare_meta`].
    let checked_apart = |k: &[u8]| cf == "meta" && META_CHECKED.contains(&k);
    let mut note = |diffs: &mut Vec<String>, line: &dyn Fn() -> String| {
        differing += 1;
        if diffs.len() < SHOWN_PER_FAMILY {
            diffs.push(line());
        }
    };
    loop {
        let order = match (l.key(), r.key()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.cmp(b),
        };
        match order {
            Ordering::Less | Ordering::Greater => {
                let (it, n, what) = match order {
                    Ordering::Less => (
                        &mut l,
                        &mut live_n,
                        "is live but not rebuilt from the log (live value",
                    ),
                    _ => (
                        &mut r,
                        &mut rebuilt_n,
                        "is rebuilt from the log but not live (rebuilt value",
                    ),
                };
                let (k, v) = (it.key().unwrap_or_default(), it.value().unwrap_or_default());
                if !checked_apart(k) {
                    note(diffs, &|| {
                        format!("{cf}: {} {what} {})", show_key(cf, k), show_value(cf, v))
                    });
                }
                *n += 1;
                it.next();
            }
            Ordering::Equal => {
                let k = l.key().unwrap_or_default();
                let (lv, rv) = (l.value().unwrap_or_default(), r.value().unwrap_or_default());
                if lv != rv && !checked_apart(k) {
                    note(diffs, &|| {
                        format!(
                            "{cf}: {} differs: live {}, rebuilt from the log {}",
                            show_key(cf, k),
                            show_value(cf, lv),
                            show_value(cf, rv)
                        )
                    });
                }
                live_n += 1;
                rebuilt_n += 1;
                l.next();
                r.next();
            }
        }
    }
    l.status()?;
    r.status()?;
    if differing > 0 {
        let shown = differing.min(SHOWN_PER_FAMILY as u64);
        diffs.push(format!(
            "{cf}: {differing} record(s) differ{}; the live state has {live_n} records, the log \
             rebuilds {rebuilt_n}",
            if shown < differing {
                format!(" (the first {shown} shown)")
            } else {
                String::new()
            }
        ));
    }
    Ok(())
}

/// Bytes as text: printable ASCII as it is, anything else as `\xNN`; long ones cut.
fn show_bytes(b: &[u8]) -> String {
    const MAX: usize = 120;
    let mut s = String::from("\"");
    for &c in b.iter().take(MAX) {
        match c {
            b'"' | b'\\' => {
                s.push('\\');
                s.push(c as char);
            }
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('"');
    if b.len() > MAX {
        s.push_str(&format!("... ({} bytes)", b.len()));
    }
    s
}

/// A key as its fields, where its family's layout ([`keys`]) reads; else its bytes.
fn show_key(cf: &str, k: &[u8]) -> String {
    read_key(cf, k).unwrap_or_else(|| format!("key {}", show_bytes(k)))
}

fn read_key(cf: &str, k: &[u8]) -> Option<String> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(k.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(k.get(at..at + 8)?.try_into().ok()?))
    };
    let uuid_at =
        |at: usize| -> Option<uuid::Uuid> { uuid::Uuid::from_slice(k.get(at..at + 16)?).ok() };
    // A length-prefixed text at 4 and where it ends.
    let text = || -> Option<(&[u8], usize)> {
        let len = u16::from_be_bytes(k.get(4..6)?.try_into().ok()?) as usize;
        Some((k.get(6..6 + len)?, 6 + len))
    };
    let exact = |end: usize| (end == k.len()).then_some(());
    Some(match cf {
        "meta" => format!("key {}", show_bytes(k)),
        "buffer" => {
            exact(8)?;
            format!("seq {}", u64_at(0)?)
        }
        "persons" => {
            exact(20)?;
            format!("project {}, person {}", u32_at(0)?, uuid_at(4)?)
        }
        "order" => {
            exact(28)?;
            format!(
                "project {}, created seq {}, person {}",
                u32_at(0)?,
                u64_at(4)?,
                uuid_at(12)?
            )
        }
        "hist" => {
            exact(28)?;
            format!(
                "project {}, person {}, seq {}",
                u32_at(0)?,
                uuid_at(4)?,
                u64_at(20)?
            )
        }
        "warnings" => {
            exact(14)?;
            let index = u16::from_be_bytes(k.get(12..14)?.try_into().ok()?);
            format!(
                "project {}, seq {}, warning {index}",
                u32_at(0)?,
                u64_at(4)?
            )
        }
        "settings" => {
            exact(4)?;
            format!("project {}", u32_at(0)?)
        }
        "dids" => {
            let (id, end) = text()?;
            exact(end)?;
            format!("project {}, distinct id {}", u32_at(0)?, show_bytes(id))
        }
        "evdid" | "didhist" => {
            let (id, end) = text()?;
            exact(end + 8)?;
            format!(
                "project {}, distinct id {}, seq {}",
                u32_at(0)?,
                show_bytes(id),
                u64_at(end)?
            )
        }
        "evname" => {
            let (name, end) = text()?;
            exact(end + 16)?;
            let ms = keys::ms_of_sortable(k.get(end..end + 8)?.try_into().ok()?);
            format!(
                "project {}, event {}, timestamp {ms} ms, seq {}",
                u32_at(0)?,
                show_bytes(name),
                u64_at(end + 8)?
            )
        }
        "uuids" => match k.get(4)? {
            0 => {
                exact(21)?;
                format!("project {}, event uuid {}", u32_at(0)?, uuid_at(5)?)
            }
            _ => format!(
                "project {}, event uuid {}",
                u32_at(0)?,
                show_bytes(k.get(5..)?)
            ),
        },
        "limits" => format!(
            "project {}, warning kind {}, distinct id {}",
            u32_at(0)?,
            k.get(4)?,
            show_bytes(k.get(5..)?)
        ),
        "projects" => match k.first()? {
            b'i' => {
                exact(5)?;
                format!("project {}", u32_at(1)?)
            }
            _ => format!("token {}", show_bytes(k.get(1..)?)),
        },
        _ => return None,
    })
}

/// A value: a number where the family stores one (`meta`, `uuids`: a seq), else its bytes.
fn show_value(cf: &str, v: &[u8]) -> String {
    match (cf, <[u8; 8]>::try_from(v)) {
        ("meta", Ok(b)) => u64::from_be_bytes(b).to_string(),
        ("uuids", Ok(b)) => format!("seq {}", u64::from_be_bytes(b)),
        _ if v.is_empty() => "(empty)".to_string(),
        _ => show_bytes(v),
    }
}
