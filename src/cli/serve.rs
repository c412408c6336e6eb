//! `idstitch serve`: recover, then serve the API on the Unix socket (and TCP), until a signal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use actix_web::web;
use anyhow::Context;
use serde::Deserialize;

use super::Failure;
use crate::actors::{Engine, EngineConfig, EngineError};
use crate::api::server::{self, ConnLimits};
use crate::api::{ApiConfig, AppState, DecodeLimits};
use crate::domain::{SettingsError, SettingsPatch};
use crate::metrics::Metrics;
use crate::store::Store;

/// Options of `idstitch serve`. Precedence: flags, then `IDSTITCH_*` environment variables,
/// then the TOML file of `--config` (same names, with underscores), then the defaults shown.
#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// Data directory (RocksDB) [default: ./data/store].
    #[arg(long, env = "IDSTITCH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Unix socket path [default: <data-dir>/idstitch.sock].
    #[arg(long, env = "IDSTITCH_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Also listen on TCP at this address (e.g. 127.0.0.1:8010, or a port alone, which means
    /// 127.0.0.1) [default: off]. Loopback addresses only, unless --http-allow-remote.
    #[arg(long, env = "IDSTITCH_HTTP")]
    pub http: Option<String>,
    /// Let --http listen on an address other machines can reach (0.0.0.0, a LAN address):
    /// the capture endpoints are then open to the network; /api/ still needs the admin key.
    /// `--http-allow-remote=false` (or the variable set to false, 0, no or off) overrides a
    /// config file's `true` [default: false].
    #[arg(
        long,
        env = "IDSTITCH_HTTP_ALLOW_REMOTE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub http_allow_remote: Option<bool>,
    /// A TOML file with any of these options, named with underscores (`max_depth = 64`,
    /// `socket_mode = "600"`, `http_allow_remote = true`); `--log-format` is not one of them.
    #[arg(long, env = "IDSTITCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// File holding the admin key that `/api/` requires on TCP (`Authorization: Bearer <key>`).
    #[arg(long, env = "IDSTITCH_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// Strict mode: only the projects in this TOML file (`[[project]] token = "phc_…" name = "…"`);
    /// unknown tokens get 401. Without it, a new token creates its project on first use.
    #[arg(long, env = "IDSTITCH_PROJECTS")]
    pub projects: Option<PathBuf>,
    /// Refuse merges whose source person has more than N distinct IDs [default: unlimited].
    #[arg(long, env = "IDSTITCH_MERGE_LIMIT")]
    pub merge_limit: Option<u64>,
    /// Most distinct IDs one person may have, at least 2: an `$identify`, alias or merge that
    /// would give a person more is refused with a `distinct_id_limit_exceeded` warning, and
    /// the event acts on its own distinct ID alone [default: unlimited].
    #[arg(long, env = "IDSTITCH_MAX_DISTINCT_IDS_PER_PERSON")]
    pub max_distinct_ids_per_person: Option<u64>,
    /// Largest request body, compressed or decompressed, in bytes; never more than
    /// --max-inflight-body-bytes [default: 20971520].
    #[arg(long, env = "IDSTITCH_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most events in one request [default: 10000].
    #[arg(long, env = "IDSTITCH_MAX_EVENTS_PER_REQUEST")]
    pub max_events_per_request: Option<usize>,
    /// Deepest JSON nesting of one event; a deeper event is rejected alone (in the answer's
    /// `rejected`) [default: 64].
    #[arg(long, env = "IDSTITCH_MAX_DEPTH")]
    pub max_depth: Option<usize>,
    /// Most properties of one event (its `properties`, `$set`, `$set_once` and `$unset`
    /// entries together); an event with more is rejected alone (in the answer's `rejected`)
    /// [default: 10000].
    #[arg(long, env = "IDSTITCH_MAX_PROPERTIES")]
    pub max_properties: Option<usize>,
    /// Person actors kept in memory at most [default: 100000].
    #[arg(long, env = "IDSTITCH_MAX_RESIDENT_PERSONS")]
    pub max_resident_persons: Option<usize>,
    /// Events waiting in the conversion buffers (all projects), which are held in memory, at
    /// most; past it, new events are processed at once instead of waiting (those of an ID
    /// with events waiting still queue behind them) [default: 200000].
    #[arg(long, env = "IDSTITCH_BUFFER_MAX_WAITING")]
    pub buffer_max_waiting: Option<usize>,
    /// HTTP worker threads per listener [default: 2].
    #[arg(long, env = "IDSTITCH_WORKERS")]
    pub workers: Option<usize>,
    /// Socket file mode, octal [default: 600].
    #[arg(long, env = "IDSTITCH_SOCKET_MODE")]
    pub socket_mode: Option<String>,
    /// Directory `POST /api/snapshot` may write under [default: <data-dir>/../snapshots].
    #[arg(long, env = "IDSTITCH_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// Connections served at once per worker thread and listener; further clients wait until
    /// one closes [default: 1024].
    #[arg(long, env = "IDSTITCH_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Seconds a new connection has to send its first request's headers, else 408 and the
    /// connection is closed. On a kept-alive connection, a connection with no request in
    /// progress for --keep-alive plus this many seconds is trickling its next request's
    /// headers, and is closed [default: 10].
    #[arg(long, env = "IDSTITCH_HEADER_TIMEOUT")]
    pub header_timeout: Option<u64>,
    /// Seconds a request's whole body has to arrive after its headers, else 408 and the
    /// connection is closed [default: 60].
    #[arg(long, env = "IDSTITCH_BODY_TIMEOUT")]
    pub body_timeout: Option<u64>,
    /// Request body bytes held in memory at once, over all connections, counted as they
    /// arrive and again as they decompress; a body whose next bytes do not fit waits for
    /// others to be answered (within --body-timeout; then 408, or 503 with Retry-After for
    /// decompressed bytes), and one that decompresses to more than all of it is a 413. One
    /// request at a time that holds room and needs more may go over it by its own size, so
    /// that two half-received bodies do not wait for each other: memory stays under twice
    /// this.
    /// Counted in KiB: rounded up to a whole KiB [default: 268435456].
    #[arg(long, env = "IDSTITCH_MAX_INFLIGHT_BODY_BYTES")]
    pub max_inflight_body_bytes: Option<usize>,
    /// Seconds an idle connection is kept open between requests; 0 closes it after every answer,
    /// which also puts every request under --header-timeout [default: 5].
    #[arg(long, env = "IDSTITCH_KEEP_ALIVE")]
    pub keep_alive: Option<u64>,
    /// What a failed log write (disk full, I/O error) does. `degrade`: stop all writes, answer
    /// captures with 503 and `Retry-After`, keep serving reads, and exit with code 2 naming
    /// the cause at the next SIGTERM; restart once the cause is fixed and the log recovers
    /// everything that was acknowledged. `exit`: exit with code 2 at once [default: degrade].
    #[arg(long, env = "IDSTITCH_ON_STORAGE_ERROR", value_enum)]
    pub on_storage_error: Option<OnStorageError>,
    /// Start even though a record of the write-ahead log is damaged (disk corruption): keep
    /// what comes before that record and drop it and everything logged after it, acknowledged
    /// events among them. Without it such a data dir is refused with exit code 3. Use it once,
    /// when no snapshot is newer than what it keeps; then start without it.
    #[arg(long)]
    pub salvage_wal: bool,
    /// Let tests move the conversion buffer's clock forward with `POST /api/_test/clock`
    /// (for tests only).
    #[arg(long, hide = true)]
    pub test_clock: bool,
}

