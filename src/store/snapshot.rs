//! Snapshots: a RocksDB checkpoint (consistent across column families: atomic flush) plus a
//! manifest with counts and a SHA-256 of every file. Restore copies it into an empty data dir in
//! one pass (each byte read once, hashed and written), optionally cutting the log at a point in
//! time and rebuilding derived state from it. `verify` is the thorough check: it also replays
//! the whole log and compares it with the snapshot's derived state.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::db::{Store, StoreError, RESTORE_MARKER};
use super::recovery::{clear_derived, recover};
use super::verify::verify as replay_and_compare;
use crate::domain::Seq;

/// Version of the manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

/// Name of the manifest inside a snapshot directory.
pub const MANIFEST: &str = "manifest.json";

/// The directory of a snapshot that holds the RocksDB checkpoint's files.
const SNAPSHOT_DB: &str = "db";

/// Counts recorded in a manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Projects.
    pub projects: u64,
    /// Persons.
    pub persons: u64,
    /// Distinct IDs.
    pub distinct_ids: u64,
    /// Stored events.
    pub events: u64,
    /// Log entries.
    pub log_entries: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} projects, {} persons, {} distinct IDs, {} events, {} log entries",
            self.projects, self.persons, self.distinct_ids, self.events, self.log_entries
        )
    }
}

/// One file of a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileSum {
    /// Path relative to the snapshot's `db/`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// What a snapshot holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The log format of its entries.
    pub log_format: u8,
    /// idstitch version that wrote it.
    pub idstitch_version: String,
    /// Last log seq in the snapshot.
    pub last_seq: u64,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Counts.
    pub counts: Counts,
    /// Every file with its checksum.
    pub files: Vec<FileSum>,
}

/// A phase of [`verify`] or [`restore`], as told to their `progress` callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `verify` (and `restore --full-verify`) checking every file's size and SHA-256: bytes.
    Checksum,
    /// Replaying the snapshot's log and comparing it with its derived state: entries.
    Replay,
    /// Copying the files into the data dir, each hashed as it is read: bytes.
    Copy,
    /// `--as-of`: rebuilding derived state from the cut log: entries.
    AsOfReplay,
}

impl Phase {
    /// Whether `done`/`total` count bytes (else log entries).
    pub fn in_bytes(self) -> bool {
        matches!(self, Phase::Checksum | Phase::Copy)
    }
}

/// Errors of snapshot tooling.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// File-system trouble.
    #[error("{0}")]
    Io(String),
    /// The user asked for something that cannot be done (exit 1).
    #[error("{0}")]
    Refused(String),
    /// The snapshot is damaged (exit 3).
    #[error("{0}")]
    Corrupt(String),
}

