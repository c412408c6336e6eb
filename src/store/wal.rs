//! Obsolete write-ahead log files leave the disk a few megabytes at a time.
//!
//! RocksDB deletes a write-ahead log file once a flush has made it obsolete: about 48 MB at
//! once, every few seconds under load. On this machine's ext4 (mounted with `discard`) that
//! deletion stalled the synced group writes next to it for 15-60 ms, which made most of the
//! acknowledgement tail (benches/README.md). A serving store therefore has RocksDB archive
//! obsolete files (`WAL_ttl_seconds`, so long that RocksDB itself never deletes them) and a
//! thread of its own, [`WalReaper`], shrinks each archived file by [`STEP`] bytes at a time
//! before removing it.
//!
//! Old log bytes stay on disk only until the reaper's next pass (a fraction of a second), and
//! [`wait_archived`] then [`purge`] remove them at once where that matters (`Store::compact_log`, after a
//! person is deleted with its events).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// RocksDB's `WAL_ttl_seconds`: obsolete write-ahead log files are archived instead of
/// deleted, for longer than any daemon runs (about 30 years), so only the reaper deletes them.
pub(crate) const ARCHIVE_OBSOLETE_WALS_FOR_SECS: u64 = 1_000_000_000;

/// Bytes an archived file shrinks by per step. 2 MiB and 8 MiB steps both removed the stalls
/// (open loop at 10,000 events/s: group writes over 25.6 ms 0-1 per run, against 6-7 when
/// RocksDB deletes the files whole).
const STEP: u64 = 2 << 20;

/// Pause between steps, so that each step's filesystem work commits on its own.
const PAUSE: Duration = Duration::from_millis(5);

/// How often the reaper looks for archived files.
const EVERY: Duration = Duration::from_millis(200);

/// The archive RocksDB moves obsolete write-ahead log files into, in a data directory.
pub fn archive_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("archive")
}

/// Remove every archived write-ahead log file of `data_dir` at once. Returns how many.
pub fn purge(data_dir: &Path) -> usize {
    archived(data_dir)
        .into_iter()
        .filter(|f| remove(f).is_ok())
        .count()
}

/// Wait until RocksDB has moved every write-ahead log file numbered below `keep` (its
/// `rocksdb.min-log-number-to-keep`: the files no memtable needs any more) out of `data_dir`
/// into the archive, which it does just after a flush; at most `patience`. Then [`purge`]
/// can remove them all. Whether none is left in `data_dir`.
pub fn wait_archived(data_dir: &Path, keep: u64, patience: Duration) -> bool {
    let deadline = std::time::Instant::now() + patience;
    let obsolete_left = || logs_in(data_dir).any(|p| numbered_below(&p, keep));
    while obsolete_left() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The archived write-ahead log files of `data_dir` numbered below `keep`: those [`purge`]
/// should have removed, which RocksDB archived before `keep` was read (files it archives
/// later have higher numbers).
pub fn archived_below(data_dir: &Path, keep: u64) -> Vec<PathBuf> {
    logs_in(&archive_dir(data_dir))
        .filter(|p| numbered_below(p, keep))
        .collect()
}

/// Whether the log file `p` (`NNNNNN.log`) is numbered below `keep`.
fn numbered_below(p: &Path, keep: u64) -> bool {
    p.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<u64>().ok())
        .is_some_and(|n| n < keep)
}

/// The `*.log` files directly in `dir`.
fn logs_in(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
}

/// The archived write-ahead log files of `data_dir` (none when there is no archive).
fn archived(data_dir: &Path) -> Vec<PathBuf> {
    logs_in(&archive_dir(data_dir)).collect()
}

