//! The subcommands of the `idstitch` binary. `anyhow` lives here and in `main.rs` only.

pub mod client;
pub mod ingest;
pub mod insights;
pub mod person;
pub mod project;
pub mod serve;
pub mod snapshot;
pub mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A progress bar's style from `template`, which may use `{rate}`: items per second, in whole
/// numbers (indicatif's own `{per_sec}` prints four decimals).
pub fn progress_style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .with_key(
            "rate",
            |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", st.per_sec());
            },
        )
}

/// A failure with the exit code the spec assigns: 1 user-fixable, 2 runtime, 3 corruption.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// One plain line: what went wrong and what to do.
    pub message: String,
}

impl Failure {
    /// Something the user can fix (exit 1).
    pub fn user(message: impl Into<String>) -> anyhow::Error {
        Failure {
            code: 1,
            message: message.into(),
        }
        .into()
    }

    /// A runtime error: the daemon or the system failed, not the request (exit 2).
    pub fn runtime(message: impl Into<String>) -> anyhow::Error {
        Failure {
            code: 2,
            message: message.into(),
        }
        .into()
    }

    /// Corruption detected (exit 3).
    pub fn corrupt(message: impl Into<String>) -> anyhow::Error {
        Failure {
            code: 3,
            message: message.into(),
        }
        .into()
    }
}

/// Why `data_dir` could not be opened, as the CLI says it: a refusal in its own words (exit
/// 1), corruption (exit 3, [`damaged`]), anything else in RocksDB's words (exit 1), with
/// `when_locked` added when RocksDB's lock file is held ("IO error: While lock file:
/// <dir>/LOCK: Resource temporarily unavailable"). Other failures (a full disk, permissions,
/// a missing file) speak for themselves.
pub(crate) fn cannot_open(
    data_dir: &std::path::Path,
    e: crate::store::StoreError,
    when_locked: &str,
) -> anyhow::Error {
    match e {
        crate::store::StoreError::Refused(m) => Failure::user(m),
        e if e.is_corruption() => damaged(data_dir, &e),
        e => {
            let hint = match e.to_string().contains("lock file") && !when_locked.is_empty() {
                true => format!(" ({when_locked})"),
                false => String::new(),
            };
            Failure::user(format!(
                "cannot open data dir {}: {e}{hint}",
                data_dir.display()
            ))
        }
    }
}

/// Refuses (exit 1) a `dir` that holds no store, before anything opens it: a mistyped path or
/// an empty dir is the user's to fix, not damage (RocksDB's "no CURRENT file" would read as
/// corruption), and opening it for writing would create a store there. `also` ends the advice.
pub(crate) fn require_store(dir: &std::path::Path, also: &str) -> anyhow::Result<()> {
    use crate::store::db::{check_data_dir, holds_store};
    check_data_dir(dir).map_err(|e| Failure::user(e.to_string()))?;
    if !holds_store(dir) {
        return Err(Failure::user(format!(
            "{} is not an idstitch data dir (no RocksDB CURRENT file in it): give the \
             --data-dir the daemon ran with{also}",
            dir.display()
        )));
    }
    Ok(())
}

/// Corruption found opening or recovering `data_dir` (exit 3), with what to do.
pub(crate) fn damaged(data_dir: &std::path::Path, e: &crate::store::StoreError) -> anyhow::Error {
    Failure::corrupt(format!(
        "data dir {} is damaged: {e}. Restore it from a snapshot (`idstitch snapshot restore`); \
         if a newer idstitch wrote it, run that one. If it is a record of the write-ahead log \
         (the `*.log` files), `idstitch serve --salvage-wal` starts with what comes before it \
         and drops the rest",
        data_dir.display()
    ))
}