fn io(context: &str, path: &Path, e: std::io::Error) -> SnapshotError {
    SnapshotError::Io(format!("{context} {}: {e}", path.display()))
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, SnapshotError> {
    let mut f = fs::File::open(path).map_err(|e| io("cannot open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Check every file's SHA-256 against the manifest, on as many threads as there are cores
/// (this thread one of them): the files are hashed before anything else runs, and one core
/// alone left the others idle. `progress(bytes done, bytes in all)` is told on this thread.
/// Of several bad files, the first in the manifest's order is named.
fn check_sums(
    dir: &Path,
    files: &[FileSum],
    mut progress: impl FnMut(u64, u64),
) -> Result<(), SnapshotError> {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let total: u64 = files.iter().map(|f| f.size).sum();
    progress(0, total);
    // Largest first, so that no thread is left with one big file at the end.
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(files[i].size));
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    // The first error of each file that failed, by its index in the manifest.
    let check = |on_file: &mut dyn FnMut()| {
        let mut failed = Vec::new();
        while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
            let p = dir.join(&files[i].name);
            match sha256_file(&p) {
                Ok(sum) if sum == files[i].sha256 => {}
                Ok(_) => failed.push((
                    i,
                    SnapshotError::Corrupt(format!(
                        "file {} does not match its checksum",
                        p.display()
                    )),
                )),
                Err(e) => failed.push((i, e)),
            }
            done.fetch_add(files[i].size, Ordering::Relaxed);
            on_file();
        }
        failed
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
    let mut failed = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .map(|_| scope.spawn(|| check(&mut || {})))
            .collect();
        let mut failed = check(&mut || progress(done.load(Ordering::Relaxed), total));
        for h in helpers {
            failed.extend(h.join().unwrap_or_else(|_| {
                vec![(0, SnapshotError::Io("a checksum thread panicked".into()))]
            }));
        }
        failed
    });
    progress(total, total);
    failed.sort_by_key(|(i, _)| *i);
    match failed.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// Exact number of keys in one column family: a full scan that copies nothing (the raw
/// iterator hands out borrowed keys, and we do not even look at the values), reads ahead 4 MiB
/// at a time and leaves the block cache alone (a snapshot of a running daemon must not evict
/// its working set).
/// The column families [`counts`] scans, in the order of [`Counts`]' fields.
const COUNTED_CFS: [&str; 4] = ["persons", "dids", "evdid", "log"];

/// Count what a store holds (exactly: every key of `persons`, `dids`, `evdid` and `log` is
/// visited), one column family per thread.
pub fn counts(store: &Store) -> Result<Counts, StoreError> {
    std::thread::scope(|s| {
        let scans = COUNTED_CFS.map(|cf| s.spawn(move || store.count_keys(cf)));
        let projects = store.projects()?.len() as u64;
        let [persons, distinct_ids, events, log_entries] = scans.map(join_scan);
        Ok(Counts {
            projects,
            persons: persons?,
            distinct_ids: distinct_ids?,
            events: events?,
            log_entries: log_entries?,
        })
    })
}

fn join_scan<T>(
    h: std::thread::ScopedJoinHandle<'_, Result<T, StoreError>>,
) -> Result<T, StoreError> {
    h.join()
        .unwrap_or_else(|_| Err(StoreError::Corrupt("a counting thread panicked".into())))
}

fn list_files(dir: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| io("cannot list", dir, e))? {
        let e = e.map_err(|e| io("cannot list", dir, e))?;
        if e.path().is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Size and SHA-256 of each of `paths`; `progress(done, total)` in bytes after each file.
fn checksum_files(
    paths: &[PathBuf],
    total: u64,
    progress: &mut impl FnMut(u64, u64),
) -> Result<Vec<FileSum>, SnapshotError> {
    let mut done = 0;
    let mut files = Vec::new();
    for p in paths {
        let size = p.metadata().map_err(|e| io("cannot stat", p, e))?.len();
        files.push(FileSum {
            name: p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            size,
            sha256: sha256_file(p)?,
        });
        done += size;
        progress(done, total);
    }
    Ok(files)
}

/// Write a snapshot of `store` into the new directory `out`; `progress(done, total)` per file.
pub fn create(
    store: &Store,
    out: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<Manifest, SnapshotError> {
    if out.exists()
        && fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(SnapshotError::Refused(format!(
            "{} exists and is not empty: choose a new path",
            out.display()
        )));
    }
    fs::create_dir_all(out).map_err(|e| io("cannot create", out, e))?;
    let started = Instant::now();
    let db_dir = out.join(SNAPSHOT_DB);
    {
        // The reaper must not remove an archived WAL file between RocksDB's listing and its
        // reading of that file's size.
        let _held = store.hold_wal_archive();
        rocksdb::checkpoint::Checkpoint::new(store.db())
            .and_then(|c| c.create_checkpoint(&db_dir))
            .map_err(StoreError::from)?;
    }
    let checkpointed = Instant::now();
    let snap = Store::open_read_only(&db_dir)?;
    let last_seq = snap.last_log_seq()?.0;
    let paths = list_files(&db_dir)?;
    let total: u64 = paths
        .iter()
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum();
    // Counting (four column-family scans, on their own threads) and checksumming (here, so
    // that `progress` need not be Send) read different things: run them at the same time.
    let (counts, files) = std::thread::scope(|s| {
        let counting = s.spawn(|| {
            let t = Instant::now();
            let c = counts(&snap);
            tracing::debug!(secs = t.elapsed().as_secs_f64(), "snapshot: counted");
            c
        });
        let t = Instant::now();
        let files = checksum_files(&paths, total, &mut progress);
        tracing::debug!(secs = t.elapsed().as_secs_f64(), "snapshot: checksummed");
        (join_scan(counting), files)
    });
    let (counts, files) = (counts?, files?);
    drop(snap);
    tracing::debug!(
        checkpoint_secs = (checkpointed - started).as_secs_f64(),
        count_and_checksum_secs = checkpointed.elapsed().as_secs_f64(),
        "snapshot: created"
    );
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        log_format: super::codec::FORMAT_VERSION,
        idstitch_version: env!("CARGO_PKG_VERSION").to_string(),
        last_seq,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        counts,
        files,
    };
    let text =
        serde_json::to_vec_pretty(&manifest).map_err(|e| SnapshotError::Io(e.to_string()))?;
    fs::write(out.join(MANIFEST), text).map_err(|e| io("cannot write", &out.join(MANIFEST), e))?;
    Ok(manifest)
}

/// Whether a manifest file name stays inside the snapshot's `db/`: a relative path made only of
/// normal components (no `..`, `.`, root or prefix, and no empty name or empty segment).
pub fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\0')
        && name
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// The first manifest file name that would point outside the snapshot's `db/`, as an error.
fn check_file_names(m: &Manifest) -> Result<(), SnapshotError> {
    match m.files.iter().find(|f| !is_safe_file_name(&f.name)) {
        Some(f) => Err(SnapshotError::Corrupt(format!(
            "manifest entry {:?} is not a plain file name inside the snapshot's db/ \
             (absolute, '..' or empty): the manifest is damaged or crafted, do not use it",
            f.name
        ))),
        None => Ok(()),
    }
}

/// Read a snapshot's manifest.
pub fn read_manifest(snapshot: &Path) -> Result<Manifest, SnapshotError> {
    let path = snapshot.join(MANIFEST);
    let text = fs::read(&path).map_err(|e| {
        not_a_snapshot(snapshot).unwrap_or_else(|| {
            SnapshotError::Corrupt(format!("cannot read {}: {e}", path.display()))
        })
    })?;
    serde_json::from_slice(&text).map_err(|e| {
        SnapshotError::Corrupt(format!("{} is not a valid manifest: {e}", path.display()))
    })
}

/// Why `path`, whose manifest cannot be read, is the user's mistake rather than a damaged
/// snapshot (exit 1, not 3): nothing there, a data dir, or a dir with neither a manifest nor
/// the `db/` of a snapshot. `None` for a dir that looks like a snapshot.
fn not_a_snapshot(path: &Path) -> Option<SnapshotError> {
    let d = path.display();
    let why = if !path.exists() {
        format!("there is no snapshot at {d}: give the directory `idstitch snapshot create` wrote")
    } else if !path.is_dir() {
        format!(
            "{d} is a file, not a snapshot: give the directory `idstitch snapshot create` wrote"
        )
    } else if super::db::holds_store(path) {
        format!(
            "{d} is a data dir, not a snapshot: make one of it with `idstitch snapshot create \
             OUT --data-dir {d}` (or --socket while the daemon runs)"
        )
    } else if !path.join(SNAPSHOT_DB).exists() {
        format!(
            "{d} is not a snapshot (it has no {MANIFEST}): give the directory `idstitch \
             snapshot create` wrote"
        )
    } else {
        return None;
    };
    Some(SnapshotError::Refused(why))
}

/// The path of a manifest file under `db_dir`, once it is there as a regular file of the
/// listed size. Not followed: a symlink planted in db/ would be another way to read outside it.
fn present_as_listed(db_dir: &Path, f: &FileSum) -> Result<PathBuf, SnapshotError> {
    let p = db_dir.join(&f.name);
    let meta = p
        .symlink_metadata()
        .map_err(|_| SnapshotError::Corrupt(format!("file {} is missing", p.display())))?;
    if !meta.is_file() {
        return Err(SnapshotError::Corrupt(format!(
            "file {} is not a regular file",
            p.display()
        )));
    }
    if meta.len() != f.size {
        return Err(SnapshotError::Corrupt(format!(
            "file {} has {} bytes, the manifest says {}",
            p.display(),
            meta.len(),
            f.size
        )));
    }
    Ok(p)
}

/// Check a snapshot: every file name stays inside the snapshot, every file's size and
/// checksum, nothing missing or extra, the log replays to the derived state, and the manifest's
/// seq and counts match. The first problem is named. `progress(phase, done, total)` is told
/// [`Phase::Checksum`] (bytes) and then [`Phase::Replay`] (log entries).
///
/// A snapshot whose derived state another idstitch wrote, in another format (what
/// [`super::verify::other_derived_format`] returns, given back beside the manifest), has only
/// its log replayed: its persons are not compared with the replay, since this build may derive
/// some entries differently, and the manifest's counts are checked against its rows as they
/// are. A daemon started on its restore rebuilds that state from the log.
pub fn verify(
    snapshot: &Path,
    mut progress: impl FnMut(Phase, u64, u64),
) -> Result<(Manifest, Option<u64>), SnapshotError> {
    // Names are checked before any file is opened: a crafted one (`../x`, `/etc/x`) would
    // make us read outside the snapshot.
    let m = check_layout(snapshot)?;
    let db_dir = snapshot.join(SNAPSHOT_DB);
    check_sums(&db_dir, &m.files, |done, total| {
        progress(Phase::Checksum, done, total)
    })?;
    let store = Store::open_read_only(&db_dir)
        .map_err(|e| SnapshotError::Corrupt(format!("snapshot does not open: {e}")))?;
    let last = store.last_log_seq()?.0;
    if last != m.last_seq {
        return Err(SnapshotError::Corrupt(format!(
            "log ends at seq {last}, the manifest says {}",
            m.last_seq
        )));
    }
    let other_format = super::verify::other_derived_format(&store)?;
    progress(Phase::Replay, 0, m.last_seq);
    // Only the stored events are counted by a scan of their own (beside the replay): the
    // replay checks that the log runs from seq 1 to `last` without a gap, and the comparison
    // that the live persons and distinct IDs are exactly the replayed ones, so those counts
    // are the replay's.
    let (events, replayed) = std::thread::scope(|s| {
        let events = s.spawn(|| store.count_keys("evdid"));
        let replayed = replay_and_compare(
            &store,
            |seq| progress(Phase::Replay, seq.0, m.last_seq),
            1,
            false,
        );
        (join_scan(events), replayed)
    });
    let (scratch, diffs) = replayed.map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    progress(Phase::Replay, m.last_seq, m.last_seq);
    if let Some(d) = diffs.first() {
        return Err(SnapshotError::Corrupt(format!(
            "derived state disagrees with the log: {d}"
        )));
    }
    let mut c = Counts {
        projects: store.projects()?.len() as u64,
        persons: scratch.person_count() as u64,
        distinct_ids: scratch.distinct_id_count() as u64,
        events: events?,
        log_entries: last,
    };
    if other_format.is_some() {
        // The manifest counted another build's rows, which this build's replay need not
        // match: they are counted as they are.
        c.persons = store.count_keys("persons")?;
        c.distinct_ids = store.count_keys("dids")?;
    }
    super::verify::discard(scratch);
    if c != m.counts {
        return Err(SnapshotError::Corrupt(format!(
            "counts {c:?} differ from the manifest's {:?}",
            m.counts
        )));
    }
    Ok((m, other_format))
}

/// Where to cut the log when restoring.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AsOf {
    /// Keep entries up to and including this seq.
    Seq(u64),
    /// Keep entries ingested at or before this time (ms since the epoch).
    Time(i64),
}

/// Copy buffer of [`restore`]: large reads and writes, few system calls.
const COPY_BUF: usize = 4 << 20;

/// Threads fsyncing [`restore`]'s finished files while the next ones are copied. They wait on
/// the disk, not the CPU: several fsyncs in flight keep the disk's queue fuller than one.
const SYNCERS: usize = 4;

/// The checks of a snapshot that need no reading of its files: manifest format, safe names,
/// every listed file present as a regular file of its listed size, nothing unlisted in `db/`.
fn check_layout(snapshot: &Path) -> Result<Manifest, SnapshotError> {
    let m = read_manifest(snapshot)?;
    if m.format != MANIFEST_FORMAT {
        return Err(SnapshotError::Corrupt(format!(
            "manifest format {} is not {MANIFEST_FORMAT}",
            m.format
        )));
    }
    check_file_names(&m)?;
    let db_dir = snapshot.join(SNAPSHOT_DB);
    for f in &m.files {
        present_as_listed(&db_dir, f)?;
    }
    check_no_extra_files(&m, &db_dir)?;
    Ok(m)
}

fn check_no_extra_files(m: &Manifest, db_dir: &Path) -> Result<(), SnapshotError> {
    for p in list_files(db_dir)? {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !m.files.iter().any(|f| f.name == name) {
            return Err(SnapshotError::Corrupt(format!(
                "file {} is not in the manifest",
                p.display()
            )));
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> Result<(), SnapshotError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", dir, e))
}

/// Copy every manifest file from `db_dir` into `to`, reading each byte once: it is hashed and
/// written in the same loop, and the hash compared with the manifest's at the file's end.
/// [`SYNCERS`] threads fsync the finished files while the next ones are copied; the
/// directories are fsynced last. Returns the bytes copied.
fn copy_checked(
    m: &Manifest,
    db_dir: &Path,
    to: &Path,
    progress: &mut impl FnMut(Phase, u64, u64),
) -> Result<u64, SnapshotError> {
    fs::create_dir_all(to).map_err(|e| io("cannot create", to, e))?;
    let total: u64 = m.files.iter().map(|f| f.size).sum();
    progress(Phase::Copy, 0, total);
    let (tx, rx) = std::sync::mpsc::channel::<(fs::File, PathBuf)>();
    let rx = std::sync::Mutex::new(rx);
    std::thread::scope(|s| {
        let syncers: Vec<_> = (0..SYNCERS)
            .map(|_| {
                s.spawn(|| -> Result<(), SnapshotError> {
                    loop {
                        let next = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => {
                                return Err(SnapshotError::Io("an fsync thread panicked".into()))
                            }
                        };
                        let Ok((f, p)) = next else { return Ok(()) };
                        f.sync_all().map_err(|e| io("cannot sync", &p, e))?;
                    }
                })
            })
            .collect();
        let copied = (|| {
            let mut buf = vec![0u8; COPY_BUF];
            let mut done = 0;
            let mut dirs = vec![to.to_path_buf()];
            for (i, f) in m.files.iter().enumerate() {
                let src = db_dir.join(&f.name);
                let dest = to.join(&f.name);
                if let Some(parent) = dest.parent().filter(|p| *p != to) {
                    fs::create_dir_all(parent).map_err(|e| io("cannot create", parent, e))?;
                    dirs.push(parent.to_path_buf());
                }
                let mut input = fs::File::open(&src).map_err(|e| io("cannot open", &src, e))?;
                let mut output = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dest)
                    .map_err(|e| io("cannot create", &dest, e))?;
                let mut h = Sha256::new();
                let mut n = 0u64;
                loop {
                    let k = input
                        .read(&mut buf)
                        .map_err(|e| io("cannot read", &src, e))?;
                    if k == 0 {
                        break;
                    }
                    h.update(&buf[..k]);
                    output
                        .write_all(&buf[..k])
                        .map_err(|e| io("cannot write", &dest, e))?;
                    n += k as u64;
                    progress(Phase::Copy, done + n.min(f.size), total);
                }
                let sum: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
                if n != f.size {
                    return Err(SnapshotError::Corrupt(format!(
                        "file {} has {n} bytes, the manifest says {}",
                        src.display(),
                        f.size
                    )));
                }
                if sum != f.sha256 {
                    return Err(SnapshotError::Corrupt(format!(
                        "file {} does not match its checksum",
                        src.display()
                    )));
                }
                done += n;
                test_abort(&format!("files:{}", i + 1));
                // Only fails if the syncer stopped on an error, which its join reports.
                let _ = tx.send((output, dest));
            }
            Ok((done, dirs))
        })();
        drop(tx);
        let synced: Vec<_> = syncers
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(SnapshotError::Io("an fsync thread panicked".into())))
            })
            .collect();
        let (done, mut dirs) = copied?;
        synced.into_iter().collect::<Result<Vec<()>, _>>()?;
        dirs.sort();
        dirs.dedup();
        for d in dirs.iter().rev() {
            fsync_dir(d)?;
        }
        Ok(done)
    })
}

