//! The log writer: a dedicated thread that groups the appends of many concurrent requests into
//! one synced RocksDB write (group commit) and publishes how far the log is durable.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::watch;

use crate::domain::{Entry, Seq};
use crate::metrics::Metrics;
use crate::store::{log::GroupWriter, Store};

/// How far the log is durable, or why writing stopped for good.
#[derive(Clone, Debug, PartialEq)]
pub struct WriterStatus {
    /// Every entry up to this seq is on disk.
    pub durable: Seq,
    /// Set once a write failed; nothing is written after it.
    pub failed: Option<Arc<str>>,
}

/// The writer has failed (poisoned); nothing more will be acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the log writer stopped after an error: {0}")]
pub struct WriterFailed(pub Arc<str>);

enum Msg {
    Append(Seq, Arc<Entry>),
    Stop,
    /// Tests: the next group's write panics.
    #[cfg(test)]
    PanicOnWrite,
}

/// Entries written per group at most.
pub const MAX_GROUP: usize = 8192;

/// A group write (materialising, writing, syncing) this slow is logged as a warning: a disk
/// stall or a RocksDB memtable switch shows in the log with its time.
const SLOW_GROUP: std::time::Duration = std::time::Duration::from_millis(100);

/// Queue length before appenders wait (backpressure).
const QUEUE: usize = 65_536;

/// Handle to the writer thread.
#[derive(Clone)]
pub struct WriterHandle {
    tx: SyncSender<Msg>,
    status: watch::Receiver<WriterStatus>,
}

impl WriterHandle {
    /// Start the writer; `durable` is the last seq already on disk. `on_fatal` runs once, on
    /// the writer thread, after a failed write has been published.
    pub fn spawn(
        store: Store,
        durable: Seq,
        metrics: Arc<Metrics>,
        on_fatal: impl FnOnce(&str) + Send + 'static,
    ) -> (WriterHandle, JoinHandle<()>) {
        let (tx, rx) = sync_channel(QUEUE);
        let (status_tx, status) = watch::channel(WriterStatus {
            durable,
            failed: None,
        });
        let join = std::thread::Builder::new()
            .name("idstitch-writer".into())
            .spawn(move || run(store, rx, status_tx, metrics, on_fatal))
            .unwrap_or_else(|e| panic!("cannot start the writer thread: {e}"));
        (WriterHandle { tx, status }, join)
    }

    /// Queue an entry. Order of calls is the order on disk.
    pub fn append(&self, seq: Seq, entry: Arc<Entry>) -> Result<(), WriterFailed> {
        self.tx
            .send(Msg::Append(seq, entry))
            .map_err(|_| self.failure())
    }

    fn failure(&self) -> WriterFailed {
        WriterFailed(
            self.status
                .borrow()
                .failed
                .clone()
                .unwrap_or_else(|| "writer stopped".into()),
        )
    }

    /// `Err` once a write has failed: from then on nothing is acknowledged, not even a request
    /// that has nothing to write.
    pub fn check(&self) -> Result<(), WriterFailed> {
        match &self.status.borrow().failed {
            Some(e) => Err(WriterFailed(e.clone())),
            None => Ok(()),
        }
    }

    /// The current status.
    pub fn status(&self) -> WriterStatus {
        self.status.borrow().clone()
    }

    /// Wait until `seq` is durable.
    pub async fn wait_durable(&self, seq: Seq) -> Result<(), WriterFailed> {
        let mut rx = self.status.clone();
        let s = rx
            .wait_for(|s| s.durable >= seq || s.failed.is_some())
            .await
            .map_err(|_| WriterFailed("writer stopped".into()))?
            .clone();
        match s.failed {
            Some(e) if s.durable < seq => Err(WriterFailed(e)),
            _ => Ok(()),
        }
    }