/// The `--config` TOML file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    http: Option<String>,
    http_allow_remote: Option<bool>,
    admin_key_file: Option<PathBuf>,
    projects: Option<PathBuf>,
    merge_limit: Option<u64>,
    max_distinct_ids_per_person: Option<u64>,
    max_body_bytes: Option<usize>,
    max_events_per_request: Option<usize>,
    max_depth: Option<usize>,
    max_properties: Option<usize>,
    max_resident_persons: Option<usize>,
    buffer_max_waiting: Option<usize>,
    workers: Option<usize>,
    socket_mode: Option<String>,
    snapshot_dir: Option<PathBuf>,
    max_connections: Option<usize>,
    header_timeout: Option<u64>,
    body_timeout: Option<u64>,
    keep_alive: Option<u64>,
    max_inflight_body_bytes: Option<usize>,
    on_storage_error: Option<OnStorageError>,
}

/// What a failed log write does (`--on-storage-error`).
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnStorageError {
    /// Stop writing, answer 503 to captures, keep serving reads until restarted.
    #[default]
    Degrade,
    /// Exit with code 2 at once.
    Exit,
}

/// The projects file of strict mode.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ProjectsFile {
    project: Vec<ProjectEntry>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ProjectEntry {
    token: String,
    name: Option<String>,
    /// Settings, as `PATCH /api/projects/{project}/` takes them; applied at every start.
    conversion_buffer: Option<serde_json::Value>,
    test_account_filters: Option<serde_json::Value>,
    merge_limit: Option<serde_json::Value>,
}