/// What [`restore`] did.
#[derive(Debug)]
pub struct Restored {
    /// The snapshot's manifest.
    pub manifest: Manifest,
    /// Where a non-empty data dir was moved (with `force`).
    pub aside: Option<PathBuf>,
    /// Whether the data dir held an unfinished restore, replaced (with `force`).
    pub replaced_unfinished: bool,
    /// The last seq of the restored log.
    pub last: Seq,
    /// Bytes copied into the data dir.
    pub bytes: u64,
    /// Files copied into the data dir.
    pub files: u64,
    /// With `full_verify`: the snapshot's derived format when another build's, whose derived
    /// state was therefore not compared with its log ([`verify`]).
    pub other_format: Option<u64>,
}

/// How [`restore`] checks and cuts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RestoreOptions {
    /// Move a non-empty data dir aside instead of refusing.
    pub force: bool,
    /// Cut the log there and rebuild derived state.
    pub as_of: Option<AsOf>,
    /// Run the whole of [`verify`] (log replay and compare included) before copying.
    pub full_verify: bool,
}

/// Restore `snapshot` into `data_dir` in one pass over its bytes: each file is read once,
/// hashed and written, and compared with the manifest's SHA-256 at its end. Before anything is
/// written, the cheap checks (manifest format, safe names, every file present with its size,
/// nothing extra); after, the restored log must end at the manifest's seq. On any failure the
/// partial restore is removed (and a data dir moved aside by `force` moved back).
///
/// Killed part-way (`kill -9`, power loss), it leaves a data dir that nothing opens: before
/// writing anything into it, the restore puts [`RESTORE_MARKER`] there durably, and removes
/// it only once everything (copy, checks, cut, rebuild) is done and durable. A `force`d rerun
/// replaces such an unfinished restore (its files are removed, not moved aside).
///
/// A non-empty `data_dir` is refused unless `opts.force`, which moves it aside: a new dir
/// holding only the marker is made next to it and the two are swapped in one atomic rename
/// (`RENAME_EXCHANGE`), so that the data dir's path never lacks a store or a marker.
/// With `opts.full_verify`, the whole [`verify`] runs first ([`Phase::Checksum`],
/// [`Phase::Replay`]). With `opts.as_of`, the log is cut there and derived state rebuilt
/// ([`Phase::AsOfReplay`]). `progress(phase, done, total)` is told the phases in that order,
/// [`Phase::Copy`] always. A second restore into the same data dir while one runs is
/// refused at once ([`RestoreLock`]), as is the data dir of a running daemon.
pub fn restore(
    snapshot: &Path,
    data_dir: &Path,
    opts: RestoreOptions,
    mut progress: impl FnMut(Phase, u64, u64),
) -> Result<Restored, SnapshotError> {
    // A snapshot path that names none is refused before anything is made or locked, as is a
    // cut it cannot make.
    let layout = check_layout(snapshot)?;
    if let Some(AsOf::Seq(seq)) = opts.as_of {
        if seq > layout.last_seq {
            return Err(SnapshotError::Refused(format!(
                "--as-of {seq} is past the snapshot's last seq {}: give a seq up to it, or \
                 leave out --as-of to restore all of it",
                layout.last_seq
            )));
        }
    }
    // A file where the data dir goes is the user's to move: refused before the lock is made.
    if data_dir.metadata().is_ok_and(|m| !m.is_dir()) {
        return Err(SnapshotError::Refused(format!(
            "{} is a file, not a directory: give --data-dir a directory (made if missing)",
            data_dir.display()
        )));
    }
    // Held until the restore returns: a second restore into the same dir is refused at once.
    let _lock = RestoreLock::take(data_dir, snapshot)?;
    let (m, other_format) = if opts.full_verify {
        verify(snapshot, &mut progress)?
    } else {
        (layout, None)
    };
    let existed = data_dir.exists();
    let non_empty = existed
        && fs::read_dir(data_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
    let unfinished = data_dir.join(RESTORE_MARKER).symlink_metadata().is_ok();
    // Before the refusal of a non-empty dir, whose advice (`--force`) would not help.
    if non_empty && rocksdb_lock_held(data_dir)? {
        return Err(SnapshotError::Refused(format!(
            "{} is in use: a running process (an idstitch daemon?) has its database open; \
             stop it, then restore",
            data_dir.display()
        )));
    }
    if non_empty && !opts.force {
        return Err(SnapshotError::Refused(if unfinished {
            format!(
                "{} holds an unfinished restore: pass --force to replace it",
                data_dir.display()
            )
        } else {
            format!(
                "{} is not empty: restore into an empty dir, or pass --force to move it aside",
                data_dir.display()
            )
        }));
    }
    let note = format!(
        "restore of {} started at {}",
        snapshot.display(),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let parent = parent_dir(data_dir);
    // Mark the data dir before anything in it changes; `undo` puts things back on a failure.
    let (aside, undo) = if unfinished {
        // What an interrupted restore left: part of a snapshot, nothing to keep.
        clear_but_marker(data_dir)?;
        write_marker(data_dir, &note)?;
        (None, Undo::LeaveMarked)
    } else if non_empty {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
        // Named beside the data dir from its own name: text appended to `dst/` would name a
        // path inside it.
        let mut name = data_dir
            .file_name()
            .unwrap_or(data_dir.as_os_str())
            .to_os_string();
        name.push(format!(".before-restore-{stamp}"));
        let old = parent.join(name);
        fs::create_dir(&old).map_err(|e| io("cannot create", &old, e))?;
        let swapped = write_marker(&old, &note)
            .and_then(|()| fsync_dir(&parent))
            .and_then(|()| exchange(data_dir, &old));
        if let Err(e) = swapped {
            let _ = fs::remove_dir_all(&old);
            return Err(e);
        }
        // The data dir is now the marked new one; the old store is at `old`.
        (Some(old), Undo::SwapBack)
    } else {
        fs::create_dir_all(data_dir).map_err(|e| io("cannot create", data_dir, e))?;
        if let Err(e) = write_marker(data_dir, &note) {
            let _ = Undo::Remove { existed }.run(data_dir, None, &parent);
            return Err(e);
        }
        (None, Undo::Remove { existed })
    };
    // The marked data dir's entry in its parent is durable before anything is copied.
    let done = fsync_dir(&parent)
        .and_then(|()| restore_into(snapshot, data_dir, &m, opts.as_of, &mut progress));
    let done = done.and_then(|r| {
        // The restore's own RocksDB files are synced (the copy, then `flush_wal`); their
        // directory entries too, before the marker goes.
        fsync_dir(data_dir)?;
        let marker = data_dir.join(RESTORE_MARKER);
        fs::remove_file(&marker).map_err(|e| io("cannot remove", &marker, e))?;
        fsync_dir(data_dir)?;
        Ok(r)
    });
    match done {
        Ok((last, bytes)) => Ok(Restored {
            files: m.files.len() as u64,
            manifest: m,
            aside,
            replaced_unfinished: unfinished,
            last,
            bytes,
            other_format,
        }),
        Err(e) => Err(match undo.run(data_dir, aside.as_deref(), &parent) {
            Ok(()) => e,
            Err(back) => SnapshotError::Io(format!("{e}; and {back}")),
        }),
    }
}

/// How [`restore`] leaves things as they were when it fails (not when it is killed: then the
/// marker stays, and the data dir is refused until a rerun).
enum Undo {
    /// The data dir was missing or empty: it is again.
    Remove { existed: bool },
    /// It held an unfinished restore: it still does (marked, emptied).
    LeaveMarked,
    /// It held a store, swapped with the new marked dir: swap back, remove the new one.
    SwapBack,
}

impl Undo {
    fn run(self, data_dir: &Path, aside: Option<&Path>, parent: &Path) -> Result<(), String> {
        // The marker goes last, once nothing else of the partial restore is left.
        let _ = clear_but_marker(data_dir);
        match self {
            Undo::LeaveMarked => {}
            Undo::Remove { existed } => {
                let _ = fs::remove_file(data_dir.join(RESTORE_MARKER));
                if !existed {
                    let _ = fs::remove_dir(data_dir);
                }
            }
            Undo::SwapBack => {
                let Some(old) = aside else { return Ok(()) };
                if let Err(e) = exchange(data_dir, old) {
                    return Err(format!(
                        "the old data dir could not be moved back from {} to {}: {e}",
                        old.display(),
                        data_dir.display()
                    ));
                }
                let _ = fs::remove_dir_all(old);
            }
        }
        let _ = fsync_dir(parent);
        Ok(())
    }
}

/// The directory holding `dir`'s entry.
fn parent_dir(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Write [`RESTORE_MARKER`] (saying `note`) into `dir`, durably: the file and `dir` fsynced.
fn write_marker(dir: &Path, note: &str) -> Result<(), SnapshotError> {
    let path = dir.join(RESTORE_MARKER);
    let mut f = fs::File::create(&path).map_err(|e| io("cannot create", &path, e))?;
    f.write_all(format!("{note}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io("cannot write", &path, e))?;
    fsync_dir(dir)
}

/// Remove everything in `dir` except [`RESTORE_MARKER`], then fsync `dir`.
fn clear_but_marker(dir: &Path) -> Result<(), SnapshotError> {
    for e in fs::read_dir(dir).map_err(|e| io("cannot list", dir, e))? {
        let e = e.map_err(|e| io("cannot list", dir, e))?;
        if e.file_name() == RESTORE_MARKER {
            continue;
        }
        let p = e.path();
        let gone = match p.symlink_metadata() {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&p),
            _ => fs::remove_file(&p),
        };
        gone.map_err(|e| io("cannot remove", &p, e))?;
    }
    fsync_dir(dir)
}

/// Swap the directories `a` and `b` in one atomic rename (Linux's `renameat2` with
/// `RENAME_EXCHANGE`): there is no moment at which either path is missing.
fn exchange(a: &Path, b: &Path) -> Result<(), SnapshotError> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| SnapshotError::Io(format!("{} contains a NUL byte", p.display())))
    };
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
        return Err(SnapshotError::Refused(format!(
            "cannot move {} aside: its file system cannot swap two directories atomically \
             ({e}); move it away yourself, then restore into the empty path",
            a.display()
        )));
    }
    Err(SnapshotError::Io(format!(
        "cannot swap {} with {}: {e}",
        a.display(),
        b.display()
    )))
}

