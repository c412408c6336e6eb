//! The daemon under load: where it is, starting and stopping one, and what it reports about
//! itself (`/metrics`, `/proc/<pid>`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use idstitch::cli::client::{Conn, Response};

/// How to reach the daemon.
#[derive(Clone, Debug)]
pub enum Target {
    /// Its Unix socket (every endpoint is open there).
    Unix(PathBuf),
    /// TCP, with the admin key `/api/` needs there.
    Tcp {
        addr: String,
        admin_key: Option<String>,
    },
}

impl Target {
    /// Open a keep-alive connection.
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        match self {
            Target::Unix(path) => Conn::unix(path).await,
            Target::Tcp { addr, .. } => Conn::tcp(addr).await,
        }
    }

    /// Where, for the report.
    pub fn describe(&self) -> String {
        match self {
            Target::Unix(path) => format!("unix:{}", path.display()),
            Target::Tcp { addr, .. } => format!("tcp:{addr}"),
        }
    }

    /// `GET path`, with the admin key on TCP.
    pub async fn get(&self, conn: &mut Conn, path: &str) -> anyhow::Result<Response> {
        let auth;
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Target::Tcp {
            admin_key: Some(key),
            ..
        } = self
        {
            auth = format!("Bearer {key}");
            headers.push(("authorization", auth.as_str()));
        }
        conn.request("GET", path, &headers, Vec::new()).await
    }
}

/// A daemon this run started on a temporary data directory.
pub struct Spawned {
    child: Option<Child>,
    /// Its process id.
    pub pid: u32,
    /// Its Unix socket.
    pub socket: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Spawned {
    /// Start `bin serve` with its data directory and socket in `dir`, plus `extra` arguments.
    pub fn start(bin: &Path, dir: &Path, extra: &[String]) -> anyhow::Result<Spawned> {
        if !bin.exists() {
            bail!(
                "no daemon binary at {}: build it with `cargo build --release`, or pass --bin",
                bin.display()
            );
        }
        let data_dir = dir.join("data");
        let socket = dir.join("s.sock");
        let log = dir.join("daemon.log");
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Spawned {
            pid: child.id(),
            child: Some(child),
            socket,
            data_dir,
            log,
        })
    }

    /// Whether it has exited already (then with what).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then wait up to `timeout` for the exit (SIGKILL after that).
    pub fn stop(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("the daemon was already stopped")
        };
        if child.try_wait()?.is_none() {
            let status = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid.to_string())
                .status()?;
            if !status.success() {
                bail!("kill -TERM {} failed", self.pid);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the daemon did not exit within {timeout:?} of SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Spawned {
    /// Never leave a daemon behind (on a panic or an early error).
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Wait until `GET /_health` answers 200, at most `timeout`.
pub async fn wait_healthy(
    target: &Target,
    spawned: Option<&mut Spawned>,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut spawned = spawned;
    let mut last = String::from("no answer yet");
    while started.elapsed() < timeout {
        if let Some(s) = spawned.as_deref_mut() {
            if let Some(status) = s.exited() {
                bail!(
                    "the daemon exited during start-up ({status}); its log ends with:\n{}",
                    s.log_tail(20)
                );
            }
        }
        match target.connect().await {
            Ok(mut conn) => match conn.get("/_health").await {
                Ok(r) if r.status == 200 => return Ok(started.elapsed()),
                Ok(r) => last = format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "the daemon at {} was not healthy within {timeout:?} (last: {last})",
        target.describe()
    )
}

/// The daemon's counters, summed over labels: `idstitch_log_fsyncs_total` → value (on a new
/// connection: an idle one may have been closed by the server).
pub async fn metrics(target: &Target) -> anyhow::Result<HashMap<String, f64>> {
    let mut conn = target.connect().await?;
    let r = target.get(&mut conn, "/metrics").await?;
    if r.status != 200 {
        bail!("GET /metrics answered {}", r.status);
    }
    Ok(parse_metrics(&String::from_utf8_lossy(&r.body)))
}

/// Parse the Prometheus text format: each metric summed over its labels under its bare name,
/// and each labelled series under its whole name (`name{labels}`).
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let base = name.split('{').next().unwrap_or(name);
        *out.entry(base.to_string()).or_insert(0.0) += v;
        if base != name {
            out.insert(name.to_string(), v);
        }
    }
    out
}

/// The value of label `label` in a series name `name{a="x",b="y"}`.
pub fn label<'a>(series: &'a str, label: &str) -> Option<&'a str> {
    let labels = series.split_once('{')?.1.strip_suffix('}')?;
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == label).then(|| v.trim_matches('"'))
    })
}

/// What the kernel says about a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    /// Peak resident set size (`VmHWM`), in KiB.
    pub peak_rss_kib: u64,
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
}

/// Read `/proc/<pid>/status` and `/proc/<pid>/stat`.
pub fn proc_stats(pid: u32) -> anyhow::Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM in /proc/<pid>/status")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, cpu_ticks) = parse_task_stat(&stat).context("bad /proc/<pid>/stat")?;
    Ok(ProcStats {
        peak_rss_kib,
        cpu_seconds: cpu_ticks as f64 / clock_ticks() as f64,
    })
}

/// CPU seconds (user + system) of each thread of a process, summed by thread kind: the
/// thread's name without a trailing number (`rocksdb:high0`, `rocksdb:high1` → `rocksdb:high`),
/// and `main` for the main thread, whatever the binary is called. A thread that ended is not
/// listed (its time is still in the process's total).
pub fn thread_cpu(pid: u32) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut by_kind = BTreeMap::new();
    let per_tick = 1.0 / clock_ticks() as f64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        // A thread may end between the listing and the read: skip it.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Some((name, ticks)) = parse_task_stat(&stat) else {
            continue;
        };
        let kind = if task.file_name().to_str() == Some(&pid.to_string()) {
            "main".to_string()
        } else {
            thread_kind(name).to_string()
        };
        *by_kind.entry(kind).or_insert(0.0) += ticks as f64 * per_tick;
    }
    Ok(by_kind)
}

/// The name and the user plus system ticks (fields 14 and 15) in a `/proc/<pid>/stat` or
/// `/proc/<pid>/task/<tid>/stat` line. The name is between the first `(` and the last `)`: it
/// may itself hold spaces and parentheses.
fn parse_task_stat(stat: &str) -> Option<(&str, u64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((name, ticks(11)? + ticks(12)?))
}

/// A thread's name without the number that tells threads of one kind apart.
fn thread_kind(name: &str) -> &str {
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if base.len() == name.len() || base.is_empty() {
        return name;
    }
    base.strip_suffix(['-', ':', '_', '#']).unwrap_or(base)
}

/// `sysconf(_SC_CLK_TCK)`, via `getconf` (100 on every Linux we know).
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}