impl ProjectEntry {
    /// The settings this entry names, validated.
    fn patch(&self) -> Result<SettingsPatch, SettingsError> {
        let mut body = serde_json::Map::new();
        let fields = [
            ("name", self.name.clone().map(serde_json::Value::String)),
            ("conversion_buffer", self.conversion_buffer.clone()),
            ("test_account_filters", self.test_account_filters.clone()),
            ("merge_limit", self.merge_limit.clone()),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                body.insert(k.to_string(), v);
            }
        }
        SettingsPatch::parse(&serde_json::Value::Object(body))
    }
}

/// Everything `serve` needs, resolved.
#[derive(Debug)]
pub struct Settings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Socket path.
    pub socket: PathBuf,
    /// TCP address.
    pub http: Option<String>,
    /// Socket mode.
    pub socket_mode: u32,
    /// Workers per listener.
    pub workers: usize,
    /// Connection limits and slow-client timeouts.
    pub conn: ConnLimits,
    /// Engine settings.
    pub engine: EngineConfig,
    /// What a failed log write does.
    pub on_storage_error: OnStorageError,
    /// API settings.
    pub api: ApiConfig,
    /// Open past a damaged write-ahead log record, dropping it and what follows.
    pub salvage_wal: bool,
    /// Strict-mode projects (token, name).
    pub projects: Vec<(String, Option<String>)>,
    /// Settings the projects file gives, applied at every start (token, settings).
    pub project_settings: Vec<(String, SettingsPatch)>,
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::user(format!("cannot read {what} {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        // One line: the reason, and where (toml's own rendering spans several lines).
        let at = e.span().map(|s| {
            let line = text.as_bytes()[..s.start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            format!(" (line {line})")
        });
        let reason = e.message().replace('\n', " ");
        Failure::user(format!(
            "{what} {} is not valid{}: {reason}",
            path.display(),
            at.unwrap_or_default()
        ))
    })
}

