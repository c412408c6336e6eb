//! Capture endpoints: every path, body shape and encoding, and the error answers.

use std::io::Write;

use serde_json::{json, Value};

use crate::support::{dids, Daemon};

const T: &str = "phc_capture";

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn ev(did: &str, uuid: &str) -> Value {
    json!({"event": "$pageview", "distinct_id": did, "uuid": uuid, "properties": {"token": T}})
}

#[test]
fn every_capture_path_accepts_a_batch_with_exactly_200() {
    let d = Daemon::start();
    for (i, path) in [
        "/batch/",
        "/batch",
        "/capture/",
        "/e/",
        "/e",
        "/i/v0/e/",
        "/track/",
        "/engage/",
    ]
    .iter()
    .enumerate()
    {
        let r = d.post(
            path,
            &json!({"api_key": T, "batch": [ev(&format!("user-{i}"), &format!("u-{i}"))]}),
        );
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json(), json!({"status": 1}), "{path}");
    }
    assert_eq!(d.all_persons(T).len(), 8);
}

#[test]
fn a_single_event_and_an_array_of_events_are_accepted() {
    let d = Daemon::start();
    assert_eq!(d.post("/capture/", &ev("single", "s1")).status, 200);
    assert_eq!(
        d.post("/e/", &json!([ev("arr-1", "a1"), ev("arr-2", "a2")]))
            .status,
        200
    );
    assert!(d.person(T, "single").is_some());
    assert!(d.person(T, "arr-2").is_some());
}

#[test]
fn gzip_by_header_and_by_magic_bytes_are_both_inflated() {
    let d = Daemon::start();
    let body =
        serde_json::to_vec(&json!({"api_key": T, "batch": [ev("gz-header", "g1")]})).unwrap();
    let r = d.request(
        "POST",
        "/batch/",
        &[
            ("content-encoding", "gzip"),
            ("content-type", "application/json"),
        ],
        gzip(&body),
    );
    assert_eq!(r.status, 200);
    let body = serde_json::to_vec(&json!([ev("gz-magic", "g2")])).unwrap();
    let r = d.request(
        "POST",
        "/e/?compression=gzip-js",
        &[("content-type", "text/plain")],
        gzip(&body),
    );
    assert_eq!(r.status, 200);
    let r = d.request(
        "POST",
        "/e/",
        &[("content-type", "text/plain")],
        gzip(&serde_json::to_vec(&json!([ev("gz-bare", "g3")])).unwrap()),
    );
    assert_eq!(r.status, 200);
    for id in ["gz-header", "gz-magic", "gz-bare"] {
        assert!(d.person(T, id).is_some(), "{id}");
    }
}

#[test]
fn the_base64_form_body_is_decoded() {
    use base64::Engine as _;
    let d = Daemon::start();
    let data = base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(&json!([ev("form-user", "f1")])).unwrap());
    let body = format!("data={}", crate::support::enc(&data));
    let r = d.request(
        "POST",
        "/e/?compression=base64",
        &[("content-type", "application/x-www-form-urlencoded")],
        body.into_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(d.person(T, "form-user").is_some());
}

#[test]
fn invalid_json_is_a_400_validation_error_and_applies_nothing() {
    let d = Daemon::start();
    let r = d.request(
        "POST",
        "/batch/",
        &[("content-type", "application/json")],
        b"{\"api_key\": \"phc_x\", \"batch\": [".to_vec(),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], json!("validation_error"));
    assert!(r.json()["detail"].as_str().is_some_and(|s| !s.is_empty()));
}

#[test]
fn garbage_bytes_get_a_clear_error_and_the_daemon_keeps_serving() {
    let d = Daemon::start();
    let mut seed = 0x2545F4914F6CDD1Du64;
    for _ in 0..50 {
        let body: Vec<u8> = (0..(seed % 300))
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let r = d.request(
            "POST",
            "/batch/",
            &[("content-type", "application/octet-stream")],
            body,
        );
        assert!(r.status == 400 || r.status == 413, "status {}", r.status);
    }
    d.capture(T, json!([ev("after-garbage", "ag")]));
    assert!(d.person(T, "after-garbage").is_some());
}