    /// Ask the thread to finish what is queued and exit.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

/// A writer that never writes, for tests: its handle queues appends, and nothing after the
/// durable seq it was made with ever becomes durable, while the returned [`Held`] lives.
#[cfg(test)]
pub(crate) fn held(durable: Seq) -> (WriterHandle, Held) {
    let (tx, rx) = sync_channel(QUEUE);
    let (status_tx, status) = watch::channel(WriterStatus {
        durable,
        failed: None,
    });
    (WriterHandle { tx, status }, Held(rx, status_tx))
}

/// What keeps a [`held`] writer's queue and status open.
#[cfg(test)]
pub(crate) struct Held(
    #[allow(dead_code)] std::sync::mpsc::Receiver<Msg>,
    watch::Sender<WriterStatus>,
);

#[cfg(test)]
impl Held {
    /// Say that everything up to `seq` is durable (without writing it).
    pub(crate) fn publish(&self, seq: Seq) {
        self.1.send_modify(|s| s.durable = seq);
    }
}

fn run(
    store: Store,
    rx: Receiver<Msg>,
    status: watch::Sender<WriterStatus>,
    metrics: Arc<Metrics>,
    on_fatal: impl FnOnce(&str),
) {
    let mut group: Vec<(Seq, Arc<Entry>)> = Vec::with_capacity(MAX_GROUP);
    let mut writer = GroupWriter::default();
    let mut stopping = false;
    #[cfg(test)]
    let mut panic_on_write = false;
    while !stopping {
        match rx.recv() {
            Ok(Msg::Append(s, e)) => group.push((s, e)),
            #[cfg(test)]
            Ok(Msg::PanicOnWrite) => panic_on_write = true,
            Ok(Msg::Stop) | Err(_) => break,
        }
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Msg::Append(s, e)) => group.push((s, e)),
                #[cfg(test)]
                Ok(Msg::PanicOnWrite) => panic_on_write = true,
                Ok(Msg::Stop) | Err(TryRecvError::Disconnected) => {
                    stopping = true;
                    break;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        let started = Instant::now();
        let last = group.last().map(|(s, _)| *s).unwrap_or(Seq(0));
        // A panic on this thread (a bug) fails the writer as a storage error does: it is
        // published and `on_fatal` runs, so health says so and `--on-storage-error exit`
        // exits. Whether or not the group reached the disk, none of it is acknowledged.
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            #[cfg(test)]
            assert!(!panic_on_write, "the test asked this write to panic");
            writer
                .write(&store, &group, true)
                .map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!(
                "internal error, the write path panicked ({what}); please report it"
            ))
        });
        if let Err(e) = written {
            let msg: Arc<str> = e.into();
            tracing::error!(error = %msg, last_seq = %last, "Log write failed; no further writes will be made.");
            status.send_modify(|s| s.failed = Some(msg.clone()));
            on_fatal(&msg);
            return;
        }
        let took = started.elapsed();
        if took >= SLOW_GROUP {
            tracing::warn!(
                ms = took.as_millis() as u64,
                entries = group.len(),
                last_seq = %last,
                "Slow synced log write: every acknowledgement waiting on it waited this long."
            );
        }
        metrics.fsync_seconds.observe(took.as_secs_f64());
        metrics.log_fsyncs.inc();
        metrics.log_appends.inc_by(group.len() as u64);
        status.send_modify(|s| s.durable = last);
        group.clear();
    }
    tracing::debug!("Log writer stopped.");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Change, ProjectId};
    use std::sync::Mutex;

    /// A panic on the writer's thread fails the writer like a storage error: published in its
    /// status, `on_fatal` run once, the thread ends normally, and nothing is acknowledged.
    #[test]
    fn a_panic_in_a_write_fails_the_writer_as_a_storage_error_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let fatal = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = fatal.clone();
        let (writer, join) = WriterHandle::spawn(store, Seq(0), Metrics::new(), move |m| {
            seen.lock().unwrap().push(m.to_string())
        });
        let entry = Arc::new(Entry {
            project: ProjectId(1),
            at_ms: 0,
            cause: None,
            changes: vec![Change::ProjectCreated {
                id: ProjectId(1),
                token: "t".into(),
                name: "p".into(),
            }],
        });
        writer.tx.send(Msg::PanicOnWrite).unwrap();
        writer.append(Seq(1), entry).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt.block_on(writer.wait_durable(Seq(1))).unwrap_err();
        assert!(err.0.contains("panicked"), "{err}");
        assert!(writer.check().is_err());
        assert_eq!(writer.status().durable, Seq(0));
        join.join()
            .expect("the writer's thread ends without unwinding");
        let fatal = fatal.lock().unwrap();
        assert_eq!(fatal.len(), 1, "{fatal:?}");
        assert!(
            fatal[0].contains("the test asked this write to panic"),
            "{fatal:?}"
        );
    }
}
