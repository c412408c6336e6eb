//! `idstitch snapshot create|verify|restore`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use indicatif::ProgressBar;

use super::client::Conn;
use super::Failure;
use crate::store::snapshot::{self, AsOf, Phase, RestoreOptions, SnapshotError};
use crate::store::Store;

/// Snapshot subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Write a consistent point-in-time snapshot: from a running daemon (`--socket`, the path must
    /// be under its --snapshot-dir) or from a stopped data dir (`--data-dir`).
    Create {
        /// New directory to write.
        out: PathBuf,
        /// Socket of a running daemon [default: ./data/store/idstitch.sock, without --data-dir].
        #[arg(long, conflicts_with = "data_dir")]
        socket: Option<PathBuf>,
        /// A stopped data dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Restore into an empty data dir (use `--force` to move a non-empty one aside).
    ///
    /// Restore reads each file of the snapshot once: it hashes it while copying it and stops
    /// (exit 3, naming the file, removing what it wrote into the data dir) if a SHA-256 or size
    /// differs from the manifest, a file is missing or extra, or the restored log does not end
    /// at the manifest's seq. Its lock file, `<data dir>.restore-lock` beside the data dir,
    /// stays: it keeps two restores into one dir apart and may be removed when none runs. That catches damage in storage or transit. It does not replay the log:
    /// run `idstitch snapshot verify` once when a snapshot is made or received (it also
    /// replays the whole log and compares it with the derived state, unless another build
    /// with another derived format wrote that state), or pass `--full-verify`.
    Restore {
        /// The snapshot directory.
        snapshot: PathBuf,
        /// Where to restore.
        #[arg(long)]
        data_dir: PathBuf,
        /// Move a non-empty data dir aside instead of refusing (never the data dir of a
        /// running daemon: stop it first).
        #[arg(long)]
        force: bool,
        /// Rebuild the state as of a log seq (a number) or a time (RFC 3339).
        #[arg(long)]
        as_of: Option<String>,
        /// Run the whole `snapshot verify` first: also replay the snapshot's log and compare
        /// it with its derived state (as slow as `snapshot verify`: every entry is replayed, far
        /// slower than the copy). Use it for a snapshot
        /// that was never verified, or one you have reason to doubt beyond its checksums (for
        /// example written by another build: if that build's derived format differs, only the
        /// log is replayed, and it says so); the checksums alone are enough for one that
        /// `snapshot verify` already passed.
        #[arg(long)]
        full_verify: bool,
    },
    /// Check a snapshot's integrity without restoring it.
    Verify {
        /// The snapshot directory.
        snapshot: PathBuf,
    },
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(total);
    let template = format!("{what} {{bar:40}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}}");
    b.set_style(super::progress_style(&template));
    b
}

/// Progress (on stderr, hidden when stderr is not a terminal) through the phases of `verify`
/// and `restore`: bytes and bytes/s while checksumming and copying, log entries and entries/s
/// while replaying. One bar per phase, so that each phase's throughput is its own.
struct PhaseBar {
    bar: Option<ProgressBar>,
    phase: Option<Phase>,
}

impl PhaseBar {
    fn new() -> PhaseBar {
        PhaseBar {
            bar: None,
            phase: None,
        }
    }