/// An exclusive advisory lock (`flock`) on `<data dir>.restore-lock`, beside the data dir and
/// not in it (a forced restore swaps the dir itself away), held for a whole [`restore`]: two
/// restores into one data dir would otherwise clear, copy and swap over each other. The file
/// says which restore holds it (snapshot, pid, start time), for the one refused; it stays
/// when the restore ends (removing it would let a third restore lock a new file while a
/// second still waits on the old one). The kernel drops the lock with the process, also when
/// it is killed.
struct RestoreLock {
    _file: fs::File,
}

impl RestoreLock {
    /// The lock file of `data_dir`, beside it, by real paths (so that two spellings of one
    /// dir, through a symlink, lock one file), and the dir it is in.
    fn path(data_dir: &Path) -> Result<(PathBuf, PathBuf), SnapshotError> {
        let real = data_dir.canonicalize();
        let data_dir = real.as_deref().unwrap_or(data_dir);
        let name = data_dir.file_name().ok_or_else(|| {
            SnapshotError::Refused(format!(
                "{} does not name a directory to restore into: give the data dir's own path",
                data_dir.display()
            ))
        })?;
        let mut name = name.to_os_string();
        name.push(".restore-lock");
        let parent = parent_dir(data_dir);
        fs::create_dir_all(&parent).map_err(|e| io("cannot create", &parent, e))?;
        let parent = parent.canonicalize().unwrap_or(parent);
        Ok((parent.join(name), parent))
    }