/// Remove a file that may already be gone.
fn remove(file: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Shrink `file` by [`STEP`] at a time, each step synced, then remove it; stop early (the
/// file stays, shorter) when `stop` is set. Each step, and the removal, is taken under
/// `hold` (see [`WalReaper::hold`]).
fn shrink_and_remove(file: &Path, stop: &AtomicBool, hold: &Mutex<()>) -> std::io::Result<()> {
    let held = || hold.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let f = match std::fs::OpenOptions::new().write(true).open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut len = f.metadata()?.len();
    while len > STEP {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        len -= STEP;
        {
            let _held = held();
            f.set_len(len)?;
            f.sync_all()?;
        }
        std::thread::sleep(PAUSE);
    }
    drop(f);
    let _held = held();
    remove(file)
}

/// The thread that removes archived write-ahead log files gently; stopped (after removing
/// what is left at once) when dropped.
pub struct WalReaper {
    stop: Arc<AtomicBool>,
    /// Held by the reaper while it changes a file, and by [`WalReaper::hold`]'s callers.
    hold: Arc<Mutex<()>>,
    /// Dropped to wake the thread at once.
    wake: Option<Sender<()>>,
    join: Option<JoinHandle<()>>,
    data_dir: PathBuf,
}

impl WalReaper {
    /// Start reaping the archive of `data_dir`.
    pub fn start(data_dir: &Path) -> std::io::Result<WalReaper> {
        let stop = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(Mutex::new(()));
        let (wake, sleep) = channel::<()>();
        let (flag, dir, held) = (stop.clone(), data_dir.to_path_buf(), hold.clone());
        let join = std::thread::Builder::new()
            .name("idstitch-wal-reaper".into())
            .spawn(move || loop {
                for file in archived(&dir) {
                    if let Err(e) = shrink_and_remove(&file, &flag, &held) {
                        tracing::warn!(file = %file.display(), error = %e, "Could not remove an obsolete write-ahead log file; will try again.");
                    }
                }
                if !matches!(sleep.recv_timeout(EVERY), Err(RecvTimeoutError::Timeout)) {
                    return;
                }
            })?;
        Ok(WalReaper {
            stop,
            hold,
            wake: Some(wake),
            join: Some(join),
            data_dir: data_dir.to_path_buf(),
        })
    }
}

impl WalReaper {
    /// The archive's files stay as they are while the guard lives: RocksDB lists them when it
    /// makes a checkpoint and then reads each one's size, and a file the reaper shrank or
    /// removed in between failed the checkpoint ("No such file or directory: while stat a
    /// file for size"). Waits for at most one step of the reaper.
    pub fn hold(&self) -> MutexGuard<'_, ()> {
        self.hold
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for WalReaper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.wake.take());
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
        purge(&self.data_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data dir whose archive holds one log file `name` of `len` bytes.
    fn archive_with(name: &str, len: u64) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let archive = archive_dir(dir.path());
        std::fs::create_dir_all(&archive).unwrap();
        let file = archive.join(name);
        std::fs::write(&file, vec![7u8; len as usize]).unwrap();
        (dir, archive, file)
    }

    #[test]
    fn the_reaper_removes_archived_logs_and_nothing_else() {
        let (dir, archive, _) = archive_with("000012.log", 5 * STEP + 123);
        std::fs::write(archive.join("000013.log"), b"small").unwrap();
        std::fs::write(archive.join("keep.txt"), b"not a log").unwrap();
        let reaper = WalReaper::start(dir.path()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !archived(dir.path()).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(archived(dir.path()).is_empty(), "archived logs removed");
        assert!(archive.join("keep.txt").exists(), "other files stay");
        drop(reaper);
    }

    #[test]
    fn the_archive_stays_as_it_is_while_held() {
        let full = 40 * STEP;
        let (dir, _, big) = archive_with("000021.log", full);
        let size = || std::fs::metadata(&big).map(|m| m.len()).ok();
        let reaper = WalReaper::start(dir.path()).unwrap();
        // Hold it in the middle of its work on the file: it has shrunk it, and is not done.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size() == Some(full) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let held = reaper.hold();
        let at = size();
        assert!(
            at.is_some_and(|n| n < full),
            "the reaper started on the file: {at:?}"
        );
        // Unheld, it would take a step every few milliseconds.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(size(), at, "nothing changed while held");
        drop(held);
        while size().is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(size(), None, "removed once released");
        drop(reaper);
    }

    #[test]
    fn purge_removes_at_once_and_a_missing_archive_is_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(purge(dir.path()), 0);
        let archive = archive_dir(dir.path());
        std::fs::create_dir_all(&archive).unwrap();
        std::fs::write(archive.join("000001.log"), b"x").unwrap();
        std::fs::write(archive.join("000002.log"), b"y").unwrap();
        assert_eq!(purge(dir.path()), 2);
        assert!(archived(dir.path()).is_empty());
    }
}
