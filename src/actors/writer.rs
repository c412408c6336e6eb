//! The log writer: a dedicated thread that groups the appends of many concurrent requests into
//! one synced RocksDB write (group commit) and publishes how far the log is durable. It
//! prepares each group's batch while a second thread writes the batch before it.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::watch;

use crate::domain::{Entry, Seq};
use crate::metrics::Metrics;
use crate::store::log::{commit, reads_the_store, Batch, GroupWriter};
use crate::store::Store;

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
#[error("the log writer stopped after a storage error: {0}")]
pub struct WriterFailed(pub Arc<str>);

enum Msg {
    Append(Seq, Arc<Entry>),
    Stop,
}

/// Entries written per group at most.
const MAX_GROUP: usize = 8192;

/// A group this large means the writer is behind its queue: only then is the next group
/// prepared while this one is committed. A smaller group is committed before the next is
/// gathered, so that under a lighter load groups stay as large as without the pipeline (on
/// two cores, preparing ahead of small groups halved them and added syncs, for no
/// throughput: benches/README.md).
const PIPELINE_FROM: usize = 1024;

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

/// A prepared batch on its way to the committer.
enum Prepared {
    Batch {
        batch: Batch,
        last: Seq,
        entries: usize,
    },
    /// Preparing a group failed: the committer fails the writer once the batch before it is
    /// written.
    Failed(Arc<str>),
}

/// The writer is two threads in a pipeline: this one gathers a group and prepares its batch
/// (encodes the log records, derives the rows, encodes the changed persons) while the
/// committer writes and syncs the batch before it, once the groups are large enough to show
/// that the writer is behind ([`PIPELINE_FROM`]). A group is prepared at most one batch ahead
/// of the disk, and only its persons are read ahead ([`GroupWriter::prepare`]): a group that
/// reads other derived state waits for the batch before it to be committed.
fn run(
    store: Store,
    rx: Receiver<Msg>,
    status: watch::Sender<WriterStatus>,
    metrics: Arc<Metrics>,
    on_fatal: impl FnOnce(&str) + Send,
) {
    // A hand-over, not a queue: a batch is handed over once the one before it is on disk
    // (`prepare_all` waits for its acknowledgement first).
    let (batch_tx, batch_rx) = sync_channel::<Prepared>(0);
    // One acknowledgement per batch, in order: whether it was written.
    let (ack_tx, ack_rx) = sync_channel::<bool>(1);
    std::thread::scope(|scope| {
        let committer = std::thread::Builder::new()
            .name("idstitch-commit".into())
            .spawn_scoped(scope, || {
                commit_all(&store, batch_rx, ack_tx, &status, &metrics, on_fatal)
            })
            .unwrap_or_else(|e| panic!("cannot start the commit thread: {e}"));
        prepare_all(&store, &rx, batch_tx, ack_rx);
        let _ = committer.join();
    });
    tracing::debug!("Log writer stopped.");
}

/// Gather groups from the queue and hand their batches to the committer, until told to stop
/// or until a batch fails.
fn prepare_all(
    store: &Store,
    rx: &Receiver<Msg>,
    batches: SyncSender<Prepared>,
    acks: Receiver<bool>,
) {
    let mut group: Vec<(Seq, Arc<Entry>)> = Vec::with_capacity(MAX_GROUP);
    let mut writer = GroupWriter::default();
    // Batches handed over and not yet acknowledged: at most one.
    let mut in_flight = 0usize;
    // Wait for the batches in flight; false once one failed (nothing more may be written).
    let settle = |in_flight: &mut usize| {
        while *in_flight > 0 {
            *in_flight -= 1;
            if !acks.recv().unwrap_or(false) {
                return false;
            }
        }
        true
    };
    let mut stopping = false;
    while !stopping {
        match rx.recv() {
            Ok(Msg::Append(s, e)) => group.push((s, e)),
            Ok(Msg::Stop) | Err(_) => break,
        }
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Msg::Append(s, e)) => group.push((s, e)),
                Ok(Msg::Stop) | Err(TryRecvError::Disconnected) => {
                    stopping = true;
                    break;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        if group.iter().any(|(_, e)| reads_the_store(e)) && !settle(&mut in_flight) {
            return;
        }
        let prepared = match writer.prepare(store, &group) {
            Ok(batch) => Prepared::Batch {
                batch,
                last: group.last().map_or(Seq(0), |(s, _)| *s),
                entries: group.len(),
            },
            Err(e) => Prepared::Failed(format!("{e}").into()),
        };
        let failed = matches!(prepared, Prepared::Failed(_));
        // The batch before must be on disk before this one is handed over: the committer
        // then takes it at once, and this thread prepares the next while it is written.
        if !settle(&mut in_flight) || batches.send(prepared).is_err() || failed {
            return;
        }
        in_flight += 1;
        if group.len() < PIPELINE_FROM && !settle(&mut in_flight) {
            return;
        }
        group.clear();
    }
    settle(&mut in_flight);
}

/// Write and sync the prepared batches in order, publishing how far the log is durable;
/// at the first failure, publish it, call `on_fatal` and stop.
fn commit_all(
    store: &Store,
    batches: Receiver<Prepared>,
    acks: SyncSender<bool>,
    status: &watch::Sender<WriterStatus>,
    metrics: &Metrics,
    on_fatal: impl FnOnce(&str),
) {
    for prepared in batches {
        let (batch, last, entries) = match prepared {
            Prepared::Batch {
                batch,
                last,
                entries,
            } => (batch, last, entries),
            Prepared::Failed(msg) => {
                fail(status, on_fatal, &msg, None);
                return;
            }
        };
        let started = Instant::now();
        if let Err(e) = commit(store, batch, true) {
            let _ = acks.send(false);
            fail(status, on_fatal, &format!("{e}"), Some(last));
            return;
        }
        let took = started.elapsed();
        if took >= SLOW_GROUP {
            tracing::warn!(
                ms = took.as_millis() as u64,
                entries,
                last_seq = %last,
                "Slow synced log write: every acknowledgement waiting on it waited this long."
            );
        }
        metrics.fsync_seconds.observe(took.as_secs_f64());
        metrics.log_fsyncs.inc();
        metrics.log_appends.inc_by(entries as u64);
        status.send_modify(|s| s.durable = last);
        if acks.send(true).is_err() {
            return;
        }
    }
}

/// Publish that writing stopped for good, and why.
fn fail(
    status: &watch::Sender<WriterStatus>,
    on_fatal: impl FnOnce(&str),
    msg: &str,
    last: Option<Seq>,
) {
    let msg: Arc<str> = msg.into();
    match last {
        Some(last) => {
            tracing::error!(error = %msg, last_seq = %last, "Log write failed; no further writes will be made.")
        }
        None => {
            tracing::error!(error = %msg, "Preparing a log write failed; no further writes will be made.")
        }
    }
    status.send_modify(|s| s.failed = Some(msg.clone()));
    on_fatal(&msg);
}