#[test]
fn a_request_without_a_token_is_refused_with_a_message() {
    let d = Daemon::start();
    let r = d.post(
        "/batch/",
        &json!({"batch": [{"event": "e", "distinct_id": "x"}]}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], json!("no_token"));
}

/// A request refused for one event's token applies nothing (api.md): not even the projects
/// of the events before it. A token too long, or with control characters, is no token.
#[test]
fn a_request_refused_for_a_token_creates_no_project() {
    let d = Daemon::start();
    let cases = [
        (
            json!([{"api_key": "phc_first", "event": "e", "distinct_id": "x"}, {"event": "e", "distinct_id": "y"}]),
            "no_token",
        ),
        (
            json!([{"api_key": "phc_first", "event": "e", "distinct_id": "x"}, {"api_key": "p".repeat(201), "event": "e", "distinct_id": "y"}]),
            "invalid_token",
        ),
        (
            json!([{"api_key": "phc_first", "event": "e", "distinct_id": "x"}, {"api_key": "phc\nline", "event": "e", "distinct_id": "y"}]),
            "invalid_token",
        ),
    ];
    for (body, code) in cases {
        let r = d.post("/batch/", &body);
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["code"], json!(code), "{body}");
        assert_eq!(d.get("/api/projects/phc_first/").status, 404, "{body}");
    }
    // At the limit, a token is taken.
    let at_limit = "p".repeat(200);
    d.capture(&at_limit, json!([{"event": "e", "distinct_id": "z"}]));
    assert!(d.person(&at_limit, "z").is_some());
}

