//! The RocksDB handle and every read the rest of the crate needs.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, IteratorMode, Options, ReadOptions, DB};
use serde::{Deserialize, Serialize};

use super::codec::{self, CodecError};
use super::keys;
use super::wal;
use crate::domain::buffer::BufferedEvent;
use crate::domain::{Entry, Person, PersonUuid, ProjectId, ProjectSettings, Seq, Warning};

/// For tests only: the environment variable that makes [`Store::compact_log`] fail (after
/// its flush and compaction, as a compaction that hit an error would), so that what a failed
/// compaction answers can be tested without breaking a disk.
pub const TEST_FAIL_COMPACTION: &str = "IDSTITCH_TEST_FAIL_COMPACTION";

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed (I/O error, disk full, corruption it detected).
    #[error("storage error: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A record did not decode.
    #[error("corrupt record in {cf}: {source}")]
    Codec {
        /// Column family.
        cf: &'static str,
        /// Why.
        source: CodecError,
    },
    /// Anything else that is wrong with the data directory.
    #[error("{0}")]
    Corrupt(String),
    /// The directory must not be opened as it is, and the user can fix that (exit 1): it holds
    /// an unfinished restore, or files but no database. The whole line to show, with what to do.
    #[error("{0}")]
    Refused(String),
    /// Reclaiming disk space failed ([`Store::compact_log`]): what was written is intact, but
    /// bytes meant to leave the disk may still be there. Says which and why.
    #[error("{0}")]
    Reclaim(String),
}

impl StoreError {
    /// Whether the data itself is damaged (as opposed to the disk or the system failing).
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Rocks(e) => e.kind() == rocksdb::ErrorKind::Corruption,
            StoreError::Codec { .. } | StoreError::Corrupt(_) => true,
            StoreError::Refused(_) | StoreError::Reclaim(_) => false,
        }
    }
}

/// A project as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectRecord {
    /// Its number.
    pub id: ProjectId,
    /// Its token.
    pub token: String,
    /// Display name.
    pub name: String,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
}

/// An event waiting in the conversion buffer, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferedRecord {
    /// The seq of the entry that buffered it (its place in arrival order).
    pub seq: Seq,
    /// Its project.
    pub project: ProjectId,
    /// When it is due, ms since the epoch.
    pub release_at_ms: i64,
    /// The event.
    pub event: BufferedEvent,
}

/// The store: one RocksDB database with the column families of [`keys`].
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// Removes obsolete write-ahead log files (a store opened for writing); declared after
    /// `db`, so that the last clone closes the database before the reaper's final purge.
    reaper: Option<Arc<wal::WalReaper>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Column families read by exact key on the write path (duplicate checks, id lookups, person
/// loads): bloom filters let a lookup of a key that is not there skip reading blocks.
const POINT_LOOKUP_CFS: [&str; 5] = ["uuids", "dids", "persons", "projects", "limits"];

/// Column families that only queries read (never the write path), whose keys are spread over
/// the key space (a distinct ID, an event name, a person): every compaction of their level 0
/// rewrites most of the level below. They compact after twice as many flushes as RocksDB's
/// default, so half as often; a query then merges up to twice as many level-0 files.
const QUERY_ONLY_CFS: [&str; 6] = ["evdid", "evname", "hist", "didhist", "order", "warnings"];

/// Level-0 files of a [`QUERY_ONLY_CFS`] column family that start a compaction (RocksDB: 4).
const QUERY_ONLY_L0_TRIGGER: i32 = 8;

/// The block cache all column families share, so that its size bounds memory however many
/// column families there are (RocksDB's default is a separate 32 MiB cache for each).
static BLOCK_CACHE: std::sync::LazyLock<rocksdb::Cache> =
    std::sync::LazyLock::new(|| rocksdb::Cache::new_lru_cache(128 << 20));

/// Options of one column family.
fn cf_options(name: &str) -> Options {
    let mut o = options_with(insert_hint(name));
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(&BLOCK_CACHE);
    // Index and filter blocks stay with their open table files (RocksDB's default), not in
    // the block cache: cached, the filters of a few million keys outgrew it and were read back
    // and checksummed on every lookup (ingest fell from ~20k to ~2k events/s past 1.5M persons).
    if POINT_LOOKUP_CFS.contains(&name) {
        table.set_bloom_filter(10.0, false);
        // Most duplicate checks and id lookups miss: answer those from the memtable's bloom
        // filter instead of searching its skip list.
        o.set_memtable_prefix_bloom_ratio(0.02);
        o.set_memtable_whole_key_filtering(true);
    }
    if QUERY_ONLY_CFS.contains(&name) {
        o.set_level_zero_file_num_compaction_trigger(QUERY_ONLY_L0_TRIGGER);
    }
    if name == "log" {
        // The log is read front to back (replay, verify, recovery) and almost never by key:
        // larger blocks mean fewer block fetches, checksums and decompressions per entry.
        table.set_block_size(LOG_BLOCK_SIZE);
    }
    o.set_block_based_table_factory(&table);
    o
}

/// RocksDB's insert hints for the column families whose writes mostly land next to an
/// earlier write with the same key prefix: the memtable keeps, per prefix, where its last
/// insert went, and starts the next one there instead of searching its skip list from the top
/// (those searches were ~40% of the log writer's instructions). `hist` keys are (project,
/// person, seq), so a person's next entry goes right after its last; a `persons` key is
/// rewritten once per group that changes the person. `evdid` keys are (project, length, ID,
/// seq) of variable length: the fixed prefix of 42 bytes is the whole ID for IDs of 36 bytes
/// (the SDKs' UUID anonymous IDs), the ID's first 36 bytes for longer ones, and for IDs of 28
/// to 35 bytes the ID with the top bytes of the seq, which change every 2^8 to 2^56 entries.
/// IDs shorter than 28 bytes are inserted without a hint. `evname` keys are (project, length,
/// event name, timestamp, seq): the fixed prefix of 16 bytes is the name's first 10 bytes, so
/// the events of one name go in after the last one, near it in time. A name shorter than 10
/// bytes fills the prefix with the top of its timestamp: constant for years for names of 7 to
/// 9 bytes (`$pageview`), new every 4.7 hours for 5 bytes, every 256 ms for 3 and every
/// millisecond for names of 1 or 2 bytes (the whole timestamp; the seq's top byte after it
/// does not change). A hint costs ~250 bytes of the memtable per prefix (at worst one per
/// millisecond of such names until the next flush). Callgrind, the log writer under
/// the load generator's workload: 640M -> 612M instructions for 20,000 events
/// (`benches/README.md`, session 15) for `hist`, `persons` and `evdid`.
fn insert_hint(cf: &str) -> &'static str {
    match cf {
        "hist" | "persons" => "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.20",
        "evdid" => "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.42",
        "evname" => "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.16",
        _ => "",
    }
}