/// Merge flags/env with the config file and apply defaults.
pub fn settings(a: ServeArgs) -> anyhow::Result<Settings> {
    let f: FileConfig = match &a.config {
        Some(p) => read_toml(p, "config file")?,
        None => FileConfig::default(),
    };
    let conn = conn_limits(&a, &f)?;
    let allow_remote = a.http_allow_remote.or(f.http_allow_remote).unwrap_or(false);
    let http = match a.http.clone().or(f.http.clone()) {
        Some(addr) => Some(tcp_address(&addr, allow_remote)?),
        None => None,
    };
    let max_ids_per_person = a
        .max_distinct_ids_per_person
        .or(f.max_distinct_ids_per_person);
    if max_ids_per_person.is_some_and(|n| n < 2) {
        return Err(Failure::user(
            "--max-distinct-ids-per-person must be at least 2 (an $identify joins two IDs)",
        ));
    }
    let data_dir = a
        .data_dir
        .or(f.data_dir)
        .unwrap_or_else(|| PathBuf::from("./data/store"));
    let socket = a
        .socket
        .or(f.socket)
        .unwrap_or_else(|| data_dir.join("idstitch.sock"));
    let mode_text = a
        .socket_mode
        .or(f.socket_mode)
        .unwrap_or_else(|| "600".into());
    let socket_mode = u32::from_str_radix(&mode_text, 8).map_err(|_| {
        Failure::user(format!(
            "--socket-mode {mode_text:?} is not an octal mode like 600"
        ))
    })?;
    let admin_key = match a.admin_key_file.or(f.admin_key_file) {
        Some(p) => {
            let key = std::fs::read_to_string(&p).map_err(|e| {
                Failure::user(format!("cannot read --admin-key-file {}: {e}", p.display()))
            })?;
            let key = key.trim().to_string();
            if key.is_empty() {
                return Err(Failure::user(format!(
                    "--admin-key-file {} is empty",
                    p.display()
                )));
            }
            Some(key)
        }
        None => None,
    };
    let entries = match a.projects.or(f.projects) {
        Some(p) => {
            let entries = read_toml::<ProjectsFile>(&p, "projects file")?.project;
            for e in &entries {
                e.patch().map_err(|err| {
                    Failure::user(format!(
                        "projects file {}: project {:?}: {err}",
                        p.display(),
                        e.token
                    ))
                })?;
            }
            entries
        }
        None => Vec::new(),
    };
    let project_settings = entries
        .iter()
        .filter_map(|e| Some((e.token.clone(), e.patch().ok()?)))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let projects: Vec<_> = entries.into_iter().map(|e| (e.token, e.name)).collect();
    let defaults = DecodeLimits::default();
    let limits = DecodeLimits {
        max_body_bytes: a
            .max_body_bytes
            .or(f.max_body_bytes)
            .unwrap_or(defaults.max_body_bytes),
        max_events: a
            .max_events_per_request
            .or(f.max_events_per_request)
            .unwrap_or(defaults.max_events),
        max_depth: a.max_depth.or(f.max_depth).unwrap_or(defaults.max_depth),
        max_properties: a
            .max_properties
            .or(f.max_properties)
            .unwrap_or(defaults.max_properties),
    };
    let max_resident_persons = a
        .max_resident_persons
        .or(f.max_resident_persons)
        .unwrap_or(100_000);
    refuse_zero(&[
        ("--max-body-bytes", limits.max_body_bytes == 0),
        ("--max-events-per-request", limits.max_events == 0),
        ("--max-depth", limits.max_depth == 0),
        ("--max-resident-persons", max_resident_persons == 0),
        ("--workers", a.workers.or(f.workers) == Some(0)),
    ])?;
    let snapshot_dir = a
        .snapshot_dir
        .or(f.snapshot_dir)
        .unwrap_or_else(|| data_dir.join("..").join("snapshots"));
    Ok(Settings {
        engine: EngineConfig {
            merge_limit: a.merge_limit.or(f.merge_limit),
            max_ids_per_person,
            max_resident_persons,
            buffer_max_waiting: a
                .buffer_max_waiting
                .or(f.buffer_max_waiting)
                .unwrap_or(EngineConfig::default().buffer_max_waiting),
            test_clock: a.test_clock,
            ..EngineConfig::default()
        },
        api: ApiConfig {
            limits,
            create_projects: projects.is_empty(),
            admin_key,
            snapshot_dir,
        },
        http,
        on_storage_error: a
            .on_storage_error
            .or(f.on_storage_error)
            .unwrap_or_default(),
        workers: a.workers.or(f.workers).unwrap_or(2),
        salvage_wal: a.salvage_wal,
        conn,
        data_dir,
        socket,
        socket_mode,
        projects,
        project_settings,
    })
}

