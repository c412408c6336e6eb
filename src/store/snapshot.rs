//! Snapshots: a RocksDB checkpoint (consistent across column families: atomic flush) plus a
//! manifest with counts and a SHA-256 of every file. Restore copies it into an empty data dir,
//! optionally cutting the log at a point in time and rebuilding derived state from it.

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::db::{Store, StoreError};
use super::recovery::recover;
use super::verify::verify as replay_and_compare;
use crate::domain::Seq;

/// Version of the manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

/// Name of the manifest inside a snapshot directory.
pub const MANIFEST: &str = "manifest.json";

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
    /// Checking every file's size and SHA-256: `done`/`total` are bytes.
    Checksum,
    /// Replaying the snapshot's log and comparing it with its derived state: entries.
    Replay,
    /// Copying the files into the data dir: bytes.
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

/// Count what a store holds.
pub fn counts(store: &Store) -> Result<Counts, StoreError> {
    let count = |cf: &str| -> Result<u64, StoreError> {
        let mut n = 0;
        for item in store
            .db()
            .iterator_cf(store.cf(cf), rocksdb::IteratorMode::Start)
        {
            item?;
            n += 1;
        }
        Ok(n)
    };
    Ok(Counts {
        projects: store.projects()?.len() as u64,
        persons: count("persons")?,
        distinct_ids: count("dids")?,
        events: count("evdid")?,
        log_entries: count("log")?,
    })
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
    let db_dir = out.join("db");
    rocksdb::checkpoint::Checkpoint::new(store.db())
        .and_then(|c| c.create_checkpoint(&db_dir))
        .map_err(StoreError::from)?;
    let snap = Store::open_read_only(&db_dir)?;
    let last_seq = snap.last_log_seq()?.0;
    let counts = counts(&snap)?;
    drop(snap);
    let paths = list_files(&db_dir)?;
    let total: u64 = paths
        .iter()
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum();
    let mut done = 0;
    let mut files = Vec::new();
    for p in paths {
        let size = p.metadata().map_err(|e| io("cannot stat", &p, e))?.len();
        files.push(FileSum {
            name: p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            size,
            sha256: sha256_file(&p)?,
        });
        done += size;
        progress(done, total);
    }
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
    let text = fs::read(&path)
        .map_err(|e| SnapshotError::Corrupt(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| {
        SnapshotError::Corrupt(format!("{} is not a valid manifest: {e}", path.display()))
    })
}

/// Check a snapshot: every file name stays inside the snapshot, every file's size and
/// checksum, nothing missing or extra, the log replays to the derived state, and the manifest's
/// seq and counts match. The first problem is named. `progress(phase, done, total)` is told
/// [`Phase::Checksum`] (bytes) and then [`Phase::Replay`] (log entries).
pub fn verify(
    snapshot: &Path,
    mut progress: impl FnMut(Phase, u64, u64),
) -> Result<Manifest, SnapshotError> {
    let m = read_manifest(snapshot)?;
    if m.format != MANIFEST_FORMAT {
        return Err(SnapshotError::Corrupt(format!(
            "manifest format {} is not {MANIFEST_FORMAT}",
            m.format
        )));
    }
    // Before any file is opened: a crafted name (`../x`, `/etc/x`) would make us read outside.
    check_file_names(&m)?;
    let db_dir = snapshot.join("db");
    let total: u64 = m.files.iter().map(|f| f.size).sum();
    let mut done = 0;
    progress(Phase::Checksum, 0, total);
    for f in &m.files {
        let p = db_dir.join(&f.name);
        // Not followed: a symlink planted in db/ would be another way to read outside it.
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
        if sha256_file(&p)? != f.sha256 {
            return Err(SnapshotError::Corrupt(format!(
                "file {} does not match its checksum",
                p.display()
            )));
        }
        done += f.size;
        progress(Phase::Checksum, done, total);
    }
    for p in list_files(&db_dir)? {
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
    let store = Store::open_read_only(&db_dir)
        .map_err(|e| SnapshotError::Corrupt(format!("snapshot does not open: {e}")))?;
    let last = store.last_log_seq()?.0;
    if last != m.last_seq {
        return Err(SnapshotError::Corrupt(format!(
            "log ends at seq {last}, the manifest says {}",
            m.last_seq
        )));
    }
    let c = counts(&store)?;
    if c != m.counts {
        return Err(SnapshotError::Corrupt(format!(
            "counts {c:?} differ from the manifest's {:?}",
            m.counts
        )));
    }
    progress(Phase::Replay, 0, m.last_seq);
    let (_, diffs) =
        replay_and_compare(&store, |seq| progress(Phase::Replay, seq.0, m.last_seq), 1)
            .map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
    progress(Phase::Replay, m.last_seq, m.last_seq);
    if let Some(d) = diffs.first() {
        return Err(SnapshotError::Corrupt(format!(
            "derived state disagrees with the log: {d}"
        )));
    }
    Ok(m)
}

/// Where to cut the log when restoring.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AsOf {
    /// Keep entries up to and including this seq.
    Seq(u64),
    /// Keep entries ingested at or before this time (ms since the epoch).
    Time(i64),
}

fn copy_dir(
    from: &Path,
    to: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<(), SnapshotError> {
    fs::create_dir_all(to).map_err(|e| io("cannot create", to, e))?;
    let paths = list_files(from)?;
    let total: u64 = paths
        .iter()
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum();
    let mut done = 0;
    progress(0, total);
    for p in paths {
        let dest = to.join(p.file_name().unwrap_or_default());
        done += fs::copy(&p, &dest).map_err(|e| io("cannot copy", &p, e))?;
        progress(done, total);
    }
    Ok(())
}

/// What [`restore`] did.
#[derive(Debug)]
pub struct Restored {
    /// The snapshot's manifest.
    pub manifest: Manifest,
    /// Where a non-empty data dir was moved (with `force`).
    pub aside: Option<PathBuf>,
    /// The last seq of the restored log.
    pub last: Seq,
    /// Bytes copied into the data dir.
    pub bytes: u64,
    /// Files copied into the data dir.
    pub files: u64,
}

/// Restore `snapshot` into `data_dir`. A non-empty `data_dir` is refused unless `force`, which
/// moves it aside. With `as_of`, the log is cut there and derived state rebuilt.
/// `progress(phase, done, total)` is told every [`Phase`] in order (`AsOfReplay` with `as_of`
/// only).
pub fn restore(
    snapshot: &Path,
    data_dir: &Path,
    force: bool,
    as_of: Option<AsOf>,
    mut progress: impl FnMut(Phase, u64, u64),
) -> Result<Restored, SnapshotError> {
    let m = verify(snapshot, &mut progress)?;
    let mut aside = None;
    let non_empty = data_dir.exists()
        && fs::read_dir(data_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
    if non_empty {
        if !force {
            return Err(SnapshotError::Refused(format!(
                "{} is not empty: restore into an empty dir, or pass --force to move it aside",
                data_dir.display()
            )));
        }
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
        let old = PathBuf::from(format!("{}.before-restore-{stamp}", data_dir.display()));
        fs::rename(data_dir, &old).map_err(|e| io("cannot move aside", data_dir, e))?;
        aside = Some(old);
    }
    let mut bytes = 0;
    copy_dir(&snapshot.join("db"), data_dir, |d, t| {
        bytes = d;
        progress(Phase::Copy, d, t)
    })?;
    let files = m.files.len() as u64;
    let store = Store::open(data_dir)?;
    let mut last = Seq(m.last_seq);
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
        let cf = store.cf("log");
        store
            .db()
            .delete_range_cf(cf, &Seq(keep + 1).0.to_be_bytes()[..], &[0xFFu8; 9][..])
            .map_err(StoreError::from)?;
        let kept = keep.min(m.last_seq);
        progress(Phase::AsOfReplay, 0, kept);
        recover(&store, true, |seq, _| {
            progress(Phase::AsOfReplay, seq.0, kept)
        })?;
        progress(Phase::AsOfReplay, kept, kept);
        last = Seq(kept);
    }
    store.db().flush_wal(true).map_err(StoreError::from)?;
    Ok(Restored {
        manifest: m,
        aside,
        last,
        bytes,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::is_safe_file_name;

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
