//! Project settings: logged, so restarts, snapshots and restores keep them; invalid ones are
//! refused naming the field; the strict-mode projects file can carry them.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::buffer::{wait_until_released, waiting};
use crate::support::{bin, Daemon};

const T: &str = "phc_settings";

fn patch(d: &Daemon, body: Value) -> idstitch::cli::client::Response {
    d.request(
        "PATCH",
        &format!("/api/projects/{T}/"),
        &[("content-type", "application/json")],
        serde_json::to_vec(&body).unwrap(),
    )
}

fn settings(d: &Daemon) -> Value {
    let r = d.get(&format!("/api/projects/{T}/"));
    assert_eq!(r.status, 200);
    let p = r.json();
    json!({"name": p["name"], "conversion_buffer": p["conversion_buffer"],
           "test_account_filters": p["test_account_filters"], "merge_limit": p["merge_limit"]})
}

fn internal_filter() -> Value {
    json!([{"key": "email", "value": "@ourcompany.com", "operator": "not_icontains", "type": "person"}])
}

#[test]
fn a_new_project_has_the_default_settings() {
    let d = Daemon::start();
    d.capture(T, json!([{"event": "e", "distinct_id": "u"}]));
    assert_eq!(
        settings(&d),
        json!({"name": "Project 1", "conversion_buffer": {"enabled": false, "window_secs": 60},
               "test_account_filters": [], "merge_limit": null})
    );
}

#[test]
fn settings_survive_a_kill_and_a_snapshot_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let snaps = tmp.path().join("snaps");
    let mut d = Daemon::start_with(&["--test-clock", "--snapshot-dir", snaps.to_str().unwrap()]);
    d.capture(T, json!([{"event": "e", "distinct_id": "u"}]));
    let r = patch(
        &d,
        json!({"name": "Shop", "conversion_buffer": {"enabled": true, "window_secs": 120},
               "test_account_filters": internal_filter(), "merge_limit": 5}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let want = settings(&d);
    assert_eq!(want["name"], json!("Shop"));
    assert_eq!(r.json()["conversion_buffer"], want["conversion_buffer"]);
    d.capture(T, json!([{"event": "late", "distinct_id": "backend-user"}]));
    assert_eq!(waiting(&d, T).len(), 1);

    d.restart();
    assert_eq!(settings(&d), want, "after kill -9");
    let listed = d.get("/api/projects/").json();
    assert_eq!(listed["results"][0]["name"], json!("Shop"));

    let snap = snaps.join("snap");
    let restored = tmp.path().join("restored");
    let run = |args: &[&str]| Command::new(bin()).args(args).output().unwrap();
    let socket = d.socket.to_str().unwrap();
    assert!(run(&[
        "snapshot",
        "create",
        snap.to_str().unwrap(),
        "--socket",
        socket
    ])
    .status
    .success());
    let out = run(&[
        "snapshot",
        "restore",
        snap.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let r = Daemon::on(&restored, &["--test-clock"]);
    assert_eq!(settings(&r), want, "after restore");
    assert_eq!(waiting(&r, T).len(), 1, "the waiting event came along");
    let adv = r.post("/api/_test/clock", &json!({"advance_secs": 121}));
    assert_eq!(adv.status, 200);
    wait_until_released(&r, T, Duration::from_secs(10));
    assert!(r.person(T, "backend-user").is_some());
    let out = run(&["verify", "--data-dir", restored.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn invalid_settings_get_a_400_naming_the_field_and_change_nothing() {
    let d = Daemon::start();
    d.capture(T, json!([{"event": "e", "distinct_id": "u"}]));
    let before = settings(&d);
    for (body, field) in [
        (
            json!({"conversion_buffer": {"window_secs": -5}}),
            "conversion_buffer.window_secs",
        ),
        (
            json!({"conversion_buffer": {"enabled": true, "window": 60}}),
            "conversion_buffer.window",
        ),
        (json!({"merge_limit": "ten"}), "merge_limit"),
        (json!({"name": 7}), "name"),
        (
            json!({"test_account_filters": {"key": "email"}}),
            "test_account_filters",
        ),
        (
            json!({"test_account_filters": [{"key": "email", "operator": "contains", "value": "x"}]}),
            "test_account_filters[0].operator",
        ),
        (
            json!({"test_account_filters": [{"key": "email", "operator": "regex", "value": "(["}]}),
            "test_account_filters[0].value",
        ),
        (
            json!({"test_account_filters": [{"operator": "is_set"}]}),
            "test_account_filters[0].key",
        ),
        (json!({"timezone": "UTC"}), "timezone"),
    ] {
        let r = patch(&d, body.clone());
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["attr"], json!(field), "{body}");
        assert!(r.json()["detail"].as_str().unwrap().starts_with(field));
    }
    let r = d.request(
        "PATCH",
        &format!("/api/projects/{T}/"),
        &[("content-type", "application/json")],
        b"{not json".to_vec(),
    );
    assert_eq!(r.status, 400);
    assert_eq!(settings(&d), before);
    assert_eq!(patch(&d, json!({"name": "x"})).status, 200);
    let r = d.request(
        "PATCH",
        "/api/projects/phc_nobody/",
        &[("content-type", "application/json")],
        b"{}".to_vec(),
    );
    assert_eq!(r.status, 404);
}

#[test]
fn a_project_merge_limit_overrides_the_daemons() {
    let d = Daemon::start_with(&["--merge-limit", "100"]);
    d.capture(
        T,
        json!([{"event": "$create_alias", "distinct_id": "a1", "properties": {"alias": "a2"}}]),
    );
    d.capture(T, json!([{"event": "e", "distinct_id": "b1"}]));
    assert_eq!(patch(&d, json!({"merge_limit": 1})).status, 200);
    d.capture(
        T,
        json!([{"event": "$merge_dangerously", "distinct_id": "b1", "properties": {"alias": "a1"}}]),
    );
    assert_ne!(d.person(T, "a1"), d.person(T, "b1"), "refused at limit 1");
    let w = d.warnings(T);
    assert_eq!(w[0]["type"], json!("merge_limit_exceeded"));
    assert_eq!(w[0]["details"]["limit"], json!(1));
    assert_eq!(patch(&d, json!({"merge_limit": null})).status, 200);
    d.capture(
        T,
        json!([{"event": "$merge_dangerously", "distinct_id": "b1", "properties": {"alias": "a1"}}]),
    );
    assert_eq!(
        d.person(T, "a1"),
        d.person(T, "b1"),
        "the daemon's 100 again"
    );
}

#[test]
fn the_projects_file_carries_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("projects.toml");
    std::fs::write(
        &file,
        r#"
[[project]]
token = "phc_settings"
name = "Shop"
merge_limit = 3
conversion_buffer = { enabled = true, window_secs = 30 }
test_account_filters = [{ key = "email", value = "@ourcompany.com", operator = "not_icontains", type = "person" }]
"#,
    )
    .unwrap();
    let d = Daemon::start_with(&["--projects", file.to_str().unwrap()]);
    assert_eq!(
        settings(&d),
        json!({"name": "Shop", "conversion_buffer": {"enabled": true, "window_secs": 30},
               "test_account_filters": internal_filter(), "merge_limit": 3})
    );
    std::fs::write(
        &file,
        "[[project]]\ntoken = \"phc_settings\"\nconversion_buffer = { window_secs = 0 }\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(tmp.path().join("other"))
        .arg("--projects")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("conversion_buffer.window_secs"), "{err}");
}
