//! TCP: capture is open, `/api/` needs the admin key; the socket is trusted.

use serde_json::json;

use crate::support::{free_port, Daemon};

#[test]
fn api_on_tcp_without_an_admin_key_is_forbidden_but_capture_works() {
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with(&["--http", &addr]);
    let body = serde_json::to_vec(
        &json!({"api_key": "phc_tcp", "batch": [{"event": "e", "distinct_id": "t"}]}),
    )
    .unwrap();
    assert_eq!(
        d.tcp_request(
            "POST",
            "/batch/",
            &[("content-type", "application/json")],
            body
        )
        .status,
        200
    );
    assert_eq!(
        d.tcp_request("GET", "/api/projects/", &[], Vec::new())
            .status,
        403
    );
    assert_eq!(d.get("/api/projects/").status, 200, "the socket is trusted");
}

#[test]
fn api_on_tcp_needs_the_right_bearer_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("admin.key");
    std::fs::write(&key, "s3cret-key\n").unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_with(&["--http", &addr, "--admin-key-file", key.to_str().unwrap()]);
    assert_eq!(
        d.tcp_request("GET", "/api/projects/", &[], Vec::new())
            .status,
        401
    );
    assert_eq!(
        d.tcp_request(
            "GET",
            "/api/projects/",
            &[("authorization", "Bearer wrong")],
            Vec::new()
        )
        .status,
        401
    );
    assert_eq!(
        d.tcp_request(
            "GET",
            "/api/projects/",
            &[("authorization", "Bearer s3cret-key")],
            Vec::new()
        )
        .status,
        200
    );
    // The scheme's name is case-insensitive (RFC 9110 §11.1).
    assert_eq!(
        d.tcp_request(
            "GET",
            "/api/projects/",
            &[("authorization", "bearer s3cret-key")],
            Vec::new()
        )
        .status,
        200
    );
    assert_eq!(
        d.tcp_request("GET", "/_health", &[], Vec::new()).status,
        200
    );
}

#[test]
fn strict_mode_refuses_unknown_tokens_with_401() {
    let dir = tempfile::tempdir().unwrap();
    let projects = dir.path().join("projects.toml");
    std::fs::write(
        &projects,
        "[[project]]\ntoken = \"phc_known\"\nname = \"Known\"\n",
    )
    .unwrap();
    let d = Daemon::start_with(&["--projects", projects.to_str().unwrap()]);
    let r = d.post(
        "/batch/",
        &json!({"api_key": "phc_unknown", "batch": [{"event": "e", "distinct_id": "x"}]}),
    );
    assert_eq!(r.status, 401);
    d.capture("phc_known", json!([{"event": "e", "distinct_id": "x"}]));
    assert_eq!(
        d.get("/api/projects/phc_known/").json()["name"],
        json!("Known")
    );
}

#[test]
fn metrics_are_exposed_in_prometheus_format() {
    let d = Daemon::start();
    d.capture("phc_m", json!([{"event": "e", "distinct_id": "x"}]));
    let r = d.get("/metrics");
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(text.contains("idstitch_events_accepted_total 1"), "{text}");
    // What it is: OpenMetrics (`_total` counters, `# EOF`), labelled so, or a scraper reading
    // Prometheus' older text format takes the counters for untyped.
    assert!(text.ends_with("# EOF\n"), "{text}");
    let content_type = r.headers.iter().find(|(k, _)| k == "content-type").unwrap();
    assert!(
        content_type
            .1
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type:?}"
    );
    assert!(text.contains("idstitch_log_fsync_seconds_bucket"));
    // The one capture request is timed in each of its stages.
    for stage in ["decode", "route", "durable"] {
        let line = format!("idstitch_capture_stage_seconds_count{{kind=\"{stage}\"}} 1\n");
        assert!(text.contains(&line), "no {line:?} in {text}");
    }
}

/// api.md: "`--http ADDR`, default off; loopback addresses by default". A port alone is
/// 127.0.0.1; an address other machines can reach is refused unless asked for.
#[test]
fn http_listens_on_loopback_unless_remote_is_allowed() {
    use std::process::Command;
    let health = |d: &Daemon| d.tcp_request("GET", "/_health", &[], Vec::new()).status;

    let port = free_port().to_string();
    let mut d = Daemon::start_with(&["--http", &port]);
    d.http = Some(format!("127.0.0.1:{port}"));
    assert_eq!(health(&d), 200, "a port alone listens on 127.0.0.1");
    drop(d);

    let tmp = tempfile::tempdir().unwrap();
    let everywhere = format!("0.0.0.0:{}", free_port());
    let mut child = Command::new(crate::support::bin())
        .args(["serve", "--data-dir"])
        .arg(tmp.path().join("store"))
        .args(["--http", &everywhere])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A daemon that started anyway would run until killed.
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("serve --http {everywhere} started listening instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--http-allow-remote"), "{stderr}");
    assert!(
        !tmp.path().join("store").exists(),
        "refused before the data dir was made"
    );

    let mut d = Daemon::start_with(&["--http", &everywhere, "--http-allow-remote"]);
    d.http = Some(everywhere.replace("0.0.0.0", "127.0.0.1"));
    assert_eq!(health(&d), 200, "allowed, it listens on every address");
}

/// A port in use is the user's to fix: exit 1 and one line saying so. The actors started
/// for recovery used to be dropped outside the runtime then, and panicked on their timers,
/// printing a backtrace over the cause.
#[test]
fn a_port_in_use_is_one_line_and_exit_1_not_a_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::support::bin())
        .args(["serve", "--data-dir"])
        .arg(tmp.path().join("store"))
        .args(["--http", &addr])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on --http {addr}: Address already in use"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