/// A string cut inside an emoji (posthog-js's `.slice()`) reaches us as a lone surrogate's
/// escape: it is stored as U+FFFD, as a NUL is, in the event's properties and its `$set`,
/// and the event and its neighbours are kept (it read back as `{}` before, or lost the
/// whole request when in the event's name).
#[test]
fn a_lone_surrogate_is_stored_as_the_replacement_character() {
    let d = Daemon::start();
    let body = r#"{"api_key": "phc_capture", "batch": [
        {"event": "cut\ud83d", "distinct_id": "lone", "properties": {"email": "x@y", "bio": "hi \ud83d", "$set": {"name": "\udfff"}}},
        {"event": "e", "distinct_id": "neighbour"}]}"#;
    let r = d.request(
        "POST",
        "/batch/",
        &[("content-type", "application/json")],
        body.as_bytes().to_vec(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let p = d.person("phc_capture", "lone").expect("person");
    assert_eq!(p["properties"]["name"], json!("\u{fffd}"));
    let events = d.events_of_person("phc_capture", p["uuid"].as_str().unwrap());
    assert_eq!(events[0]["event"], json!("cut\u{fffd}"));
    assert_eq!(events[0]["properties"]["bio"], json!("hi \u{fffd}"));
    assert_eq!(events[0]["properties"]["email"], json!("x@y"));
    assert!(d.person("phc_capture", "neighbour").is_some());
}

#[test]
fn an_empty_batch_is_a_400() {
    let d = Daemon::start();
    assert_eq!(
        d.post("/batch/", &json!({"api_key": T, "batch": []}))
            .status,
        400
    );
}

#[test]
fn a_body_over_the_limit_is_a_413_and_a_gzip_bomb_is_refused() {
    let d = Daemon::start_with(&["--max-body-bytes", "100000"]);
    let big = json!({"api_key": T, "batch": [{"event": "e", "distinct_id": "big", "properties": {"x": "y".repeat(200_000)}}]});
    assert_eq!(d.post("/batch/", &big).status, 413);
    let bomb = gzip(&vec![b' '; 5_000_000]);
    let r = d.request("POST", "/batch/", &[("content-encoding", "gzip")], bomb);
    assert_eq!(r.status, 413);
    assert_eq!(
        d.get(&format!("/api/projects/{T}/")).status,
        404,
        "nothing of either request was applied"
    );
}

#[test]
fn a_bad_event_is_rejected_alone_and_its_neighbours_are_stored() {
    let d = Daemon::start();
    let body = d.capture(T, json!([ev("before", "n1"), {"event": "e", "properties": {}}, {"event": "e", "distinct_id": {"a": 1}}, ev("after", "n2")]));
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(
        rejected
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(rejected[0]["detail"]
        .as_str()
        .unwrap()
        .contains("distinct_id"));
    assert!(d.person(T, "before").is_some() && d.person(T, "after").is_some());
}

/// A `uuid` that is not a string could not deduplicate its event's resends, so the event is
/// refused alone, naming the field and the type; a missing, `null` or empty uuid means none.
#[test]
fn an_event_whose_uuid_is_not_a_string_is_rejected_alone() {
    let d = Daemon::start();
    let with_uuid =
        |did: &str, uuid: Value| json!({"event": "e", "distinct_id": did, "uuid": uuid});
    let body = d.capture(
        T,
        json!([
            with_uuid("n-number", json!(5)),
            with_uuid("n-null", Value::Null),
            with_uuid("n-object", json!({"id": "x"})),
            with_uuid("n-empty", json!("")),
            with_uuid("n-string", json!("u-1")),
            with_uuid("n-array", json!(["u-1"])),
            with_uuid("n-bool", json!(true)),
        ]),
    );
    let rejected = body["rejected"].as_array().expect("a rejected list");
    let got: Vec<(u64, &str)> = rejected
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["detail"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        vec![0, 2, 5, 6],
        "{body}"
    );
    for ((_, detail), ty) in got
        .iter()
        .zip(["a number", "an object", "an array", "a boolean"])
    {
        assert!(
            detail.contains("uuid is") && detail.contains(ty),
            "{detail}"
        );
    }
    for did in ["n-number", "n-object", "n-array", "n-bool"] {
        assert!(d.person(T, did).is_none(), "{did} was stored");
    }
    for did in ["n-null", "n-empty", "n-string"] {
        assert!(d.person(T, did).is_some(), "{did} was not stored");
    }
    // The string uuid was taken: a resend is a duplicate.
    d.capture(T, json!([with_uuid("n-resend", json!("u-1"))]));
    assert!(d.person(T, "n-resend").is_none(), "u-1 was stored twice");
}

/// An item of a top-level array that is not an event object is an event-level problem, as
/// in an envelope's batch: rejected alone, with its index and what is wrong, wherever it is
/// (not a request-wide `no_token` because the item carries no token).
#[test]
fn an_array_item_that_is_not_an_object_is_rejected_alone_wherever_it_is() {
    let d = Daemon::start();
    let with_token =
        |did: &str| json!({"event": "e", "distinct_id": did, "properties": {"token": T}});
    let rejected = |body: Value| {
        let r = d.post("/batch/", &body);
        let answer = r.json();
        assert_eq!(r.status, 200, "{body}: {answer}");
        answer["rejected"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}: nothing rejected: {answer}"))
            .iter()
            .map(|r| {
                let detail = r["detail"].as_str().unwrap();
                assert!(detail.contains("JSON object"), "{body}: {detail}");
                r["index"].as_u64().unwrap()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(rejected(json!([1, with_token("first-after-1")])), vec![0]);
    assert_eq!(
        rejected(json!(["x", with_token("after-x"), null])),
        vec![0, 2]
    );
    assert_eq!(rejected(json!([with_token("before-1"), 1])), vec![1]);
    assert_eq!(rejected(json!(["x"])), vec![0]);
    // The same as in an envelope.
    assert_eq!(
        rejected(json!({"api_key": T, "batch": [1, ev("in-batch", "b1")]})),
        vec![0]
    );
    for did in ["first-after-1", "after-x", "before-1", "in-batch"] {
        assert!(d.person(T, did).is_some(), "{did} was not stored");
    }
    // An object without a token is still refused whole, naming it.
    let r = d.post(
        "/batch/",
        &json!([1, {"event": "e", "distinct_id": "no-token"}]),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "no_token");
    assert!(
        r.json()["detail"].as_str().unwrap().contains("event 1"),
        "{}",
        r.json()
    );
}

#[test]
fn a_redelivered_event_uuid_is_acknowledged_and_stored_once() {
    let d = Daemon::start();
    d.capture(T, json!([ev("dup", "same-uuid"), {"event": "e", "distinct_id": "dup", "uuid": "same-uuid", "$set": {"x": 1}}]));
    d.capture(T, json!([ev("dup", "same-uuid")]));
    let p = d.person(T, "dup").unwrap();
    assert_eq!(d.events_of_person(T, p["uuid"].as_str().unwrap()).len(), 1);
    assert!(p["properties"].get("x").is_none());
}

#[test]
fn cors_preflight_and_origin_are_echoed() {
    let d = Daemon::start();
    let r = d.request(
        "OPTIONS",
        "/e/",
        &[
            ("origin", "http://app.example"),
            ("access-control-request-method", "POST"),
        ],
        Vec::new(),
    );
    assert!(
        r.status == 200 || r.status == 204,
        "preflight status {}",
        r.status
    );
    let r = d.request(
        "POST",
        "/e/",
        &[
            ("origin", "http://app.example"),
            ("content-type", "application/json"),
        ],
        serde_json::to_vec(&json!([ev("cors", "c1")])).unwrap(),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn flags_decide_and_remote_config_answer_for_posthog_js() {
    let d = Daemon::start();
    for path in ["/flags/?v=2", "/decide/"] {
        let r = d.post(path, &json!({"token": T, "distinct_id": "x"}));
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["featureFlags"], json!({}));
        assert_eq!(r.json()["errorsWhileComputingFlags"], json!(false));
    }
    assert_eq!(d.get(&format!("/array/{T}/config")).status, 200);
    assert_eq!(d.get(&format!("/array/{T}/config.js")).status, 200);
}

#[test]
fn capture_v1_takes_the_token_from_the_bearer_header() {
    let d = Daemon::start();
    let body = json!({"batch": [{"event": "e", "distinct_id": "v1-user", "uuid": "v1", "properties": {}, "options": {"process_person_profile": false}},
                                {"event": "e", "distinct_id": "v1-person", "uuid": "v2", "properties": {}}]});
    let auth = format!("Bearer {T}");
    let r = d.request(
        "POST",
        "/i/v1/analytics/events",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        serde_json::to_vec(&body).unwrap(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"results": {}}));
    assert!(
        d.person(T, "v1-user").is_none(),
        "process_person_profile=false makes it personless"
    );
    assert!(d.person(T, "v1-person").is_some());
}

#[test]
fn distinct_id_is_read_from_properties_when_not_at_the_top_level() {
    let d = Daemon::start();
    d.capture(
        T,
        json!([{"event": "e", "properties": {"distinct_id": "nested-id"}}]),
    );
    assert_eq!(dids(&d.person(T, "nested-id").unwrap()), vec!["nested-id"]);
}

/// A number no f64 holds (`1e400`) could be stored but never read back (serde_json refuses
/// it, and the person's or event's properties came back `{}`): its event is rejected alone,
/// naming the number, and its neighbours, finite edges included, are stored and read back.
#[test]
fn an_event_with_a_number_out_of_range_is_rejected_alone_and_its_neighbours_read_back() {
    let d = Daemon::start();
    let body = format!(
        r#"{{"api_key":"{T}","batch":[
        {{"event":"e","distinct_id":"n1","properties":{{"a":1.5e3,"$set":{{"plan":"pro"}}}}}},
        {{"event":"e","distinct_id":"big","properties":{{"x":1e400,"$set":{{"y":1}}}}}},
        {{"event":"e","distinct_id":"n2","$set":{{"max":1.7976931348623157e308}},"properties":{{"b":[1e308]}}}}]}}"#
    );
    let r = d.request(
        "POST",
        "/batch/",
        &[("content-type", "application/json")],
        body.into_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let answer = r.json();
    let rejected = answer["rejected"].as_array().expect("a rejected list");
    assert_eq!(rejected.len(), 1, "{answer}");
    assert_eq!(rejected[0]["index"], 1, "{answer}");
    let detail = rejected[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("out of range") && detail.contains("1e400"),
        "{detail}"
    );
    assert!(d.person(T, "big").is_none(), "nothing of event 1 is stored");
    let n1 = d.person(T, "n1").expect("person n1");
    assert_eq!(n1["properties"]["plan"], "pro");
    let n2 = d.person(T, "n2").expect("person n2");
    assert_eq!(n2["properties"]["max"], json!(f64::MAX));
    let props = |p: &Value| {
        let events = d.events_of_person(T, p["uuid"].as_str().unwrap());
        assert_eq!(events.len(), 1);
        events[0]["properties"].clone()
    };
    assert_eq!(props(&n1)["a"], json!(1500.0));
    assert_eq!(props(&n2)["b"], json!([1e308]));
}

/// An event's time as PostHog's capture reads it: a client clock that is off by more than the
/// 150 s deadband is corrected by the request's `sent_at` (the body's, or posthog-js's `_`
/// query parameter in ms); `offset` counts back from arrival; more than 23 hours ahead is
/// arrival. The person's `created_at` is that time too.
#[test]
fn event_times_are_corrected_by_the_clients_clock_skew() {
    let d = Daemon::start();
    let now = chrono::Utc::now().timestamp_millis();
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let (hour, min) = (3_600_000, 60_000);
    // A device whose clock is an hour ahead sent an event 5 minutes before the request.
    let r = d.post(
        "/batch/",
        &json!({"api_key": T, "sent_at": iso(now + hour), "batch": [
            {"event": "e", "distinct_id": "ahead", "timestamp": iso(now + hour - 5 * min)},
            {"event": "e", "distinct_id": "ahead-opted-out", "timestamp": iso(now + hour - 5 * min),
             "properties": {"$ignore_sent_at": true}},
            {"event": "e", "distinct_id": "offset", "offset": 2 * hour},
            {"event": "e", "distinct_id": "future", "timestamp": "2099-01-01T00:00:00.000Z"},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Without a sent_at, a timestamp is taken as written, in any of the forms PostHog reads.
    d.capture(
        T,
        json!([
            {"event": "e", "distinct_id": "date", "timestamp": "2023-01-01"},
            {"event": "e", "distinct_id": "hours-only", "timestamp": "2025-09-17T14:05:04.805+03"},
        ]),
    );
    // posthog-js: an array, and when it sent in the `_` query parameter.
    let body = json!([{"event": "e", "distinct_id": "js-behind", "properties": {"token": T},
                       "timestamp": iso(now - hour - 5 * min)}]);
    let r = d.request(
        "POST",
        &format!("/e/?ver=1.0&_={}", now - hour),
        &[("content-type", "application/json")],
        serde_json::to_vec(&body).unwrap(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let time_of = |did: &str| -> i64 {
        let r = d.get(&format!("/api/projects/{T}/events/?distinct_id={did}"));
        let ts = r.json()["results"][0]["timestamp"].clone();
        let at = chrono::DateTime::parse_from_rfc3339(ts.as_str().unwrap()).unwrap();
        let created = d.person(T, did).unwrap()["created_at"].clone();
        let created = chrono::DateTime::parse_from_rfc3339(created.as_str().unwrap()).unwrap();
        assert_eq!(
            at, created,
            "{did}: the person was created at the event's time"
        );
        at.timestamp_millis()
    };
    // The request took up to this long to arrive (the server's `now` is a little later).
    let near = |did: &str, expected: i64| {
        let got = time_of(did);
        assert!(
            (expected..expected + 30_000).contains(&got),
            "{did}: {} not just after {}",
            iso(got),
            iso(expected)
        );
    };
    // Moved back by the hour less the 150 s deadband.
    near("ahead", now - 5 * min + 150_000);
    assert_eq!(time_of("ahead-opted-out"), now + hour - 5 * min);
    near("js-behind", now - 5 * min - 150_000);
    near("offset", now - 2 * hour);
    near("future", now);
    assert_eq!(iso(time_of("date")), "2023-01-01T00:00:00.000Z");
    assert_eq!(iso(time_of("hours-only")), "2025-09-17T11:05:04.805Z");
}