    fn update(&mut self, phase: Phase, done: u64, total: u64) {
        if self.phase != Some(phase) {
            self.phase = Some(phase);
            self.finish();
            let what = match phase {
                Phase::Checksum => "checksum",
                Phase::Replay => "verify log",
                Phase::Copy => "copy",
                Phase::AsOfReplay => "replay --as-of",
            };
            let template = if phase.in_bytes() {
                format!(
                    "{what:>14} {{bar:40}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
                )
            } else {
                format!("{what:>14} {{bar:40}} {{pos}}/{{len}} entries {{rate}} eta {{eta}}")
            };
            let style = super::progress_style(&template);
            self.bar = Some(ProgressBar::new(total).with_style(style));
        }
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn fail(e: SnapshotError) -> anyhow::Error {
    match e {
        SnapshotError::Refused(m) => Failure::user(m),
        SnapshotError::Corrupt(m) => Failure::corrupt(format!(
            "{m}: the snapshot is damaged; copy it again from where it was made, or make a new \
             one with `idstitch snapshot create`"
        )),
        other => anyhow::anyhow!(other.to_string()),
    }
}

fn parse_as_of(s: &str) -> anyhow::Result<AsOf> {
    if let Ok(seq) = s.parse::<u64>() {
        return Ok(AsOf::Seq(seq));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| AsOf::Time(t.timestamp_millis()))
        .map_err(|_| {
            Failure::user(format!(
                "--as-of {s:?} is neither a seq number nor an RFC 3339 time: give, e.g., \
                 1200 or 2026-12-01T00:00:00Z"
            ))
        })
}

/// Run a snapshot subcommand.
pub fn run(cmd: SnapshotCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SnapshotCmd::Create {
            out,
            socket,
            data_dir,
        } => match (socket, data_dir) {
            (_, Some(dir)) => create_offline(&dir, &out),
            (socket, None) => create_online(
                &socket.unwrap_or_else(|| PathBuf::from("./data/store/idstitch.sock")),
                &out,
            ),
        },
        SnapshotCmd::Verify { snapshot } => {
            let mut b = PhaseBar::new();
            let (m, other_format) =
                snapshot::verify(&snapshot, |p, d, t| b.update(p, d, t)).map_err(fail)?;
            b.finish();
            println!(
                "ok: snapshot at seq {} with {} files: {}",
                m.last_seq,
                m.files.len(),
                m.counts
            );
            if let Some(f) = other_format {
                println!("{}", not_compared(f));
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCmd::Restore {
            snapshot,
            data_dir,
            force,
            as_of,
            full_verify,
        } => {
            let as_of = as_of.as_deref().map(parse_as_of).transpose()?;
            let started = Instant::now();
            let mut b = PhaseBar::new();
            let opts = RestoreOptions {
                force,
                as_of,
                full_verify,
            };
            let r = snapshot::restore(&snapshot, &data_dir, opts, |p, d, t| b.update(p, d, t));
            b.finish();
            let r = r.map_err(fail)?;
            let secs = started.elapsed().as_secs_f64();
            if let Some(old) = &r.aside {
                println!("moved the old data dir aside to {}", old.display());
            }
            if r.replaced_unfinished {
                println!(
                    "replaced the unfinished restore that was in {}",
                    data_dir.display()
                );
            }
            println!(
                "ok: restored {} into {}: {} bytes in {} files, {secs:.2} s ({:.1} MB/s), at seq {} (snapshot seq {})",
                snapshot.display(),
                data_dir.display(),
                r.bytes,
                r.files,
                r.bytes as f64 / 1e6 / secs.max(1e-9),
                r.last.0,
                r.manifest.last_seq
            );
            if let Some(f) = r.other_format {
                println!("{}", not_compared(f));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn create_offline(dir: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    // Store::open would create an empty store in a mistyped path, and this would snapshot it.
    super::require_store(dir, ", or --socket for a running daemon")?;
    let store = Store::open(dir).map_err(|e| {
        super::cannot_open(dir, e, "if the daemon is running, use --socket instead")
    })?;
    let b = bar(0, "checksum");
    let m = snapshot::create(&store, out, |d, t| {
        b.set_length(t);
        b.set_position(d)
    })
    .map_err(fail)?;
    b.finish_and_clear();
    println!(
        "ok: snapshot {} at seq {}: {}",
        out.display(),
        m.last_seq,
        m.counts
    );
    Ok(ExitCode::SUCCESS)
}

fn create_online(socket: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    let out = std::path::absolute(out)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let resp = rt.block_on(async {
        let mut c = Conn::unix(socket).await?;
        c.post_json(
            "/api/snapshot",
            &serde_json::json!({"path": out.display().to_string()}),
        )
        .await
    })?;
    if resp.status != 200 {
        return Err(Failure::user(format!(
            "the daemon refused the snapshot: {}",
            resp.detail()
        )));
    }
    println!(
        "ok: snapshot {} at seq {}",
        out.display(),
        resp.json()["manifest"]["last_seq"]
    );
    Ok(ExitCode::SUCCESS)
}

/// What `snapshot verify` and `restore --full-verify` say of a snapshot whose derived state
/// another build wrote.
fn not_compared(format: u64) -> String {
    format!(
        "its derived state was written by another idstitch (format {format}; this one's is {}), \
         so only its log was replayed and its counts checked: a daemon started on a restore of \
         it rebuilds that state from the log",
        crate::store::codec::DERIVED_FORMAT
    )
}