    /// Take the lock, or refuse at once, naming the restore that holds it. Where the lock file
    /// cannot be made (a parent the user may not write, as in /var/lib layouts, restoring into
    /// an existing empty dir), the parent directory itself is locked instead: restores into
    /// its dirs then go one at a time.
    fn take(data_dir: &Path, snapshot: &Path) -> Result<RestoreLock, SnapshotError> {
        use std::os::fd::AsRawFd;
        let (path, parent) = Self::path(data_dir)?;
        let opened = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        let (mut file, locked, noted) = match opened {
            Ok(file) => (file, path, true),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                let dir = fs::File::open(&parent).map_err(|e| io("cannot open", &parent, e))?;
                (dir, parent, false)
            }
            Err(e) => return Err(io("cannot open the restore lock", &path, e)),
        };
        // SAFETY: `flock` on the descriptor `file` owns, open for the call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io("cannot lock", &locked, e));
            }
            let mut holder = String::new();
            if noted {
                let _ = file.read_to_string(&mut holder);
            }
            let holder = match holder.trim() {
                "" => "one that has not said which".to_string(),
                h => h.to_string(),
            };
            return Err(SnapshotError::Refused(format!(
                "another restore into {} is running ({holder}; it holds {}): wait for it to end, \
                 or stop it, then restore again",
                data_dir.display(),
                locked.display()
            )));
        }
        if noted {
            let note = format!(
                "restore of {} by pid {} started at {}\n",
                snapshot.display(),
                std::process::id(),
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            // Only the note: nobody waits for it to be durable.
            file.set_len(0)
                .and_then(|()| file.write_all(note.as_bytes()))
                .map_err(|e| io("cannot write", &locked, e))?;
        }
        Ok(RestoreLock { _file: file })
    }
}