/// Block size of the log's table files (RocksDB's default, 4 KiB, holds a few entries).
const LOG_BLOCK_SIZE: usize = 32 << 10;

fn options() -> Options {
    options_with("")
}

/// [`options`] with `extra` (RocksDB's `name=value;...` syntax) for the options the binding
/// has no setter for.
fn options_with(extra: &str) -> Options {
    // After a crash, RocksDB replays its write-ahead log into the memtables at open, and by
    // default then writes them out as table files before the open returns. Keep them in memory
    // instead, so that the open does not wait for that: the WAL stays until the next ordinary
    // flush, so nothing is less durable. (The Rust binding has no setter for it.)
    //
    // A write-ahead log record that is damaged is an error at open, unless it is the last one
    // cut short (a crash while it was written: it was not acknowledged, as every write is
    // synced before its answer). RocksDB's default (point in time) would silently drop it and
    // every record after it, acknowledged ones too; [`Store::open_salvaging`] does that, when
    // asked to.
    let mut o = Options::default()
        .get_options_from_string(format!(
            "avoid_flush_during_recovery=true;wal_recovery_mode=kTolerateCorruptedTailRecords;{extra}"
        ))
        .expect("RocksDB parses this crate's constant option strings");
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o.increase_parallelism(2);
    o.set_max_background_jobs(2);
    o.set_atomic_flush(true);
    // Bound the write-ahead log that a restart after a crash replays: past this size, every
    // memtable is flushed (atomically) and the log starts over. Unbounded, it reached the
    // largest memtable's worth of writes (~110 MB at 1M persons, ~3 s to replay).
    o.set_max_total_wal_size(WAL_LIMIT);
    // Obsolete write-ahead log files go to `archive/` instead of being deleted whole, for
    // the store's reaper to remove gently (`wal`).
    o.set_wal_ttl_seconds(wal::ARCHIVE_OBSOLETE_WALS_FOR_SECS);
    if let Some(env) = &*BACKGROUND_AT_LOW_PRIORITY {
        o.set_env(env);
    }
    o
}

/// RocksDB's default environment (shared by every database of the process), its flush and
/// compaction threads at the lowest CPU priority: on a busy machine they take the cycles
/// capture leaves instead of delaying acknowledgements (open loop at 10,000 events/s, p99
/// 40.3 -> 35.6 ms, mean of five alternated runs). They are not starved for long: a writer
/// that fills the memtables waits for the flush, which leaves the flush the CPU.
static BACKGROUND_AT_LOW_PRIORITY: std::sync::LazyLock<Option<rocksdb::Env>> =
    std::sync::LazyLock::new(|| {
        let mut env = rocksdb::Env::new().ok()?;
        env.lower_thread_pool_cpu_priority();
        env.lower_high_priority_thread_pool_cpu_priority();
        Some(env)
    });

/// Most write-ahead log bytes a restart after a crash replays (see [`options`]).
const WAL_LIMIT: u64 = 48 << 20;

/// The file `idstitch snapshot restore` puts into a data dir (durably: the file and the
/// directory fsynced) before it writes anything else there, and removes only once the restore
/// is complete and durable (copied, checked, cut, rebuilt). While it is there, the data dir's
/// contents are not a store to serve: some files of a snapshot, or a log not yet cut at
/// `--as-of`. [`check_data_dir`] refuses such a dir; a restore with `--force` replaces it.
pub const RESTORE_MARKER: &str = "RESTORE-IN-PROGRESS";

/// The files RocksDB itself may have written into a new database's directory before its
/// `CURRENT` file (a first start killed at that moment): a dir holding only these may still
/// become a new store. A snapshot never holds any of them.
fn written_before_current(name: &str) -> bool {
    matches!(name, "LOCK" | "LOG" | "IDENTITY" | "MANIFEST-000001") || name.starts_with("LOG.old.")
}

/// Whether `dir` holds a RocksDB database: RocksDB writes its `CURRENT` file last when it
/// creates one, and never removes it.
pub fn holds_store(dir: &Path) -> bool {
    dir.join("CURRENT").exists()
}

