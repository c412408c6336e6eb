//! The command line: ingest, configuration precedence, logs, help.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::support::{bin, dids, free_port, Daemon};

/// `idstitch ingest FILE ARGS --socket S`, FILE holding `text`.
fn ingest_file(d: &Daemon, text: &str, args: &[&str]) -> std::process::Output {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("events.ndjson");
    std::fs::write(&file, text).unwrap();
    Command::new(bin())
        .arg("ingest")
        .arg(&file)
        .args(args)
        .arg("--socket")
        .arg(&d.socket)
        .output()
        .unwrap()
}

#[test]
fn ingest_sends_an_ndjson_file_in_order_and_summarises() {
    let d = Daemon::start();
    let mut lines = String::new();
    for i in 0..1200 {
        lines.push_str(&json!({"event": "e", "distinct_id": format!("anon-{}", i % 10), "uuid": format!("n{i}")}).to_string());
        lines.push('\n');
    }
    lines.push_str(&json!({"event": "$identify", "distinct_id": "user", "properties": {"$anon_distinct_id": "anon-3"}}).to_string());
    let out = ingest_file(&d, &lines, &["--token", "phc_cli", "--batch-size", "250"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("1201 accepted, 0 rejected"));
    assert_eq!(
        dids(&d.person("phc_cli", "user").unwrap()),
        vec!["anon-3", "user"]
    );
}

#[test]
fn ingest_reads_stdin_and_exits_non_zero_when_events_are_rejected() {
    let d = Daemon::start();
    let mut child = Command::new(bin())
        .args(["ingest", "-", "--socket"])
        .arg(&d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let body = json!({"api_key": "phc_cli", "batch": [{"event": "e", "distinct_id": "ok"}, {"event": "e"}]});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("1 accepted, 1 rejected"));
    assert!(d.person("phc_cli", "ok").is_some());
}

/// api.md: bad arguments are a failure the user can fix (exit 1), told in one plain line.
#[test]
fn bad_arguments_exit_1_with_one_line_and_help_exits_0() {
    let out = Command::new(bin())
        .args(["serve", "--no-such-flag"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--no-such-flag") && stderr.contains("--help"),
        "{stderr}"
    );
    let help = Command::new(bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--data-dir"));
}

/// A pipe (`/dev/stdin`, `<(zcat f.gz)`) is read once: counting its lines for the progress bar
/// with a second reader drained the events past the first 64 KiB.
#[test]
fn ingest_reads_a_pipe_given_by_path_whole() {
    let d = Daemon::start();
    let mut child = Command::new(bin())
        .args(["ingest", "/dev/stdin", "--token", "phc_pipe", "--socket"])
        .arg(&d.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..3000 {
            let line = json!({"event": "e", "distinct_id": format!("pipe-{i}"), "uuid": format!("p{i}"),
                "properties": {"pad": "x".repeat(100)}});
            writeln!(stdin, "{line}").unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("3000 accepted, 0 rejected"), "{stdout}");
    assert!(d.person("phc_pipe", "pipe-2999").is_some());
}

/// `--token` is for events that carry none: an event's own token still names its project.
#[test]
fn ingest_token_does_not_override_an_events_own_token() {
    let d = Daemon::start();
    let lines = [
        json!({"event": "e", "distinct_id": "own", "api_key": "phc_own"}),
        json!({"event": "e", "distinct_id": "nested", "properties": {"token": "phc_own"}}),
        json!({"event": "e", "distinct_id": "plain"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let out = ingest_file(&d, &text, &["--token", "phc_default"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.person("phc_own", "own").is_some());
    assert!(d.person("phc_own", "nested").is_some());
    assert!(d.person("phc_default", "plain").is_some());
    assert!(d.person("phc_default", "own").is_none());
}

/// Why an event was rejected reaches stderr when it is not a terminal, with the event's line
/// (blank lines counted); a request refused mid-file says what was acknowledged before it.
#[test]
fn ingest_reports_rejections_by_line_and_where_a_refused_run_stopped() {
    let d = Daemon::start();
    let text = format!(
        "\n{}\n\n{}\n{}\n",
        json!({"event": "e", "distinct_id": "a", "api_key": "phc_lines"}),
        json!({"event": "e", "api_key": "phc_lines"}),
        json!({"event": "e", "distinct_id": "no-token"}),
    );
    let out = ingest_file(&d, &text, &["--batch-size", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rejected line 4:"), "{stderr}");
    assert!(
        stderr.contains("request 2 (lines 5-5) was refused with 400")
            && stderr.contains("the 2 events up to line 4 were acknowledged; resend from line 5"),
        "{stderr}"
    );
    assert!(d.person("phc_lines", "a").is_some());
}

#[test]
fn ingest_without_a_daemon_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("e.json");
    std::fs::write(&file, "[]").unwrap();
    let out = Command::new(bin())
        .args(["ingest", file.to_str().unwrap(), "--socket"])
        .arg(tmp.path().join("none.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `idstitch serve` running"));
}

#[test]
fn flags_beat_environment_which_beats_the_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let config = tmp.path().join("idstitch.toml");
    std::fs::write(
        &config,
        format!("http = \"127.0.0.1:{file_port}\"\nmerge_limit = 5\n"),
    )
    .unwrap();
    let dir = tmp.path().join("store");
    let start = |env: Option<u16>, flag: Option<u16>| {
        let mut c = Command::new(bin());
        c.args(["serve", "--data-dir"])
            .arg(&dir)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn");
        if let Some(p) = env {
            c.env("IDSTITCH_HTTP", format!("127.0.0.1:{p}"));
        }
        if let Some(p) = flag {
            c.arg("--http").arg(format!("127.0.0.1:{p}"));
        }
        c.spawn().unwrap()
    };
    let answers = |port: u16| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    };
    for (env, flag, want) in [
        (None, None, file_port),
        (Some(env_port), None, env_port),
        (Some(env_port), Some(flag_port), flag_port),
    ] {
        let mut child = start(env, flag);
        assert!(answers(want), "expected a listener on {want}");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        assert!(child.wait().unwrap().success());
    }
}

#[test]
fn a_bad_config_file_is_a_clear_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "no_such_option = 1\n").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(tmp.path().join("s"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no_such_option") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let child = Command::new(bin())
        .args(["--log-format", "json", "serve", "--data-dir"])
        .arg(tmp.path().join("s"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = tmp.path().join("s/idstitch.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.contains("Ready.")));
    for l in lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON: {l}"
        );
    }
}

#[test]
fn serve_help_documents_every_option() {
    let out = Command::new(bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--data-dir",
        "--socket",
        "--http",
        "--config",
        "--admin-key-file",
        "--projects",
        "--merge-limit",
        "--max-body-bytes",
        "IDSTITCH_DATA_DIR",
    ] {
        assert!(help.contains(opt), "serve --help does not mention {opt}");
    }
}

#[test]
fn sigterm_finishes_in_flight_work_and_exits_0() {
    let mut d = Daemon::start();
    d.capture(
        "phc_cli",
        json!([{"event": "e", "distinct_id": "before-term", "uuid": "t1"}]),
    );
    assert_eq!(d.terminate().code(), Some(0));
    assert!(!d.socket.exists(), "a clean stop removes the socket");
    d.start_again();
    assert!(d.person("phc_cli", "before-term").is_some());
}

#[test]
fn a_second_signal_exits_at_once_while_draining() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let mut child = Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .env("RUST_LOG", "info,idstitch::api::watchdog=debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Synchronise on the daemon's own log lines, never on time.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?}"),
            }
        }
    };
    wait_for("Ready.");
    let mut conn = std::os::unix::net::UnixStream::connect(dir.join("idstitch.sock")).unwrap();
    // An in-flight request: headers sent, body withheld, so a graceful stop has to wait for it.
    conn.write_all(b"POST /batch/ HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{").unwrap();
    // Only once the daemon has the request in hand is there something to drain: a signal
    // that came first would find an idle connection and stop at once.
    wait_for("Request started.");
    let pid = child.id().to_string();
    let term = || {
        Command::new("kill")
            .arg("-TERM")
            .arg(&pid)
            .status()
            .unwrap()
    };
    term();
    wait_for("Signal received");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal drains instead of exiting"
    );
    term();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "the second signal exits at once");
}