/// The address `--http` listens on: a port alone means 127.0.0.1; an address that is not
/// loopback (api.md: "loopback addresses by default") only with `allow_remote`.
fn tcp_address(addr: &str, allow_remote: bool) -> anyhow::Result<String> {
    use std::net::ToSocketAddrs;
    let addr = addr.trim();
    let addr = match addr.parse::<u16>() {
        Ok(port) => format!("127.0.0.1:{port}"),
        Err(_) => addr.to_string(),
    };
    let resolved: Vec<std::net::SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| {
            Failure::user(format!(
                "--http {addr:?} is not an address to listen on ({e}); give host:port, e.g. 127.0.0.1:8010"
            ))
        })?
        .collect();
    if let Some(remote) = resolved.iter().find(|a| !a.ip().is_loopback()) {
        if !allow_remote {
            return Err(Failure::user(format!(
                "--http {addr} would listen on {}, which other machines can reach; use a loopback address such as 127.0.0.1:{}, or pass --http-allow-remote to open the capture endpoints to the network (/api/ still needs --admin-key-file's key)",
                remote.ip(),
                remote.port()
            )));
        }
    }
    Ok(addr)
}

/// The connection limits: flags/env, then the file, then the defaults.
fn conn_limits(a: &ServeArgs, f: &FileConfig) -> anyhow::Result<ConnLimits> {
    let d = ConnLimits::default();
    let secs = |flag: Option<u64>, file: Option<u64>, default: Duration| {
        flag.or(file).map_or(default, Duration::from_secs)
    };
    let limits = ConnLimits {
        max_connections: a
            .max_connections
            .or(f.max_connections)
            .unwrap_or(d.max_connections),
        header_timeout: secs(a.header_timeout, f.header_timeout, d.header_timeout),
        body_timeout: secs(a.body_timeout, f.body_timeout, d.body_timeout),
        keep_alive: secs(a.keep_alive, f.keep_alive, d.keep_alive),
        max_inflight_body_bytes: a
            .max_inflight_body_bytes
            .or(f.max_inflight_body_bytes)
            .unwrap_or(d.max_inflight_body_bytes),
    };
    refuse_zero(&[
        ("--max-connections", limits.max_connections == 0),
        ("--header-timeout", limits.header_timeout.is_zero()),
        ("--body-timeout", limits.body_timeout.is_zero()),
        (
            "--max-inflight-body-bytes",
            limits.max_inflight_body_bytes == 0,
        ),
    ])?;
    Ok(limits)
}

/// Refuse the first limit that is zero (flag, is it zero): such a daemon would start and then
/// refuse or stall every request.
fn refuse_zero(limits: &[(&str, bool)]) -> anyhow::Result<()> {
    match limits.iter().find(|(_, zero)| *zero) {
        Some((flag, _)) => Err(Failure::user(format!(
            "{flag} must be at least 1 (it cannot be turned off)"
        ))),
        None => Ok(()),
    }
}