/// Whether `dir` may be opened as a data dir. Refused ([`StoreError::Refused`]): a dir with
/// [`RESTORE_MARKER`] (a restore was interrupted), and a non-empty dir without RocksDB's
/// `CURRENT` (RocksDB would create a new, empty database in it, and later delete the files it
/// does not know, such as those of a partly copied snapshot). A missing or empty dir is fine:
/// a new store is created there.
pub fn check_data_dir(dir: &Path) -> Result<(), StoreError> {
    let marker = dir.join(RESTORE_MARKER);
    if marker.symlink_metadata().is_ok() {
        let note = std::fs::read_to_string(&marker).unwrap_or_default();
        let note = note.lines().next().unwrap_or_default().trim();
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(" ({note})")
        };
        return Err(StoreError::Refused(format!(
            "data dir {d} holds an unfinished restore{note}: the restore was interrupted and \
             what is there is not a usable store. Run it again: `idstitch snapshot restore \
             SNAPSHOT --data-dir {d} --force`",
            d = dir.display()
        )));
    }
    if holds_store(dir) {
        return Ok(());
    }
    if dir.join(super::snapshot::MANIFEST).exists() {
        return Err(StoreError::Refused(format!(
            "{d} is a snapshot, not a data dir: restore it into one with `idstitch snapshot \
             restore {d} --data-dir DIR`, or check it with `idstitch snapshot verify {d}`",
            d = dir.display()
        )));
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Missing: a new store. Unreadable: RocksDB's open says why.
        Err(_) => return Ok(()),
    };
    let foreign = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| !written_before_current(name));
    match foreign {
        None => Ok(()),
        Some(name) => Err(StoreError::Refused(format!(
            "data dir {d} is not empty (it holds {name:?}) but has no idstitch database in it \
             (no RocksDB CURRENT file), for example after a restore by an older idstitch was \
             interrupted: refusing to create a new store over it. Restore into it with \
             `idstitch snapshot restore SNAPSHOT --data-dir {d} --force`, or give the right \
             --data-dir (`serve` creates a new store in a missing or empty one)",
            d = dir.display()
        ))),
    }
}