/// Whether another process holds RocksDB's lock on the database in `dir`: RocksDB takes a POSIX
/// record lock (`fcntl` `F_SETLK`, write) on `dir/LOCK` for as long as the database is open,
/// and such a lock held by another process makes ours fail at once. No `LOCK` file, no
/// database ever opened there.
fn rocksdb_lock_held(dir: &Path) -> Result<bool, SnapshotError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let file = match fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io("cannot open", &path, e)),
    };
    // SAFETY: `flock` is plain data, zeroed then filled in; `fcntl` reads it for the
    // descriptor `file` owns, which stays open for the call. Closing `file` at the end of this
    // function releases the lock if we got it.
    let got = unsafe {
        let mut lock: libc::flock = std::mem::zeroed();
        lock.l_type = libc::F_WRLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock)
    };
    if got == 0 {
        return Ok(false);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EAGAIN) => Ok(true),
        _ => Err(io("cannot test the lock of", &path, e)),
    }
}

/// For tests only: the environment variable that makes [`restore`] abort (as `kill -9` would:
/// no unwinding, no clean-up) at one point, so that an interrupted restore can be made
/// deterministically instead of by racing a kill. Its value names the point: `files:K` once
/// the K-th file is copied, `before-cut` once the copy is complete and its log checked (before
/// an `--as-of` cut), `after-cut` once the log is cut and before derived state is rebuilt.
pub const TEST_ABORT_RESTORE: &str = "IDSTITCH_TEST_ABORT_RESTORE";