/// Refuse a live socket, replace a stale one.
fn claim_socket(socket: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = socket.symlink_metadata() {
        // Only a socket file is ever removed: a mistyped --socket must not delete a file that
        // happens to be there (a data dir's CURRENT, say).
        if !meta.file_type().is_socket() {
            return Err(Failure::user(format!(
                "--socket {} exists and is not a socket, so idstitch leaves it alone; give a \
                 --socket path that is free or holds a stale idstitch socket",
                socket.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(Failure::user(format!(
                "another idstitch is serving on {}; stop it first, or pass a different --socket",
                socket.display()
            )));
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("cannot remove stale socket {}", socket.display()))?;
        tracing::info!(socket = %socket.display(), "Replaced a stale socket file.");
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            Failure::user(format!(
                "cannot create {}, the socket's directory: {e}; give a --data-dir (or --socket) \
                 whose parent is a writable directory",
                dir.display()
            ))
        })?;
    }
    Ok(())
}

/// Raise the soft limit on open files to the hard one, as servers do: a common soft limit of
/// 1,024 ran out near 500 connections, far below --max-connections, and then connections went
/// without their watchdog. Says so when even the hard limit is below `wanted`.
fn raise_open_files_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let before = limit.rlim_cur;
    if before < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
            tracing::info!(
                from = before,
                to = limit.rlim_cur,
                "Raised the open-files limit."
            );
        }
    }
    if limit.rlim_cur < wanted {
        tracing::warn!(
            limit = limit.rlim_cur,
            wanted,
            "The open-files limit is below what --max-connections may need: raise it (ulimit -n) or lower --max-connections."
        );
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let s = settings(args)?;
    claim_socket(&s.socket)?;
    let mut opened = None;
    let served = actix_rt::System::new().block_on(async {
        // Listened for before RocksDB opens the data dir: opening replays its write-ahead log
        // after an unclean stop, which can take seconds, and a signal then used to end the
        // process by its default action. It is now served once the daemon is up (a clean stop).
        let signals = Signals::new();
        let store = open_store(&s.data_dir, s.salvage_wal)?;
        opened = Some(store.clone());
        serve(s, store, signals).await
    });
    // The runtime and its actors are gone with their handles; the HTTP workers' threads may
    // still be dropping theirs. The database closes here, before `main` returns.
    if let Some(store) = opened {
        if !store.close(std::time::Duration::from_secs(10)) {
            tracing::warn!("A handle of the database outlived the stop by 10 s; its background work was stopped instead.");
        }
    }
    served
}

fn open_store(data_dir: &Path, salvage_wal: bool) -> anyhow::Result<Store> {
    tracing::info!(data_dir = %data_dir.display(), "Opening the data dir.");
    let opened = match salvage_wal {
        true => {
            tracing::warn!(
                "--salvage-wal: a damaged write-ahead log record, if any, is dropped with every \
                 record after it. Start without --salvage-wal from now on."
            );
            Store::open_salvaging(data_dir)
        }
        false => Store::open(data_dir),
    };
    opened.map_err(|e| super::cannot_open(data_dir, e, "is another idstitch using it?"))
}