/// idstitch: PostHog-compatible identity resolution as one small daemon.
///
/// Feed it events from the PostHog SDKs over a Unix socket (or TCP); it stitches anonymous and
/// identified distinct IDs into persons, exactly as PostHog does, and logs every decision.
#[derive(Parser, Debug)]
#[command(name = "idstitch", version, about, long_about)]
pub struct Cli {
    /// Log format. Verbosity comes from RUST_LOG (default `info`).
    #[arg(
        long,
        global = true,
        env = "IDSTITCH_LOG_FORMAT",
        default_value = "text",
        value_parser = ["text", "json"]
    )]
    pub log_format: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon.
    Serve(Box<serve::ServeArgs>),
    /// Send an NDJSON or JSON file of events to a running daemon.
    Ingest(ingest::IngestArgs),
    /// Replay the whole log into scratch state and compare it with the live state.
    Verify {
        /// The data directory (the daemon may be running).
        #[arg(long, env = "IDSTITCH_DATA_DIR", default_value = "./data/store")]
        data_dir: PathBuf,
        /// Also rebuild every other derived column family (the event indexes, uuids, warnings,
        /// the buffer, settings, history) from the log in a scratch store and compare it with
        /// the live one. About ten times slower; needs about the data dir's size in $TMPDIR.
        #[arg(long)]
        derived: bool,
    },
    /// Snapshots: create, verify, restore (with point-in-time restore).
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Operator access to persons over the socket: show, history, split, delete.
    Person {
        /// The daemon's socket (before or after the subcommand).
        #[arg(
            long,
            global = true,
            env = "IDSTITCH_SOCKET",
            default_value = "./data/store/idstitch.sock"
        )]
        socket: PathBuf,
        /// What to do.
        #[command(subcommand)]
        cmd: person::PersonCmd,
    },
    /// Projects and their settings over the socket: list, show, set.
    Project {
        /// The daemon's socket (before or after the subcommand).
        #[arg(
            long,
            global = true,
            env = "IDSTITCH_SOCKET",
            default_value = "./data/store/idstitch.sock"
        )]
        socket: PathBuf,
        /// What to do.
        #[command(subcommand)]
        cmd: project::ProjectCmd,
    },
    /// Insights counted per person after merges: unique persons, funnels.
    Insights {
        /// The daemon's socket (before or after the subcommand).
        #[arg(
            long,
            global = true,
            env = "IDSTITCH_SOCKET",
            default_value = "./data/store/idstitch.sock"
        )]
        socket: PathBuf,
        /// What to count.
        #[command(subcommand)]
        cmd: insights::InsightsCmd,
    },
}

/// Initialise logging to stderr.
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal: not in files, journald or pipes.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    init_logging(&cli.log_format);
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Ingest(args) => ingest::run(args),
        Command::Verify { data_dir, derived } => verify::run(&data_dir, derived),
        Command::Snapshot(cmd) => snapshot::run(cmd),
        Command::Person { socket, cmd } => person::run(&socket, cmd),
        Command::Project { socket, cmd } => project::run(&socket, cmd),
        Command::Insights { socket, cmd } => insights::run(&socket, cmd),
    }
}

/// Transparent huge pages off for this process. mimalloc asks the kernel for them on its arenas
/// (`madvise(MADV_HUGEPAGE)`, which THP's usual `madvise` mode honours), so the first touch of
/// memory it starts using (`mi_page_free_list_extend`) faults in a whole 2 MiB huge page, which
/// the kernel zeroes (`clear_page_erms` under `do_huge_pmd_anonymous_page`). Under the load
/// generator on the benchmark VM that zeroing was 605 of one HTTP worker's 1,286 perf samples,
/// in stalls that showed in the acknowledgement p99; turned off, the HTTP workers used 21% less
/// CPU per event and the p99 fell from 19.5 to 11.7 ms (medians of 5 pairs; 183 huge-page
/// faults in a 200,000-event run, 2 with this; benches/README.md, Session 29). This is what
/// `MIMALLOC_ALLOW_THP=0` does, made the default: `main` calls it first, and so does the engine
/// benchmark, to measure what the daemon runs. It is a flag of the process, checked at each
/// page fault, so the arenas mimalloc mapped before it follow it too.
pub fn no_transparent_huge_pages() {
    // SAFETY: a prctl with integer arguments, which sets a flag of this process. On a kernel
    // without it the call fails and nothing changes.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