impl Store {
    /// Open (or create) the store in `dir`, once [`check_data_dir`] lets it. Obsolete
    /// write-ahead log files go to its archive, which a thread of the store empties a few
    /// megabytes at a time ([`wal`]).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        check_data_dir(dir)?;
        Store::open_unchecked(dir)
    }

    /// [`Store::open`] without [`check_data_dir`]: for `snapshot restore`, which opens the
    /// data dir it is restoring into while its [`RESTORE_MARKER`] is there.
    pub(crate) fn open_unchecked(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, options())
    }

    /// [`Store::open`], keeping what comes before a damaged write-ahead log record and
    /// dropping that record and everything after it (RocksDB's point-in-time recovery): the
    /// way out of a damaged log when no snapshot is newer (`serve --salvage-wal`).
    pub fn open_salvaging(dir: &Path) -> Result<Store, StoreError> {
        check_data_dir(dir)?;
        Store::open_with(dir, options_with("wal_recovery_mode=kPointInTimeRecovery"))
    }

    /// A new store for a rebuild that is thrown away after it is read (`verify`'s): nothing
    /// of it needs to survive a crash, so its write-ahead log is written in memory until the
    /// end (`manual_wal_flush`), and closing it does not write its memtables out first (a
    /// flush of everything written, as RocksDB does at close after writes without the
    /// write-ahead log, took longer than comparing it).
    pub(crate) fn open_scratch(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(
            dir,
            options_with("avoid_flush_during_shutdown=true;manual_wal_flush=true"),
        )
    }

    fn open_with(dir: &Path, options: Options) -> Result<Store, StoreError> {
        // Not the data's fault (exit 3 says restore a snapshot), but the path's: the user's to fix.
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Refused(format!(
                "cannot create data dir {}: {e}. Give a --data-dir that exists, or whose \
                 parent exists and is writable",
                dir.display()
            ))
        })?;
        let cfs = keys::CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, cf_options(n)));
        let db = DB::open_cf_descriptors(&options, dir, cfs)?;
        let reaper = wal::WalReaper::start(dir).map_err(|e| {
            StoreError::Corrupt(format!("cannot start the write-ahead log reaper: {e}"))
        })?;
        Ok(Store {
            db: Arc::new(db),
            reaper: Some(Arc::new(reaper)),
        })
    }

    /// Open read-only (verify, snapshot of a stopped data dir).
    pub fn open_read_only(dir: &Path) -> Result<Store, StoreError> {
        check_data_dir(dir)?;
        if !holds_store(dir) {
            return Err(StoreError::Corrupt(format!(
                "{} is not an idstitch data dir (no CURRENT file): give the --data-dir the daemon \
                 ran with",
                dir.display()
            )));
        }
        // A data dir or snapshot written before a column family existed lacks it: open what is
        // there (the readers of a read-only store use only the oldest column families).
        let existing = DB::list_cf(&options(), dir).unwrap_or_default();
        let cfs = keys::CFS
            .iter()
            .filter(|c| existing.is_empty() || existing.iter().any(|e| e == *c));
        let db = DB::open_cf_for_read_only(&options(), dir, cfs, false)?;
        Ok(Store {
            db: Arc::new(db),
            reaper: None,
        })
    }

    /// The raw database, for the writer and snapshots.
    pub fn db(&self) -> &DB {
        &self.db
    }

    /// A column family handle. All of [`keys::CFS`] exist once opened.
    pub fn cf(&self, name: &str) -> &ColumnFamily {
        match self.db.cf_handle(name) {
            Some(cf) => cf,
            None => unreachable!("column family {name} is created at open"),
        }
    }

    fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    fn decoded<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.get(cf, key)? {
            None => Ok(None),
            Some(b) => codec::decode(&b)
                .map(Some)
                .map_err(|source| StoreError::Codec { cf, source }),
        }
    }

    /// A `meta` value as u64.
    pub fn meta_u64(&self, name: &[u8]) -> Result<Option<u64>, StoreError> {
        Ok(self
            .get("meta", name)?
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes))
    }

    /// The last seq whose changes are in the derived column families.
    pub fn applied_seq(&self) -> Result<Seq, StoreError> {
        Ok(Seq(self.meta_u64(keys::APPLIED_SEQ_KEY)?.unwrap_or(0)))
    }

    /// The highest seq in the log.
    pub fn last_log_seq(&self) -> Result<Seq, StoreError> {
        let mut it = self.db.iterator_cf(self.cf("log"), IteratorMode::End);
        match it.next() {
            None => Ok(Seq(0)),
            Some(item) => {
                let (k, _) = item?;
                log_seq(&k)
            }
        }
    }

    /// One log entry.
    pub fn entry(&self, seq: Seq) -> Result<Option<Entry>, StoreError> {
        self.decoded("log", &keys::log(seq))
    }

    /// Log entries from `from` on, in order: one sequential read (see [`Store::full_scan`])
    /// that decodes each entry from the borrowed bytes instead of copying them first.
    pub fn entries_from(
        &self,
        from: Seq,
    ) -> impl Iterator<Item = Result<(Seq, Entry), StoreError>> + '_ {
        let mut it = self.scan("log", Some(keys::log(from).to_vec()), None);
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                done = true;
                return it.status().err().map(|e| Err(e.into()));
            };
            let item = log_seq(k).and_then(|seq| {
                codec::decode_entry(v)
                    .map(|entry| (seq, entry))
                    .map_err(|source| StoreError::Codec { cf: "log", source })
            });
            done = item.is_err();
            it.next();
            Some(item)
        })
    }

    /// Every log record with a seq in `from..to`, in order: `f` gets the seq and the encoded
    /// bytes, borrowed from the iterator (one sequential read, see [`Store::full_scan`]).
    pub fn each_log_record(
        &self,
        from: Seq,
        to: Seq,
        mut f: impl FnMut(Seq, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut it = self.scan(
            "log",
            Some(keys::log(from).to_vec()),
            Some(keys::log(to).to_vec()),
        );
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            f(log_seq(k)?, v)?;
            it.next();
        }
        Ok(it.status()?)
    }

    /// A person by uuid.
    pub fn person(&self, p: ProjectId, uuid: PersonUuid) -> Result<Option<Person>, StoreError> {
        self.decoded("persons", &keys::person(p, uuid))
    }

    /// The person a distinct ID belongs to.
    pub fn person_of(&self, p: ProjectId, did: &str) -> Result<Option<PersonUuid>, StoreError> {
        Ok(self
            .get("dids", &keys::did(p, did))?
            .and_then(|b| uuid::Uuid::from_slice(&b).ok())
            .map(PersonUuid))
    }

    /// Whether each event uuid was already accepted in its project, in order: one batched
    /// RocksDB lookup, which shares the memtable and filter probes of the whole batch.
    pub fn event_uuids_seen<'u>(
        &self,
        uuids: impl IntoIterator<Item = (ProjectId, &'u str)>,
    ) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<Vec<u8>> = uuids
            .into_iter()
            .map(|(p, u)| keys::event_uuid(p, u))
            .collect();
        self.db
            .batched_multi_get_cf(self.cf("uuids"), &keys, false)
            .into_iter()
            .map(|r| Ok(r?.is_some()))
            .collect()
    }

    /// Every project.
    pub fn projects(&self) -> Result<Vec<ProjectRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf("projects"), b"i") {
            let (k, v) = item?;
            if !k.starts_with(b"i") {
                break;
            }
            out.push(codec::decode(&v).map_err(|source| StoreError::Codec {
                cf: "projects",
                source,
            })?);
        }
        Ok(out)
    }

    /// Keys (without the prefix) under `prefix` in `cf`, forward from `from` or backward from
    /// before `before`.
    pub fn scan_keys(
        &self,
        cf: &'static str,
        prefix: &[u8],
        after: Option<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(prefix.to_vec());
        ro.set_iterate_upper_bound(keys::prefix_end(prefix));
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), ro);
        match (after, reverse) {
            (None, false) => it.seek_to_first(),
            (None, true) => it.seek_to_last(),
            (Some(a), false) => {
                it.seek(a);
                if it.key() == Some(a) {
                    it.next();
                }
            }
            (Some(a), true) => it.seek_for_prev(a),
        }
        if let (Some(a), true) = (after, reverse) {
            if it.key() == Some(a) {
                it.prev();
            }
        }
        let mut out = Vec::new();
        while it.valid() && out.len() < limit {
            if let Some(k) = it.key() {
                out.push(k.to_vec());
            }
            if reverse {
                it.prev()
            } else {
                it.next()
            }
        }
        it.status()?;
        Ok(out)
    }

    /// Persons in creation order after the `order` key `after`.
    pub fn persons_page(
        &self,
        p: ProjectId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Person)>, StoreError> {
        let mut out = Vec::new();
        for k in self.scan_keys("order", &keys::project(p), after, false, limit)? {
            if let Some(person) = keys::uuid_suffix(&k)
                .map(|u| self.person(p, u))
                .transpose()?
                .flatten()
            {
                out.push((k, person));
            }
        }
        Ok(out)
    }

    /// Seqs of events stored under `did`, newest first, before `before`.
    pub fn event_seqs_of(
        &self,
        p: ProjectId,
        did: &str,
        before: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<Seq>, StoreError> {
        let prefix = keys::did(p, did);
        let after = before.map(|s| keys::did_seq(p, did, s));
        let ks = self.scan_keys("evdid", &prefix, after.as_deref(), true, limit)?;
        Ok(ks.iter().filter_map(|k| keys::seq_suffix(k)).collect())
    }

    /// Seqs of the log entries that concern a person, oldest first.
    pub fn history_of(&self, p: ProjectId, uuid: PersonUuid) -> Result<Vec<Seq>, StoreError> {
        let ks = self.scan_keys("hist", &keys::person(p, uuid), None, false, usize::MAX)?;
        Ok(ks.iter().filter_map(|k| keys::seq_suffix(k)).collect())
    }

    /// Seqs of the log entries that concern a distinct ID, oldest first.
    pub fn history_of_did(&self, p: ProjectId, did: &str) -> Result<Vec<Seq>, StoreError> {
        let ks = self.scan_keys("didhist", &keys::did(p, did), None, false, usize::MAX)?;
        Ok(ks.iter().filter_map(|k| keys::seq_suffix(k)).collect())
    }

    /// Warnings of a project, newest first.
    pub fn warnings(&self, p: ProjectId, limit: usize) -> Result<Vec<Warning>, StoreError> {
        let mut out = Vec::new();
        for k in self.scan_keys("warnings", &keys::project(p), None, true, limit)? {
            if let Some(w) = self.decoded("warnings", &k)? {
                out.push(w);
            }
        }
        Ok(out)
    }

    /// The last rate-limited warning of every (project, kind, distinct ID), to restore the
    /// once-an-hour limit after a restart.
    pub fn rate_limited_warnings(&self) -> Result<Vec<(ProjectId, Warning)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf("limits"), IteratorMode::Start) {
            let (k, v) = item?;
            let project = ProjectId(u32::from_be_bytes(
                k.get(..4)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or_default(),
            ));
            let w = codec::decode(&v).map_err(|source| StoreError::Codec {
                cf: "limits",
                source,
            })?;
            out.push((project, w));
        }
        Ok(out)
    }

    /// A project by token.
    pub fn project_id(&self, token: &str) -> Result<Option<ProjectId>, StoreError> {
        Ok(self
            .get("projects", &keys::project_by_token(token))?
            .and_then(|b| b.try_into().ok())
            .map(|b| ProjectId(u32::from_be_bytes(b))))
    }

    /// A project by id.
    pub fn project(&self, id: ProjectId) -> Result<Option<ProjectRecord>, StoreError> {
        self.decoded("projects", &keys::project_by_id(id))
    }

    /// The settings of a project, when it was ever configured.
    pub fn project_settings(&self, p: ProjectId) -> Result<Option<ProjectSettings>, StoreError> {
        self.decoded("settings", &keys::settings(p))
    }

    /// The settings of every configured project.
    pub fn all_settings(&self) -> Result<Vec<(ProjectId, ProjectSettings)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf("settings"), IteratorMode::Start)
        {
            let (k, v) = item?;
            let Some(id) = k.get(..4).and_then(|b| b.try_into().ok()) else {
                continue;
            };
            let s = codec::decode(&v).map_err(|source| StoreError::Codec {
                cf: "settings",
                source,
            })?;
            out.push((ProjectId(u32::from_be_bytes(id)), s));
        }
        Ok(out)
    }

    /// Every event waiting in the conversion buffer, in arrival order: (seq of the entry that
    /// buffered it, project, release time, event).
    pub fn buffered_events(&self) -> Result<Vec<BufferedRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf("buffer"), IteratorMode::Start) {
            let (k, v) = item?;
            let seq = keys::seq_of_log(&k)
                .ok_or_else(|| StoreError::Corrupt("buffer key is not 8 bytes".into()))?;
            let (project, release_at_ms, event) =
                codec::decode(&v).map_err(|source| StoreError::Codec {
                    cf: "buffer",
                    source,
                })?;
            out.push(BufferedRecord {
                seq,
                project,
                release_at_ms,
                event,
            });
        }
        Ok(out)
    }

    /// The events of `project` waiting in the conversion buffer, oldest first: how many, and
    /// the first `limit` of them. Only their project is decoded for the others, whose
    /// properties may be most of the buffer.
    pub fn buffered_events_of(
        &self,
        project: ProjectId,
        limit: usize,
    ) -> Result<(usize, Vec<BufferedRecord>), StoreError> {
        let (mut count, mut out) = (0, Vec::new());
        let codec_error = |source| StoreError::Codec {
            cf: "buffer",
            source,
        };
        for item in self.db.iterator_cf(self.cf("buffer"), IteratorMode::Start) {
            let (k, v) = item?;
            // The value starts with the project: decoding only that skips the rest.
            let (of, _): (ProjectId, i64) = codec::decode(&v).map_err(codec_error)?;
            if of != project {
                continue;
            }
            count += 1;
            if out.len() < limit {
                let seq = keys::seq_of_log(&k)
                    .ok_or_else(|| StoreError::Corrupt("buffer key is not 8 bytes".into()))?;
                let (project, release_at_ms, event) = codec::decode(&v).map_err(codec_error)?;
                out.push(BufferedRecord {
                    seq,
                    project,
                    release_at_ms,
                    event,
                });
            }
        }
        Ok((count, out))
    }

    /// Visit every stored event named `name` with a timestamp in `[from_ms, to_ms]`, in time
    /// order: `f(timestamp_ms, seq, distinct_id)`. Reads the insights index only.
    pub fn for_each_event_named(
        &self,
        p: ProjectId,
        name: &str,
        from_ms: i64,
        to_ms: i64,
        mut f: impl FnMut(i64, Seq, &[u8]),
    ) -> Result<(), StoreError> {
        let (lower, upper) = event_name_bounds(p, name, from_ms, to_ms);
        let mut it = self.scan("evname", Some(lower), Some(upper));
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if let Some((ms, seq)) = keys::time_seq_suffix(k) {
                f(ms, seq, v);
            }
            it.next();
        }
        it.status()?;
        Ok(())
    }

    /// An iterator at the first key of a whole column family, for one long sequential read
    /// (verify, snapshots): see [`Store::scan`].
    pub fn full_scan(&self, cf: &str) -> rocksdb::DBRawIterator<'_> {
        self.scan(cf, None, None)
    }

    /// How many keys a column family holds, exactly (one sequential read of all of them).
    pub fn count_keys(&self, cf: &str) -> Result<u64, StoreError> {
        let (mut n, mut it) = (0, self.full_scan(cf));
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()?;
        Ok(n)
    }

    /// An iterator positioned at `lower` (or the first key) for one long sequential read up to
    /// `upper` (or the end): large readahead, and no filling of the block cache that point
    /// reads rely on.
    fn scan(
        &self,
        cf: &str,
        lower: Option<Vec<u8>>,
        upper: Option<Vec<u8>>,
    ) -> rocksdb::DBRawIterator<'_> {
        let mut ro = ReadOptions::default();
        if let Some(l) = lower {
            ro.set_iterate_lower_bound(l);
        }
        if let Some(u) = upper {
            ro.set_iterate_upper_bound(u);
        }
        ro.fill_cache(false);
        ro.set_readahead_size(4 << 20);
        ro.set_total_order_seek(true);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), ro);
        it.seek_to_first();
        it
    }

    /// The persons of many distinct IDs at once (one batched read).
    pub fn persons_of(
        &self,
        p: ProjectId,
        dids: &[&[u8]],
    ) -> Result<Vec<Option<PersonUuid>>, StoreError> {
        let cf = self.cf("dids");
        let ks: Vec<Vec<u8>> = dids.iter().map(|d| keys::did_bytes(p, d)).collect();
        self.db
            .batched_multi_get_cf(cf, ks.iter(), false)
            .into_iter()
            .map(|r| {
                Ok(r?
                    .and_then(|b| uuid::Uuid::from_slice(&b).ok())
                    .map(PersonUuid))
            })
            .collect()
    }

    /// Close the database on this thread, once this is its last handle (waiting up to `wait`
    /// for the others to be dropped). RocksDB must be closed before the process exits: a
    /// database closed during the exit (the last handle dropped by a thread that outlives
    /// `main`, such as an HTTP worker finishing its shutdown) locks mutexes the exit has
    /// already destroyed, and aborts ("pthread lock: Invalid argument"). Should a handle
    /// outlive the wait, RocksDB's background work is stopped instead, which is most of that
    /// risk, and `false` is returned.
    pub fn close(self, wait: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + wait;
        while Arc::strong_count(&self.db) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let sole = Arc::strong_count(&self.db) == 1;
        if !sole {
            self.db.cancel_all_background_work(true);
        }
        sole
    }

    /// Write every memtable to SST files (all column families at once), so that the next open
    /// has no write-ahead log to replay: a clean stop then restarts in milliseconds instead of
    /// replaying up to a memtable's worth of log per column family.
    pub fn flush_all(&self) -> Result<(), StoreError> {
        let cfs: Vec<&ColumnFamily> = keys::CFS.iter().map(|n| self.cf(n)).collect();
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    /// Flush memtables and compact the log, so that bytes of redacted (deleted) events and
    /// obsolete WAL files leave the disk. Costs a full rewrite of the log's SST files.
    ///
    /// An error means those bytes may still be on disk, not that anything written is lost:
    /// the flush failed, RocksDB counted a background error while compacting (its manual
    /// compaction reports none to the caller), or obsolete write-ahead log files were not all
    /// archived and removed. [`TEST_FAIL_COMPACTION`] makes it fail, for the tests.
    pub fn compact_log(&self) -> Result<(), StoreError> {
        let errors = || -> Result<u64, StoreError> {
            Ok(self
                .db
                .property_int_value("rocksdb.background-errors")?
                .unwrap_or(0))
        };
        let before = errors()?;
        self.db.flush()?;
        self.db
            .compact_range_cf(self.cf("log"), None::<&[u8]>, None::<&[u8]>);
        self.db
            .compact_range_cf(self.cf("evdid"), None::<&[u8]>, None::<&[u8]>);
        let after = errors()?;
        if after > before {
            return Err(StoreError::Reclaim(format!(
                "RocksDB reported {} background error(s) while compacting the log (see the LOG \
                 file in {})",
                after - before,
                self.db.path().display()
            )));
        }
        if std::env::var_os(TEST_FAIL_COMPACTION).is_some() {
            return Err(StoreError::Reclaim(format!(
                "{TEST_FAIL_COMPACTION} is set: the compaction is made to fail"
            )));
        }
        let keep = self
            .db
            .property_int_value("rocksdb.min-log-number-to-keep")?
            .unwrap_or(0);
        let patience = std::time::Duration::from_secs(5);
        if !wal::wait_archived(self.db.path(), keep, patience) {
            return Err(StoreError::Reclaim(format!(
                "RocksDB did not archive the obsolete write-ahead log files of {} within {} s",
                self.db.path().display(),
                patience.as_secs()
            )));
        }
        let _held = self.hold_wal_archive();
        wal::purge(self.db.path());
        if let Some(left) = wal::archived_below(self.db.path(), keep).first() {
            return Err(StoreError::Reclaim(format!(
                "the obsolete write-ahead log file {} could not be removed",
                left.display()
            )));
        }
        Ok(())
    }

    /// While the guard lives, nothing removes or shrinks the archived write-ahead log files
    /// (none when the store has no reaper: opened read-only). A checkpoint must hold it: RocksDB
    /// lists the archive and then reads each file's size ([`wal::WalReaper::hold`]).
    pub fn hold_wal_archive(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.reaper.as_deref().map(wal::WalReaper::hold)
    }

    /// Number of keys RocksDB estimates in a column family (for stats and metrics).
    pub fn estimate_keys(&self, cf: &str) -> u64 {
        self.db
            .property_int_value_cf(self.cf(cf), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

/// The head of a `persons` record, borrowed from the stored bytes: the fields of
/// [`Person`] up to its properties, which stay JSON text. Reading a person's properties this way
/// skips building its property map and its list of distinct IDs.
#[derive(Deserialize)]
struct PersonHead<'a> {
    _project: ProjectId,
    _uuid: PersonUuid,
    _distinct_ids: SkipStrs,
    properties: &'a str,
}

/// A sequence of strings read and dropped without allocating.
struct SkipStrs;

impl<'de> Deserialize<'de> for SkipStrs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SkipStrs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of strings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<SkipStrs, A::Error> {
                while s.next_element::<&'de str>()?.is_some() {}
                Ok(SkipStrs)
            }
        }
        d.deserialize_seq(V)
    }
}