async fn serve(s: Settings, store: Store, mut signals: Signals) -> anyhow::Result<ExitCode> {
    let metrics = Metrics::new();
    let policy = s.on_storage_error;
    let on_fatal = move |msg: &str| match policy {
        OnStorageError::Exit => {
            eprintln!("idstitch: the log could not be written ({msg}); exiting so that nothing unwritten is acknowledged. Fix the cause (disk space, permissions) and restart.");
            std::process::exit(2);
        }
        // The writer has just logged the cause; this says what happens now and what to do.
        OnStorageError::Degrade => {
            tracing::error!(
                "Writes stopped: captures are answered 503 with Retry-After, reads go on. \
                 Nothing unwritten was acknowledged. Fix the cause (disk space, permissions), \
                 then restart idstitch: it recovers every acknowledged event from the log."
            );
        }
    };
    let started = std::time::Instant::now();
    // Said before the rebuild, which replays the whole log: minutes for a long one.
    if let Ok(Some(f)) = crate::store::verify::other_derived_format(&store) {
        tracing::info!(
            from_format = f,
            format = crate::store::codec::DERIVED_FORMAT,
            entries = store.last_log_seq().map(|s| s.0).unwrap_or_default(),
            "The derived state was written by another idstitch: rebuilding it from the log \
             (this build derives some entries differently). The daemon is ready when it is done."
        );
    }
    let (engine, recovered, writer) =
        Engine::start(store, s.engine.clone(), metrics, on_fatal, |seq, last| {
            tracing::info!(seq = seq.0, last = last.0, "Replaying the log.");
        })
        .map_err(|e| match &e {
            EngineError::Store(se) if se.is_corruption() => super::damaged(&s.data_dir, se),
            _ => e.into(),
        })?;
    tracing::info!(
        last_seq = recovered.last_seq.0,
        replayed = recovered.replayed,
        rebuilt = recovered.rebuilt,
        elapsed_ms = started.elapsed().as_millis() as u64,
        data_dir = %s.data_dir.display(),
        "Recovered."
    );
    let (servers, state) = match listen(&s, &engine).await {
        Ok(started) => started,
        Err(e) => {
            // Stopped here, inside the runtime: actors dropped with it, outside it, panicked
            // on their timers and printed a backtrace over the real cause (a port in use).
            let _ = engine.shutdown().await;
            let _ = writer.join();
            return Err(e);
        }
    };
    let handles: Vec<_> = servers.iter().map(|srv| srv.handle()).collect();
    for srv in servers {
        actix_rt::spawn(srv);
    }
    tracing::info!(socket = %s.socket.display(), http = ?s.http, "Ready.");
    signals.next().await;
    tracing::info!(
        "Signal received: finishing in-flight requests (a second signal exits at once)."
    );
    state.ready.store(false, Ordering::Relaxed);
    actix_rt::spawn(async move {
        signals.next().await;
        eprintln!("idstitch: second signal, exiting now (the log is the truth: nothing acknowledged is lost)");
        std::process::exit(130);
    });
    for h in handles {
        h.stop(true).await;
    }
    engine.shutdown().await.map_err(|e| {
        Failure::runtime(format!(
            "{e}. Fix the cause (disk space, permissions, the disk itself), then restart \
             idstitch: it recovers every acknowledged event from the log"
        ))
    })?;
    let _ = writer.join();
    let flushed = std::time::Instant::now();
    match engine.store().flush_all() {
        Ok(()) => tracing::info!(
            elapsed_ms = flushed.elapsed().as_millis() as u64,
            "Memtables flushed: the next start has no log to replay."
        ),
        // Nothing is lost: the write-ahead log still holds it and the next start replays it.
        Err(e) => {
            tracing::warn!(error = %e, "Could not flush memtables at stop; the next start replays the write-ahead log.")
        }
    }
    let _ = std::fs::remove_file(&s.socket);
    tracing::info!("Stopped.");
    Ok(ExitCode::SUCCESS)
}

/// The projects of `--projects` and the listeners: the daemon's last steps before it is ready.
async fn listen(
    s: &Settings,
    engine: &Engine,
) -> anyhow::Result<(Vec<actix_web::dev::Server>, web::Data<AppState>)> {
    for (token, name) in &s.projects {
        engine.resolve_project(token, name.clone(), true).await?;
    }
    for (token, patch) in &s.project_settings {
        if let Some(id) = engine.resolve_project(token, None, true).await? {
            engine.patch_settings(id, patch.clone()).await?;
        }
    }
    let state = web::Data::new(AppState {
        engine: engine.clone(),
        config: s.api.clone(),
        ready: AtomicBool::new(true),
        tokens: RwLock::new(HashMap::new()),
    });
    // Each connection takes two descriptors (its socket and its watchdog's duplicate), on
    // every worker of every listener; plus RocksDB's files and the rest.
    let listeners = 1 + usize::from(s.http.is_some());
    raise_open_files_limit((s.conn.max_connections * s.workers * listeners * 2 + 1024) as u64);
    server::start(
        state.clone(),
        &s.socket,
        s.socket_mode,
        s.http.as_deref(),
        s.workers,
        s.conn,
    )
    .map_err(|e| {
        Failure::user(format!(
            "cannot listen {e}; stop what uses it, or give another address"
        ))
    })
    .map(|servers| (servers, state))
}

/// SIGTERM and SIGINT, listened for from before the daemon is ready until it exits, so that
/// no signal is missed between the first and the second.
struct Signals {
    term: Option<actix_rt::signal::unix::Signal>,
    int: Option<actix_rt::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        use actix_rt::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn next(&mut self) {
        match (self.term.as_mut(), self.int.as_mut()) {
            (Some(term), Some(int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                let _ = actix_rt::signal::ctrl_c().await;
            }
        }
    }
}
