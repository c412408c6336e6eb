//! The limit: how fast raw RocksDB appends the same records, on the same disk, in synced write
//! batches as large as the daemon's groups. The daemon writes more than this per group (derived
//! state rides in the same batch), so the ratio says how close it comes to the bare log.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rocksdb::{IteratorMode, Options, WriteBatch, WriteOptions, DB};

/// What the baseline did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Baseline {
    /// Records appended.
    pub records: u64,
    /// Bytes of each record's value.
    pub record_bytes: usize,
    /// Records per synced write batch.
    pub group: usize,
    /// Synced batches written.
    pub batches: u64,
    /// Time of the writes.
    pub elapsed_s: f64,
    /// Records per second.
    pub records_per_s: f64,
    /// Synced batches per second.
    pub fsyncs_per_s: f64,
}

/// The daemon's RocksDB options that matter for the log (`src/store/db.rs`).
fn options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o.increase_parallelism(2);
    o.set_max_background_jobs(2);
    o
}

/// Append `records` values of `record_bytes` (cut or repeated from `samples`, real events, so
/// they compress like the log) under big-endian sequence keys, `group` per synced batch, into a
/// fresh database in a new directory under `parent`.
pub fn run(
    parent: &Path,
    records: u64,
    record_bytes: usize,
    group: usize,
    samples: &[Vec<u8>],
) -> anyhow::Result<Baseline> {
    let dir = tempfile::Builder::new()
        .prefix("idstitch-raw-rocksdb-")
        .tempdir_in(parent)?;
    let values: Vec<Vec<u8>> = samples
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.iter().copied().cycle().take(record_bytes).collect())
        .collect();
    anyhow::ensure!(!values.is_empty(), "no sample records for the baseline");
    let group = group.max(1);
    let db = DB::open(&options(), dir.path())
        .with_context(|| format!("cannot open RocksDB in {}", dir.path().display()))?;
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    let started = Instant::now();
    let mut seq = 0u64;
    let mut batches = 0u64;
    while seq < records {
        let mut batch = WriteBatch::default();
        let end = (seq + group as u64).min(records);
        while seq < end {
            seq += 1;
            batch.put(seq.to_be_bytes(), &values[(seq as usize) % values.len()]);
        }
        db.write_opt(batch, &wo)?;
        batches += 1;
    }
    let elapsed = started.elapsed().max(Duration::from_nanos(1));
    drop(db);
    Ok(Baseline {
        records,
        record_bytes,
        group,
        batches,
        elapsed_s: elapsed.as_secs_f64(),
        records_per_s: records as f64 / elapsed.as_secs_f64(),
        fsyncs_per_s: batches as f64 / elapsed.as_secs_f64(),
    })
}

/// The real average size of a log record: read the `log` column family of a stopped daemon's
/// data directory. Returns (records, average value bytes).
pub fn log_record_size(data_dir: &Path) -> anyhow::Result<(u64, f64)> {
    let db = DB::open_cf_for_read_only(&Options::default(), data_dir, ["log"], false)
        .with_context(|| format!("cannot open {} read-only", data_dir.display()))?;
    let cf = db.cf_handle("log").context("no log column family")?;
    let (mut n, mut bytes) = (0u64, 0u64);
    for item in db.iterator_cf(cf, IteratorMode::Start) {
        let (_, value) = item?;
        n += 1;
        bytes += value.len() as u64;
    }
    Ok((n, if n == 0 { 0.0 } else { bytes as f64 / n as f64 }))
}