/// For tests only: the environment variable that makes [`restore`] pause at one point (the
/// points of [`TEST_ABORT_RESTORE`]) until its stdin ends, so that a test can act while a
/// restore is under way (it reads the line the restore prints on stderr there).
pub const TEST_PAUSE_RESTORE: &str = "IDSTITCH_TEST_PAUSE_RESTORE";

/// Abort the process if [`TEST_ABORT_RESTORE`] names `point`; pause there if
/// [`TEST_PAUSE_RESTORE`] does.
fn test_abort(point: &str) {
    static AT: std::sync::OnceLock<(Option<String>, Option<String>)> = std::sync::OnceLock::new();
    let (abort, pause) = AT.get_or_init(|| {
        (
            std::env::var(TEST_ABORT_RESTORE).ok(),
            std::env::var(TEST_PAUSE_RESTORE).ok(),
        )
    });
    if pause.as_deref() == Some(point) {
        eprintln!("idstitch: {TEST_PAUSE_RESTORE}={point}: paused until stdin ends");
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    }
    if abort.as_deref() == Some(point) {
        eprintln!("idstitch: {TEST_ABORT_RESTORE}={point}: aborting the restore here");
        std::process::abort();
    }
}

/// Copy, check the seq, cut at `as_of`: the part of [`restore`] that writes into `data_dir`.
fn restore_into(
    snapshot: &Path,
    data_dir: &Path,
    m: &Manifest,
    as_of: Option<AsOf>,
    progress: &mut impl FnMut(Phase, u64, u64),
) -> Result<(Seq, u64), SnapshotError> {
    let t = Instant::now();
    let bytes = copy_checked(m, &snapshot.join(SNAPSHOT_DB), data_dir, progress)?;
    tracing::debug!(
        secs = t.elapsed().as_secs_f64(),
        bytes,
        "restore: copied and synced"
    );
    let t = Instant::now();
    let store = Store::open_unchecked(data_dir)
        .map_err(|e| SnapshotError::Corrupt(format!("the restored snapshot does not open: {e}")))?;
    tracing::debug!(secs = t.elapsed().as_secs_f64(), "restore: opened");
    let end = store.last_log_seq()?.0;
    if end != m.last_seq {
        return Err(SnapshotError::Corrupt(format!(
            "log ends at seq {end}, the manifest says {}",
            m.last_seq
        )));
    }
    let mut last = Seq(m.last_seq);
    test_abort("before-cut");
    if let Some(cut) = as_of {
        let keep = match cut {
            AsOf::Seq(s) => s,
            AsOf::Time(t) => {
                let mut keep = 0;
                for item in store.entries_from(Seq(1)) {
                    let (seq, entry) = item?;
                    if entry.at_ms > t {
                        break;
                    }
                    keep = seq.0;
                }
                keep
            }
        };
        cut_log(&store, keep)?;
        test_abort("after-cut");
        let kept = keep.min(m.last_seq);
        progress(Phase::AsOfReplay, 0, kept);
        recover(&store, true, |seq, _| {
            progress(Phase::AsOfReplay, seq.0, kept)
        })?;
        progress(Phase::AsOfReplay, kept, kept);
        last = Seq(kept);
    }
    store.db().flush_wal(true).map_err(StoreError::from)?;
    Ok((last, bytes))
}

