//! Runs the real `idstitch` binary on a temp dir and socket, and talks to it over the socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use idstitch::cli::client::{Conn, Response};
use serde_json::Value;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_idstitch")
}

/// A running daemon.
pub struct Daemon {
    /// Its data directory (kept across restarts).
    pub dir: PathBuf,
    /// Its socket.
    pub socket: PathBuf,
    /// `host:port` when started with TCP.
    pub http: Option<String>,
    extra: Vec<String>,
    /// Extra environment variables of `serve` (the tests' fault hooks).
    env: Vec<(String, String)>,
    /// Where its stderr goes (the terminal when `None`).
    log: Option<PathBuf>,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
    _tmp: Option<tempfile::TempDir>,
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Daemon {
    /// A daemon on a fresh temp dir.
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// A daemon on a fresh temp dir with extra `serve` arguments.
    pub fn start_with(extra: &[&str]) -> Daemon {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("store");
        let mut d = Daemon::on(&dir, extra);
        d._tmp = Some(tmp);
        d
    }

    /// A daemon on a fresh temp dir with extra environment variables (kept across restarts).
    pub fn start_with_env(env: &[(&str, &str)]) -> Daemon {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut d = Daemon::unstarted(&tmp.path().join("store"), &[], None);
        d.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        d._tmp = Some(tmp);
        d.spawn();
        d
    }

    /// A daemon on a given data dir (not removed afterwards).
    pub fn on(dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::on_logged(dir, extra, None)
    }

    /// [`Daemon::on`], with its stderr appended to `log` (info level) when given.
    pub fn on_logged(dir: &Path, extra: &[&str], log: Option<&Path>) -> Daemon {
        let mut d = Daemon::unstarted(dir, extra, log);
        d.spawn();
        d
    }

    fn unstarted(dir: &Path, extra: &[&str], log: Option<&Path>) -> Daemon {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut d = Daemon {
            socket: dir.join("idstitch.sock"),
            dir: dir.to_path_buf(),
            http: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            log: log.map(Path::to_path_buf),
            child: None,
            rt,
            _tmp: None,
        };
        if let Some(i) = d.extra.iter().position(|a| a == "--http") {
            d.http = d.extra.get(i + 1).cloned();
        }
        d
    }

    fn spawn(&mut self) {
        let (level, stderr) = match &self.log {
            None => ("warn", Stdio::inherit()),
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("open the daemon log");
                ("info", Stdio::from(f))
            }
        };
        let child = Command::new(bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", level)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start idstitch serve");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60));
    }

    /// Poll `/_health` until it answers 200 (or panic after `timeout`).
    pub fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("idstitch exited before it was ready: {status}");
            }
            if let Ok(r) = self.try_request("GET", "/_health", &[], Vec::new()) {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                start.elapsed() < timeout,
                "idstitch not ready after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One request over a fresh connection to the socket.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> anyhow::Result<Response> {
        self.rt.block_on(async {
            let mut c = Conn::unix(&self.socket).await?;
            c.request(method, path, headers, body).await
        })
    }

    /// One request over TCP.
    pub fn tcp_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Response {
        let addr = self.http.clone().expect("started with --http");
        self.rt
            .block_on(async {
                let mut c = Conn::tcp(&addr).await?;
                c.request(method, path, headers, body).await
            })
            .expect("tcp request")
    }

    /// A request that must get an answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Response {
        self.try_request(method, path, headers, body)
            .expect("request")
    }

    /// GET.
    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], Vec::new())
    }

    /// POST JSON.
    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.request(
            "POST",
            path,
            &[("content-type", "application/json")],
            serde_json::to_vec(body).expect("json"),
        )
    }

    /// POST a batch to `/batch/` and insist on exactly 200.
    pub fn capture(&self, token: &str, events: Value) -> Value {
        let r = self.post(
            "/batch/",
            &serde_json::json!({"api_key": token, "batch": events}),
        );
        assert_eq!(
            r.status,
            200,
            "capture failed: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }

    /// The person of a distinct ID, if any.
    pub fn person(&self, token: &str, did: &str) -> Option<Value> {
        let r = self.get(&format!(
            "/api/projects/{token}/persons/?distinct_id={}",
            enc(did)
        ));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["results"]
            .as_array()
            .and_then(|a| a.first().cloned())
    }

    /// Every person of a project, following `next` (none when the project does not exist
    /// yet: a 404 on the first page). A page without `results` or `next` fails the test.
    pub fn all_persons(&self, token: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut path = format!("/api/projects/{token}/persons/?limit=500");
        loop {
            let r = self.get(&path);
            if r.status == 404 && out.is_empty() {
                return out;
            }
            assert_eq!(
                r.status,
                200,
                "{path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let j = r.json();
            let page = j["results"]
                .as_array()
                .unwrap_or_else(|| panic!("{path}: no `results` array in {j}"));
            out.extend(page.iter().cloned());
            match &j["next"] {
                Value::String(n) => path = path_of_url(n),
                Value::Null if j.get("next").is_some() => return out,
                other => panic!("{path}: `next` is {other}, not a URL or null, in {j}"),
            }
        }
    }

    /// Events of a person (uuid), newest first.
    pub fn events_of_person(&self, token: &str, uuid: &str) -> Vec<Value> {
        let r = self.get(&format!(
            "/api/projects/{token}/events/?person_id={uuid}&limit=10000"
        ));
        assert_eq!(r.status, 200);
        r.json()["results"].as_array().cloned().unwrap_or_default()
    }

    /// Warnings of a project, newest first.
    pub fn warnings(&self, token: &str) -> Vec<Value> {
        let r = self.get(&format!("/api/projects/{token}/ingestion_warnings/"));
        assert_eq!(r.status, 200);
        r.json()["results"].as_array().cloned().unwrap_or_default()
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, no cleanup.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().expect("wait")
    }

    /// Start again on the same data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Start again after a stop.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// `idstitch verify` on the (stopped) data dir must pass.
    pub fn assert_verifies(&self) {
        let out = Command::new(bin())
            .args(["verify", "--data-dir"])
            .arg(&self.dir)
            .output()
            .expect("run verify");
        assert!(
            out.status.success(),
            "verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Percent-encode a query value.
pub fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The distinct IDs of a person JSON.
pub fn dids(p: &Value) -> Vec<String> {
    p["distinct_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The log entry of one person's creation at `seq`: `did` its only distinct ID (uuid v5 of
/// it), with `properties` (tests that build a log straight through the store).
pub fn creation(
    project: idstitch::domain::ProjectId,
    seq: u64,
    did: String,
    properties: idstitch::domain::Props,
    created_at_ms: i64,
) -> (
    idstitch::domain::Seq,
    std::sync::Arc<idstitch::domain::Entry>,
) {
    let change = idstitch::domain::Change::PersonCreated {
        person: idstitch::domain::person_uuid(project, &did),
        distinct_ids: vec![did],
        properties,
        is_identified: false,
        created_at_ms,
    };
    let entry = idstitch::domain::Entry {
        project,
        at_ms: 0,
        cause: None,
        changes: vec![change],
    };
    (idstitch::domain::Seq(seq), std::sync::Arc::new(entry))
}

/// The path and query of a page's `next`, which must be an absolute URL (api.md: "the URL of
/// the next page"), as PostHog's are.
pub fn path_of_url(url: &str) -> String {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or_else(|| panic!("`next` is {url:?}, not an absolute URL"));
    let at = rest
        .find('/')
        .unwrap_or_else(|| panic!("`next` {url:?} has no path"));
    assert!(at > 0, "`next` {url:?} has no host");
    rest[at..].to_string()
}