/// The properties (JSON text) of an encoded person record.
fn person_properties_json(bytes: &[u8]) -> Result<&str, StoreError> {
    let codec_error = |source| StoreError::Codec {
        cf: "persons",
        source,
    };
    let (&version, body) = bytes.split_first().ok_or(codec_error(CodecError::Empty))?;
    if version != codec::FORMAT_VERSION {
        return Err(codec_error(CodecError::UnknownVersion(version)));
    }
    let head: PersonHead<'_> =
        bincode::deserialize(body).map_err(|e| codec_error(CodecError::Bincode(e)))?;
    Ok(head.properties)
}

/// The seq of a `log` key.
fn log_seq(key: &[u8]) -> Result<Seq, StoreError> {
    keys::seq_of_log(key).ok_or_else(|| StoreError::Corrupt("log key is not 8 bytes".into()))
}

/// The `evname` keys of the events named `name` with a timestamp in `[from_ms, to_ms]`: the
/// lower bound (included) and the upper bound (excluded) of a range read.
fn event_name_bounds(p: ProjectId, name: &str, from_ms: i64, to_ms: i64) -> (Vec<u8>, Vec<u8>) {
    let prefix = keys::event_name(p, name);
    let mut lower = prefix.clone();
    lower.extend_from_slice(&keys::sortable_ms(from_ms));
    let upper = match to_ms.checked_add(1) {
        Some(t) => [prefix.as_slice(), &keys::sortable_ms(t)].concat(),
        None => keys::prefix_end(&prefix),
    };
    (lower, upper)
}

