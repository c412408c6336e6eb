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
    let text = String::from_utf8(d.get("/metrics").body.to_vec()).unwrap();
    assert!(text.contains("idstitch_events_accepted_total 1"), "{text}");
    assert!(text.contains("idstitch_log_fsync_seconds_bucket"));
    // The one capture request is timed in each of its stages.
    for stage in ["decode", "route", "durable"] {
        let line = format!("idstitch_capture_stage_seconds_count{{kind=\"{stage}\"}} 1\n");
        assert!(text.contains(&line), "no {line:?} in {text}");
    }
}
