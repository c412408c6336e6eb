//! The conversion buffer (spec §11): a backend event for a new ID waits, so that the frontend's
//! `$identify` joins the IDs first and the anonymous person stays the one person.

use std::time::{Duration, Instant};

use idstitch::domain::{person_uuid, ProjectId};
use serde_json::{json, Value};

use crate::support::{dids, Daemon};

const T: &str = "phc_buffer";

/// Turn the buffer on (the project is created by a first event).
pub fn enable_buffer(d: &Daemon, token: &str, window_secs: u64) {
    d.capture(
        token,
        json!([{"event": "$pageview", "distinct_id": "setup", "properties": {"$device_id": "setup"}}]),
    );
    patch_project(
        d,
        token,
        json!({"conversion_buffer": {"enabled": true, "window_secs": window_secs}}),
    );
}

/// `PATCH /api/projects/{token}/` with `body`, insisting on 200.
fn patch_project(d: &Daemon, token: &str, body: Value) {
    let r = d.request(
        "PATCH",
        &format!("/api/projects/{token}/"),
        &[("content-type", "application/json")],
        serde_json::to_vec(&body).unwrap(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// The events waiting in the buffer.
pub fn waiting(d: &Daemon, token: &str) -> Vec<Value> {
    let r = d.get(&format!("/api/projects/{token}/buffer/"));
    assert_eq!(r.status, 200);
    r.json()["results"].as_array().cloned().unwrap_or_default()
}

/// Wait (polling, with a timeout) until nothing waits in the buffer.
pub fn wait_until_released(d: &Daemon, token: &str, timeout: Duration) {
    let start = Instant::now();
    while !waiting(d, token).is_empty() {
        assert!(
            start.elapsed() < timeout,
            "buffered events not released after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn advance(d: &Daemon, secs: i64) {
    let r = d.post("/api/_test/clock", &json!({"advance_secs": secs}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn anonymous_visit(d: &Daemon) {
    d.capture(
        T,
        json!([{"event": "$pageview", "distinct_id": "anon-1", "properties": {"$device_id": "anon-1", "$lib": "web"}}]),
    );
}

fn backend_signup(d: &Daemon) {
    d.capture(
        T,
        json!([{"event": "signed_up", "distinct_id": "user-1", "uuid": "0190a3b0-0000-7000-8000-0000000000b1",
                "properties": {"$lib": "posthog-python", "$set": {"email": "max@hedgehogmail.com"}}}]),
    );
}

fn frontend_identify(d: &Daemon) {
    d.capture(
        T,
        json!([{"event": "$identify", "distinct_id": "user-1", "properties": {"$anon_distinct_id": "anon-1", "$lib": "web"}}]),
    );
}

/// After the window: one person, the anonymous visitor's, holding both IDs and the backend's
/// properties, with the backend event among its events.
fn assert_one_person_with_the_anonymous_uuid(d: &Daemon) {
    let project = d.get(&format!("/api/projects/{T}/")).json()["id"]
        .as_u64()
        .unwrap();
    let anon_uuid = person_uuid(ProjectId(project as u32), "anon-1").to_string();
    let p = d.person(T, "user-1").expect("a person for user-1");
    assert_eq!(p["uuid"], json!(anon_uuid));
    assert_eq!(dids(&p), ["anon-1", "user-1"]);
    assert_eq!(p["properties"]["email"], json!("max@hedgehogmail.com"));
    let events = d.events_of_person(T, &anon_uuid);
    assert!(events.iter().any(|e| e["event"] == json!("signed_up")));
    assert_eq!(d.person(T, "anon-1").unwrap()["uuid"], json!(anon_uuid));
}

#[test]
fn a_backend_event_waits_so_the_frontend_identify_keeps_the_anonymous_person() {
    let d = Daemon::start_with(&["--test-clock"]);
    enable_buffer(&d, T, 60);
    anonymous_visit(&d);
    backend_signup(&d);
    assert_eq!(waiting(&d, T).len(), 1, "the backend event waits");
    assert!(d.person(T, "user-1").is_none(), "and created no person yet");
    frontend_identify(&d);
    advance(&d, 61);
    wait_until_released(&d, T, Duration::from_secs(10));
    assert_one_person_with_the_anonymous_uuid(&d);
    let metrics = String::from_utf8_lossy(&d.get("/metrics").body).into_owned();
    assert!(metrics.contains("idstitch_buffer_events_released_total 1"));
    assert!(metrics.contains("idstitch_buffer_events_waiting 0"));
}

/// Spec §11 exempts merges, `$groupidentify`, device-ID and mobile events, not personless
/// ones: a personless backend event for a new ID waits in order with that ID's other events,
/// and when released it is stored and still creates no person.
#[test]
fn a_personless_event_for_a_new_id_waits_in_order_with_its_ids_events() {
    let d = Daemon::start_with(&["--test-clock"]);
    enable_buffer(&d, T, 60);
    d.capture(
        T,
        json!([
            {"event": "first", "distinct_id": "srv-1", "properties": {"$lib": "posthog-python", "$process_person_profile": false}},
            {"event": "second", "distinct_id": "srv-1", "properties": {"$lib": "posthog-python", "$set": {"plan": "pro"}}},
            {"event": "third", "distinct_id": "srv-1", "properties": {"$lib": "posthog-python", "$process_person_profile": false}},
        ]),
    );
    let names = |d: &Daemon| -> Vec<Value> {
        let r = d.get(&format!("/api/projects/{T}/events/?distinct_id=srv-1"));
        r.json()["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].clone())
            .collect()
    };
    assert_eq!(waiting(&d, T).len(), 3, "all three wait");
    assert!(names(&d).is_empty(), "none is stored yet");
    advance(&d, 61);
    wait_until_released(&d, T, Duration::from_secs(10));
    // Newest first: released in the order they arrived.
    assert_eq!(names(&d), [json!("third"), json!("second"), json!("first")]);
    let p = d
        .person(T, "srv-1")
        .expect("the second event made a person");
    assert_eq!(p["properties"]["plan"], "pro");
    d.capture(
        T,
        json!([{"event": "late", "distinct_id": "srv-2", "properties": {"$lib": "posthog-python", "$process_person_profile": false}}]),
    );
    advance(&d, 61);
    wait_until_released(&d, T, Duration::from_secs(10));
    assert!(
        d.person(T, "srv-2").is_none(),
        "a released personless event makes no person"
    );
}

#[test]
fn without_the_buffer_the_backend_event_makes_a_person_that_the_identify_merges() {
    let d = Daemon::start();
    anonymous_visit(&d);
    backend_signup(&d);
    frontend_identify(&d);
    let project = d.get(&format!("/api/projects/{T}/")).json()["id"]
        .as_u64()
        .unwrap();
    let p = d.person(T, "anon-1").unwrap();
    assert_eq!(
        p["uuid"],
        json!(person_uuid(ProjectId(project as u32), "user-1").to_string()),
        "the backend's person survives the merge: what the buffer avoids"
    );
}

#[test]
fn a_buffered_event_survives_a_kill_in_the_middle_of_the_window() {
    let mut d = Daemon::start_with(&["--test-clock"]);
    enable_buffer(&d, T, 60);
    anonymous_visit(&d);
    backend_signup(&d);
    d.kill();
    d.start_again();
    assert_eq!(waiting(&d, T).len(), 1, "still waiting after kill -9");
    frontend_identify(&d);
    advance(&d, 61);
    wait_until_released(&d, T, Duration::from_secs(10));
    assert_one_person_with_the_anonymous_uuid(&d);
}

#[test]
fn a_redelivery_of_a_waiting_event_is_a_duplicate() {
    let d = Daemon::start_with(&["--test-clock"]);
    enable_buffer(&d, T, 60);
    backend_signup(&d);
    backend_signup(&d);
    assert_eq!(waiting(&d, T).len(), 1);
    advance(&d, 61);
    wait_until_released(&d, T, Duration::from_secs(10));
    backend_signup(&d);
    let p = d.person(T, "user-1").unwrap();
    let events = d.events_of_person(T, p["uuid"].as_str().unwrap());
    assert_eq!(events.len(), 1, "{events:?}");
}

#[test]
fn waiting_events_are_released_in_arrival_order_when_their_window_passes() {
    // A real three-second window, no test clock: the release timer itself.
    let d = Daemon::start();
    enable_buffer(&d, T, 3);
    d.capture(
        T,
        json!([
            {"event": "plan_chosen", "distinct_id": "user-9", "$set": {"plan": "free"}},
            {"event": "plan_chosen", "distinct_id": "user-9", "$set": {"plan": "pro"}},
            {"event": "plan_chosen", "distinct_id": "mobile-1", "properties": {"$lib": "posthog-ios"}},
        ]),
    );
    assert_eq!(waiting(&d, T).len(), 2, "mobile SDK events never wait");
    assert!(d.person(T, "mobile-1").is_some());
    wait_until_released(&d, T, Duration::from_secs(20));
    let p = d.person(T, "user-9").unwrap();
    assert_eq!(p["properties"]["plan"], json!("pro"));
    let events = d.events_of_person(T, p["uuid"].as_str().unwrap());
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
}

#[test]
fn turning_the_buffer_off_releases_what_waits() {
    let d = Daemon::start_with(&["--test-clock"]);
    enable_buffer(&d, T, 3600);
    backend_signup(&d);
    let body = json!({"conversion_buffer": {"enabled": false}});
    let r = d.request(
        "PATCH",
        &format!("/api/projects/{T}/"),
        &[("content-type", "application/json")],
        serde_json::to_vec(&body).unwrap(),
    );
    assert_eq!(r.status, 200);
    wait_until_released(&d, T, Duration::from_secs(10));
    assert!(d.person(T, "user-1").is_some());
}

fn patch_buffer(d: &Daemon, enabled: bool) {
    patch_project(d, T, json!({"conversion_buffer": {"enabled": enabled}}));
}

fn plan(d: &Daemon, did: &str, plan: &str) {
    d.capture(
        T,
        json!([{"event": "plan_changed", "distinct_id": did, "properties": {"$lib": "posthog-python", "$set": {"plan": plan}}}]),
    );
}

/// The seed's case: the backend's sign-up waits, the frontend's `$identify` gives its ID a
/// person, then the backend sends a newer event for that ID. It waits behind the sign-up and
/// follows it (spec §11, "in order"): processed at once, it would be overtaken, and the
/// older `$set` would win.
#[test]
fn a_newer_event_of_an_id_waits_behind_its_older_waiting_ones() {
    let d = Daemon::start_with(&["--test-clock"]);
    enable_buffer(&d, T, 60);
    anonymous_visit(&d);
    plan(&d, "user-1", "free");
    frontend_identify(&d);
    plan(&d, "user-1", "pro");
    assert_eq!(
        waiting(&d, T).len(),
        2,
        "the newer event waits behind the older"
    );
    advance(&d, 61);
    wait_until_released(&d, T, Duration::from_secs(10));
    let p = d.person(T, "user-1").unwrap();
    assert_eq!(p["properties"]["plan"], json!("pro"));
    assert_eq!(dids(&p), ["anon-1", "user-1"]);
}

/// Turning the buffer off releases what waits at the next tick; an event for the same ID sent
/// in between still comes after them.
#[test]
fn an_event_sent_as_the_buffer_is_turned_off_follows_the_waiting_ones() {
    let d = Daemon::start_with(&["--test-clock"]);
    enable_buffer(&d, T, 3600);
    plan(&d, "user-1", "free");
    patch_buffer(&d, false);
    plan(&d, "user-1", "pro");
    wait_until_released(&d, T, Duration::from_secs(10));
    let p = d.person(T, "user-1").unwrap();
    assert_eq!(p["properties"]["plan"], json!("pro"));
}

/// Deleting a person with its events drops its events still waiting, and no fresh person
/// comes back from them; what their normalisation found at ingestion (here a
/// `$process_person_profile` that is not a boolean) is recorded all the same, as a release
/// would have recorded it: stamped when it is recorded, as every warning is (it kept its
/// arrival time, older than warnings listed below it).
#[test]
fn deleting_a_person_with_its_events_drops_its_waiting_events_but_keeps_their_warnings() {
    let d = Daemon::start_with(&["--test-clock"]);
    enable_buffer(&d, T, 60);
    anonymous_visit(&d);
    d.capture(
        T,
        json!([{"event": "signed_up", "distinct_id": "user-1",
                "properties": {"$lib": "posthog-python", "$process_person_profile": "false"}}]),
    );
    assert_eq!(waiting(&d, T).len(), 1);
    frontend_identify(&d);
    let uuid = d.person(T, "user-1").unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(20));
    let deleting = chrono::Utc::now().timestamp_millis();
    let r = d.request(
        "DELETE",
        &format!("/api/projects/{T}/persons/{uuid}/?delete_events=true"),
        &[],
        Vec::new(),
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert!(waiting(&d, T).is_empty(), "dropped with the person");
    let warnings = d
        .get(&format!("/api/projects/{T}/ingestion_warnings/"))
        .json();
    let found = warnings["results"].as_array().unwrap().iter().find(|w| {
        w["type"] == "invalid_process_person_profile" && w["details"]["distinctId"] == "user-1"
    });
    let stamped = found
        .and_then(|w| w["timestamp"].as_str())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis());
    assert!(
        stamped.is_some_and(|t| t >= deleting),
        "{deleting}: {warnings}"
    );
    advance(&d, 61);
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.person(T, "user-1").is_none(), "no person comes back");
    let events = d.get(&format!("/api/projects/{T}/events/?distinct_id=user-1"));
    assert_eq!(events.json()["results"], json!([]));
}

/// Deleting a person but not its events: the person's events still waiting arrived before
/// the deletion, so they are processed before it, and no fresh person comes back from them
/// when the window passes.
#[test]
fn deleting_a_person_keeping_its_events_processes_its_waiting_events_first() {
    let d = Daemon::start_with(&["--test-clock"]);
    enable_buffer(&d, T, 60);
    anonymous_visit(&d);
    backend_signup(&d);
    frontend_identify(&d);
    let uuid = d.person(T, "user-1").unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let r = d.request(
        "DELETE",
        &format!("/api/projects/{T}/persons/{uuid}/?delete_events=false"),
        &[],
        Vec::new(),
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert!(waiting(&d, T).is_empty());
    let events = d.get(&format!("/api/projects/{T}/events/?distinct_id=user-1"));
    assert!(
        events.json()["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == json!("signed_up")),
        "the sign-up is stored: {:?}",
        events.json()
    );
    advance(&d, 61);
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.person(T, "user-1").is_none(), "no person comes back");
    assert!(d.person(T, "anon-1").is_none());
}

/// The same for the waiting events of an ID that one of the person's waiting events attaches
/// to it on the way: they arrived before the deletion too (helper-33's case).
#[test]
fn deleting_a_person_keeping_its_events_also_processes_those_of_ids_its_waiting_events_attach() {
    let d = Daemon::start_with(&["--test-clock"]);
    enable_buffer(&d, T, 60);
    anonymous_visit(&d);
    // Both wait: neither ID has a person.
    d.capture(
        T,
        json!([{"event": "$merge_dangerously", "distinct_id": "user-1", "properties": {"alias": "r", "$lib": "posthog-python"}},
               {"event": "signed_up", "distinct_id": "r", "properties": {"$lib": "posthog-python", "$set": {"k": 1}}}]),
    );
    assert_eq!(waiting(&d, T).len(), 2);
    frontend_identify(&d);
    let p = d.person(T, "user-1").unwrap();
    assert_eq!(dids(&p), ["anon-1", "user-1"]);
    let uuid = p["uuid"].as_str().unwrap();
    let r = d.request(
        "DELETE",
        &format!("/api/projects/{T}/persons/{uuid}/?delete_events=false"),
        &[],
        Vec::new(),
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert!(waiting(&d, T).is_empty(), "{:?}", waiting(&d, T));
    advance(&d, 61);
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.person(T, "r").is_none(), "no person comes back");
}

/// The buffer's listing is of one project only, counts all its waiting events, and lists at
/// most `limit` of them, oldest first.
#[test]
fn the_buffer_listing_is_per_project_and_paged() {
    let d = Daemon::start_with(&["--test-clock"]);
    const OTHER: &str = "phc_buffer_other";
    enable_buffer(&d, T, 600);
    enable_buffer(&d, OTHER, 600);
    for i in 0..3 {
        plan(&d, &format!("user-{i}"), "free");
    }
    d.capture(
        OTHER,
        json!([{"event": "e", "distinct_id": "o-1"}, {"event": "e", "distinct_id": "o-2"}]),
    );
    let r = d.get(&format!("/api/projects/{T}/buffer/?limit=2"));
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["waiting"], json!(3));
    let listed: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["distinct_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["user-0", "user-1"]);
    assert_eq!(waiting(&d, OTHER).len(), 2);
}

/// Waiting events are held in memory: past `--buffer-max-waiting`, an event that would wait is
/// processed at once (counted, and said once in the log), while one whose ID has events
/// waiting still queues behind them.
#[test]
fn past_the_waiting_bound_new_events_are_processed_at_once() {
    let d = Daemon::start_with(&["--test-clock", "--buffer-max-waiting", "2"]);
    enable_buffer(&d, T, 600);
    plan(&d, "user-0", "free");
    plan(&d, "user-1", "free");
    assert_eq!(waiting(&d, T).len(), 2);
    plan(&d, "user-2", "free");
    assert!(d.person(T, "user-2").is_some(), "processed at once");
    plan(&d, "user-0", "pro");
    assert_eq!(waiting(&d, T).len(), 3, "behind its ID's waiting event");
    assert!(d.person(T, "user-0").is_none());
    let metrics = String::from_utf8_lossy(&d.get("/metrics").body).into_owned();
    assert!(
        metrics.contains("idstitch_buffer_full_events_total 1"),
        "{metrics}"
    );
    advance(&d, 601);
    wait_until_released(&d, T, Duration::from_secs(10));
    assert_eq!(
        d.person(T, "user-0").unwrap()["properties"]["plan"],
        json!("pro")
    );
}