impl Store {
    /// The first and last timestamps of the events named `name` within `[from_ms, to_ms]`, or
    /// `None` when there are none: the span to cut into slices that threads scan side by side.
    pub fn event_time_span(
        &self,
        p: ProjectId,
        name: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let (lower, upper) = event_name_bounds(p, name, from_ms, to_ms);
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower);
        ro.set_iterate_upper_bound(upper);
        let mut it = self.db.raw_iterator_cf_opt(self.cf("evname"), ro);
        it.seek_to_first();
        let first = it.key().and_then(keys::time_seq_suffix).map(|(ms, _)| ms);
        it.seek_to_last();
        let last = it.key().and_then(keys::time_seq_suffix).map(|(ms, _)| ms);
        it.status()?;
        Ok(first.zip(last))
    }

    /// Visit every distinct ID of a project with its person, from `from` (included) to `to`
    /// (excluded), in key order (shorter IDs first, then bytewise); `None` is the project's
    /// first or last. Lets threads share one sequential read.
    pub fn for_each_did_between(
        &self,
        p: ProjectId,
        from: Option<&[u8]>,
        to: Option<&[u8]>,
        mut f: impl FnMut(&[u8], PersonUuid),
    ) -> Result<(), StoreError> {
        let prefix = keys::project(p);
        let key = |d: &[u8]| {
            let mut k = prefix.clone();
            k.extend_from_slice(&(d.len().min(u16::MAX as usize) as u16).to_be_bytes());
            k.extend_from_slice(d);
            k
        };
        let lower = from.map_or_else(|| prefix.clone(), key);
        let upper = to.map_or_else(|| keys::prefix_end(&prefix), key);
        let mut it = self.scan("dids", Some(lower), Some(upper));
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if let (Some(did), Ok(u)) = (k.get(6..), uuid::Uuid::from_slice(v)) {
                f(did, PersonUuid(u));
            }
            it.next();
        }
        it.status()?;
        Ok(())
    }

    /// Visit the persons of a project whose uuid's first byte is in `[from, to)` (`to = None`:
    /// through 0xff) with their properties as stored JSON text, without decoding the rest of
    /// the record: `f(uuid, properties)`. One sequential read; the uuids (v5) spread evenly over
    /// first bytes, so threads can split the project by them.
    pub fn for_each_person_properties(
        &self,
        p: ProjectId,
        from: u8,
        to: Option<u8>,
        mut f: impl FnMut(PersonUuid, &str) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let prefix = keys::project(p);
        let mut lower = prefix.clone();
        lower.push(from);
        let upper = match to {
            Some(t) => {
                let mut u = prefix.clone();
                u.push(t);
                u
            }
            None => keys::prefix_end(&prefix),
        };
        let mut it = self.scan("persons", Some(lower), Some(upper));
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if let Some(u) = keys::uuid_suffix(k) {
                f(u, person_properties_json(v)?)?;
            }
            it.next();
        }
        it.status()?;
        Ok(())
    }

    /// One person's properties as stored JSON text, without decoding the rest of the record.
    pub fn person_properties<R>(
        &self,
        p: ProjectId,
        uuid: PersonUuid,
        f: impl FnOnce(&str) -> R,
    ) -> Result<Option<R>, StoreError> {
        match self
            .db
            .get_pinned_cf(self.cf("persons"), keys::person(p, uuid))?
        {
            None => Ok(None),
            Some(b) => Ok(Some(f(person_properties_json(&b)?))),
        }
    }
}