/// Drop the log's entries after `keep`, for a restore as of an earlier point. The derived
/// state goes first, durably: a restore killed anywhere after this leaves a data dir whose
/// next start rebuilds from the log (cut or not yet), never one that serves the persons of
/// entries cut away (recovery trusts `applied_seq` only while `meta` says the format).
fn cut_log(store: &Store, keep: u64) -> Result<(), StoreError> {
    clear_derived(store)?;
    store.db().flush_wal(true)?;
    let cf = store.cf("log");
    store
        .db()
        .delete_range_cf(cf, &Seq(keep + 1).0.to_be_bytes()[..], &[0xFFu8; 9][..])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_sums, cut_log, is_safe_file_name, sha256_file, FileSum};
    use crate::domain::{person_uuid, Change, Entry, ProjectId, Seq};
    use crate::store::{log::write_group, recovery::recover, Store};
    use std::sync::Arc;

    /// A restore as of an earlier point cuts the log, then rebuilds derived state. Killed
    /// right after the cut, the next start (an ordinary recovery) must still serve the cut
    /// log's state, not the derived state of the entries cut away.
    #[test]
    fn a_restore_killed_after_cutting_the_log_recovers_the_cut_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = ProjectId(1);
        let entries: Vec<(Seq, Arc<Entry>)> = (1..=6u64)
            .map(|i| {
                let did = format!("user-{i}");
                let change = Change::PersonCreated {
                    person: person_uuid(p, &did),
                    distinct_ids: vec![did],
                    properties: Default::default(),
                    is_identified: false,
                    created_at_ms: 0,
                };
                let entry = Entry {
                    project: p,
                    at_ms: 0,
                    cause: None,
                    changes: vec![change],
                };
                (Seq(i), Arc::new(entry))
            })
            .collect();
        write_group(&store, &entries, true).unwrap();
        recover(&store, false, |_, _| {}).unwrap();
        cut_log(&store, 4).unwrap();
        // The restore is killed here; the daemon starts on the data dir.
        let r = recover(&store, false, |_, _| {}).unwrap();
        assert_eq!(r.last_seq, Seq(4));
        for i in 1..=6u64 {
            let there = store
                .person(p, person_uuid(p, &format!("user-{i}")))
                .unwrap();
            assert_eq!(there.is_some(), i <= 4, "user-{i}");
        }
        assert_eq!(store.applied_seq().unwrap(), Seq(4));
    }

    /// Files of many sizes hashed on several threads: all good passes and tells progress up
    /// to the total; with several bad or missing, the one named is the first in the
    /// manifest's order, whichever thread met it first.
    #[test]
    fn checksums_on_several_threads_name_the_first_bad_file_in_manifest_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for i in 0..24usize {
            let name = format!("{i:06}.sst");
            let path = dir.path().join(&name);
            std::fs::write(&path, vec![i as u8; 1 + i * 37_000]).unwrap();
            files.push(FileSum {
                size: std::fs::metadata(&path).unwrap().len(),
                sha256: sha256_file(&path).unwrap(),
                name,
            });
        }
        let total: u64 = files.iter().map(|f| f.size).sum();
        let mut seen = Vec::new();
        check_sums(dir.path(), &files, |done, all| seen.push((done, all))).expect("all good");
        assert_eq!(seen.first(), Some(&(0, total)));
        assert_eq!(seen.last(), Some(&(total, total)));
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");

        // The largest files are hashed first, so the later ones in the manifest fail first.
        files[20].sha256 = "0".repeat(64);
        std::fs::remove_file(dir.path().join(&files[23].name)).unwrap();
        files[7].sha256 = "0".repeat(64);
        let err = check_sums(dir.path(), &files, |_, _| {}).expect_err("bad files");
        assert!(
            err.to_string().contains("000007.sst") && err.to_string().contains("checksum"),
            "{err}"
        );
        files[7].sha256 = sha256_file(&dir.path().join(&files[7].name)).unwrap();
        let err = check_sums(dir.path(), &files, |_, _| {}).expect_err("bad files");
        assert!(err.to_string().contains("000020.sst"), "{err}");
    }

    #[test]
    fn manifest_file_names_must_stay_inside_db() {
        for ok in [
            "000012.sst",
            "CURRENT",
            "OPTIONS-000007",
            "sub/000012.sst",
            "..sst",
        ] {
            assert!(is_safe_file_name(ok), "{ok:?} refused");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/../../x",
            "a/..",
            "/etc/passwd",
            "//x",
            "./x",
            "a/./x",
            "a//x",
            "x/",
            "a\0b",
        ] {
            assert!(!is_safe_file_name(bad), "{bad:?} accepted");
        }
    }
}