#[cfg(test)]
mod person_head_tests {
    use super::*;
    use crate::domain::Props;

    #[test]
    fn the_head_of_a_person_record_holds_its_properties_text() {
        let mut props = serde_json::Map::new();
        props.insert("email".into(), serde_json::json!("a\"b@x.com"));
        props.insert("n".into(), serde_json::json!(1.5));
        let person = Person {
            project: ProjectId(7),
            uuid: PersonUuid(uuid::Uuid::from_bytes([9; 16])),
            distinct_ids: vec!["a".into(), "bé".into(), String::new()],
            properties: Props(props.clone()),
            is_identified: true,
            created_at_ms: -5,
            version: 3,
            created_seq: Seq(11),
        };
        let bytes = codec::encode(&person);
        let text = person_properties_json(&bytes).unwrap();
        let back: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).unwrap();
        assert_eq!(back, props);
        assert!(person_properties_json(&[2, 0]).is_err());
        assert!(person_properties_json(&bytes[..bytes.len() / 2]).is_err());
    }
}

#[cfg(test)]
mod options_tests {
    use super::*;

    /// The options RocksDB wrote into the `OPTIONS` file of a new store, per section
    /// (`DBOptions`, `CFOptions "name"`, ...): the options the binding has no setter for are
    /// set only by text, which RocksDB would otherwise be free to ignore.
    fn written_options() -> std::collections::HashMap<String, String> {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let dir = dir.path();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with("OPTIONS-") && !name.ends_with(".dbtmp")
            })
            .collect();
        files.sort();
        let text = std::fs::read_to_string(files.last().expect("an OPTIONS file")).unwrap();
        let mut sections = std::collections::HashMap::new();
        let mut current = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = name.to_string();
            } else if !line.is_empty() && !line.starts_with('#') {
                let section: &mut String = sections.entry(current.clone()).or_default();
                section.push_str(line);
                section.push('\n');
            }
        }
        sections
    }

    #[test]
    fn the_options_set_by_text_reach_the_store() {
        let written = written_options();
        assert!(written["DBOptions"].contains("avoid_flush_during_recovery=true\n"));
        for cf in keys::CFS {
            let section = &written[&format!("CFOptions \"{cf}\"")];
            let hint = match insert_hint(cf) {
                "" => "nullptr".to_string(),
                text => text.rsplit('=').next().unwrap().to_string(),
            };
            assert!(
                section.contains(&format!(
                    "memtable_insert_with_hint_prefix_extractor={hint}\n"
                )),
                "{cf}: {section}"
            );
        }
        assert_ne!(insert_hint("hist"), "");
    }

    #[test]
    fn only_query_only_column_families_compact_level_0_later() {
        let written = written_options();
        for cf in keys::CFS {
            let section = &written[&format!("CFOptions \"{cf}\"")];
            let trigger = if QUERY_ONLY_CFS.contains(&cf) {
                QUERY_ONLY_L0_TRIGGER
            } else {
                4
            };
            assert!(
                section.contains(&format!("level0_file_num_compaction_trigger={trigger}\n")),
                "{cf}: {section}"
            );
        }
        // The write path's lookups keep RocksDB's default: more level-0 files to check cost
        // the router more than the compaction saves (benches/README.md, session 16).
        for cf in POINT_LOOKUP_CFS {
            assert!(!QUERY_ONLY_CFS.contains(&cf), "{cf}");
        }
    }
}
