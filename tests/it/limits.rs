//! Limits: body size, events per request, nesting depth, connections, and slow clients (a client
//! that sends one byte a second is cut off). Timeouts are configured at 1 s and the cut-off is
//! only required within a generous 30 s, so a loaded machine cannot make these tests flake.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{bin, Daemon};

const T: &str = "phc_limits";

/// How long a cut-off may take at most (the timeouts under test are 1 s).
const BOUND: Duration = Duration::from_secs(30);

/// Sends `fast` at once, then `slow` one byte a second (each pause is a 1 s read that also
/// watches for the answer), until the daemon closes the connection. Returns what it answered.
fn trickle(d: &Daemon, fast: &[u8], slow: &[u8]) -> String {
    let mut s = UnixStream::connect(&d.socket).expect("connect");
    s.write_all(fast).expect("write the fast part");
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let (start, mut got, mut slow) = (Instant::now(), Vec::new(), slow.iter());
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            start.elapsed() < BOUND,
            "still connected after {BOUND:?}; answered so far: {}",
            String::from_utf8_lossy(&got)
        );
        if let Some(b) = slow.next() {
            if s.write_all(&[*b]).is_err() {
                break; // Closed by the daemon: what it answered is still readable.
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    while let Ok(n @ 1..) = s.read(&mut buf) {
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn code(r: &idstitch::cli::client::Response) -> Value {
    r.json()["code"].clone()
}

fn nothing_was_applied(d: &Daemon) {
    let r = d.get(&format!("/api/projects/{T}/"));
    assert_eq!(r.status, 404, "the project exists: something was applied");
}

/// Posts the batch `[ok, bad, after]`: it is taken (200), `bad` alone is rejected with a
/// detail that starts with `detail`, and its neighbours on both sides are applied.
fn one_bad_event_is_refused_alone(d: &Daemon, ok: &Value, bad: Value, detail: &str) {
    let after = json!({"event": "e", "distinct_id": "after"});
    let r = d.post("/batch/", &json!({"api_key": T, "batch": [ok, bad, after]}));
    assert_eq!(r.status, 200, "{}", r.json());
    let rejected = r.json()["rejected"].clone();
    let list = rejected.as_array().expect("a rejected list");
    assert_eq!(list.len(), 1, "{rejected}");
    assert_eq!(list[0]["index"], 1, "{rejected}");
    let said = list[0]["detail"].as_str().unwrap_or_default();
    assert!(said.starts_with(detail), "{rejected}");
    assert!(
        d.person(T, "after").is_some(),
        "the event after it was lost"
    );
}

#[test]
fn a_body_over_max_body_bytes_is_a_413_with_a_json_error_as_sent_and_inflated() {
    let d = Daemon::start_with(&["--max-body-bytes", "2000"]);
    let big = json!({"api_key": T, "batch": [{"event": "e", "distinct_id": "x", "properties": {"p": "y".repeat(3000)}}]});
    let r = d.post("/batch/", &big);
    assert_eq!((r.status, code(&r)), (413, json!("payload_too_large")));
    assert!(r.json()["detail"]
        .as_str()
        .is_some_and(|s| s.contains("2000")));
    let gz = gzip_json(&big);
    assert!(gz.len() < 2000, "the gzip body itself is under the limit");
    let r = d.request("POST", "/batch/", &[("content-encoding", "gzip")], gz);
    assert_eq!((r.status, code(&r)), (413, json!("payload_too_large")));
    nothing_was_applied(&d);
}

#[test]
fn more_events_than_max_events_per_request_is_a_413_and_applies_nothing() {
    let d = Daemon::start_with(&["--max-events-per-request", "3"]);
    let ev = |i: usize| json!({"event": "e", "distinct_id": format!("u{i}")});
    let four: Vec<Value> = (0..4).map(ev).collect();
    let r = d.post("/batch/", &json!({"api_key": T, "batch": four}));
    assert_eq!((r.status, code(&r)), (413, json!("too_many_events")));
    nothing_was_applied(&d);
    d.capture(T, json!([ev(0), ev(1), ev(2)]));
    assert_eq!(d.all_persons(T).len(), 3);
}

#[test]
fn an_event_nested_deeper_than_max_depth_is_rejected_alone() {
    let d = Daemon::start_with(&["--max-depth", "4"]);
    // Levels: the event object 1, properties 2, then one per object inside.
    let ok = json!({"event": "e", "distinct_id": "ok", "properties": {"a": {"b": {"c": 1}}}});
    let deep =
        json!({"event": "e", "distinct_id": "deep", "properties": {"a": {"b": {"c": {"d": 1}}}}});
    let said = "event is nested deeper than 4 levels (--max-depth)";
    one_bad_event_is_refused_alone(&d, &ok, deep, said);
    assert!(d.person(T, "ok").is_some());
    assert!(d.person(T, "deep").is_none());
}

#[test]
fn an_event_with_more_than_max_properties_is_rejected_alone() {
    let d = Daemon::start_with(&["--max-properties", "5"]);
    let props = |n: usize| -> Value { (0..n).map(|i| (format!("p{i}"), json!(i))).collect() };
    let ok = json!({"event": "e", "distinct_id": "ok", "properties": props(4), "$set": {"x": 1}});
    let many = json!({"event": "e", "distinct_id": "many", "properties": props(6)});
    let said = "event has 6 properties, over the limit of 5 (--max-properties)";
    one_bad_event_is_refused_alone(&d, &ok, many, said);
    assert_eq!(d.person(T, "ok").expect("ok")["properties"]["x"], 1);
    assert!(d.person(T, "many").is_none());
}

/// The head of a `POST /batch/` of `len` bytes of JSON, with `Connection: close` when `close`
/// (the daemon then closes after its answer, which [`read_answer`] reads to the end).
fn batch_head(len: usize, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("POST /batch/ HTTP/1.1\r\nHost: idstitch\r\n{connection}Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
        .into_bytes()
}

/// Everything the daemon answers on `c` until it closes it (within `BOUND * 2`).
fn read_answer(c: &mut UnixStream) -> String {
    c.set_read_timeout(Some(BOUND * 2)).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// A connection that sent 60 KiB of a 64 KiB body and stops: it holds that much of the
/// in-flight budget until the body timeout cuts it off.
fn slow_body_holding_60_kib(d: &Daemon) -> UnixStream {
    let mut slow = UnixStream::connect(&d.socket).expect("connect");
    slow.write_all(&batch_head(65_536, false)).expect("write");
    slow.write_all(b"[").expect("write");
    slow.write_all(&vec![b' '; 61_440]).expect("write");
    std::thread::sleep(Duration::from_millis(200));
    slow
}

/// Two slow clients that stop mid-body, until the body timeout cuts them off: one holds 60 KiB
/// of the 64 KiB budget, the other 2 KiB and the overdraft (it needed more room while it held
/// some). Whatever needs room meanwhile waits for them.
fn slow_bodies_holding_the_budget_and_the_overdraft(d: &Daemon) -> [UnixStream; 2] {
    let mut over = UnixStream::connect(&d.socket).expect("connect");
    over.write_all(&batch_head(10_240, false)).expect("write");
    over.write_all(b"[").expect("write");
    over.write_all(&[b' '; 2047]).expect("write");
    std::thread::sleep(Duration::from_millis(100));
    let most = slow_body_holding_60_kib(d);
    over.write_all(&[b' '; 4096]).expect("write");
    std::thread::sleep(Duration::from_millis(200));
    [most, over]
}

#[test]
fn request_bodies_in_memory_at_once_are_bounded_and_a_request_that_does_not_fit_waits() {
    // Room for 64 KiB of bodies at once, counted as they arrive. Two slow clients hold it and
    // its overdraft until the body timeout (2 s) cuts them off; a 10 KiB request sent
    // meanwhile has to wait for them, then succeeds.
    let d = Daemon::start_with(&["--max-inflight-body-bytes", "65536", "--body-timeout", "2"]);
    let slow = slow_bodies_holding_the_budget_and_the_overdraft(&d);
    let started = Instant::now();
    let pad = "x".repeat(10_000);
    d.capture(
        T,
        json!([{"event": "e", "distinct_id": "waited", "properties": {"pad": pad}}]),
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "the second request did not wait for the first one's room: {waited:?}"
    );
    assert!(d.person(T, "waited").is_some());
    drop(slow);
    // Without a slow neighbour, the same request does not wait for anything.
    d.capture(T, json!([{"event": "e", "distinct_id": "next"}]));
}

/// Sends the head of a `/batch/` request of `len` bytes for `distinct_id` and its first
/// `first` bytes; the caller sends the rest (`rest`) and reads the answer (`answer`).
fn half_sent_batch(
    d: &Daemon,
    distinct_id: &str,
    len: usize,
    first: usize,
) -> (UnixStream, Vec<u8>) {
    let head =
        format!(r#"{{"api_key":"{T}","batch":[{{"event":"e","distinct_id":"{distinct_id}"}}"#);
    let mut body = head.into_bytes();
    body.resize(len - 2, b' ');
    body.extend_from_slice(b"]}");
    let mut c = UnixStream::connect(&d.socket).expect("connect");
    c.write_all(&batch_head(len, true)).expect("write");
    c.write_all(&body[..first]).expect("write");
    (c, body[first..].to_vec())
}

/// The status line of the answer on `c` (its request said `Connection: close`).
fn status_line(c: &mut UnixStream) -> String {
    read_answer(c).lines().next().unwrap_or("").to_string()
}

/// Two bodies that each hold half of the budget and then both need more cannot wait for each
/// other: one of them may go over the budget by its own size and finish, and the other
/// follows. (They used to wait for each other until the body timeout, then both got 408.)
#[test]
fn two_half_received_bodies_that_fill_the_budget_do_not_wait_for_each_other() {
    let d = Daemon::start_with(&["--max-inflight-body-bytes", "65536", "--body-timeout", "30"]);
    // 48 KiB each: the first 32 KiB of both fill the 64 KiB budget, then both send the rest.
    let (mut a, a_rest) = half_sent_batch(&d, "a", 49_152, 32_768);
    let (mut b, b_rest) = half_sent_batch(&d, "b", 49_152, 32_768);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    a.write_all(&a_rest).expect("write the rest");
    b.write_all(&b_rest).expect("write the rest");
    let answers = [status_line(&mut a), status_line(&mut b)];
    let took = started.elapsed();
    assert!(
        answers.iter().all(|s| s.starts_with("HTTP/1.1 200")),
        "{answers:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(20), "waited {took:?}");
    assert!(d.person(T, "a").is_some() && d.person(T, "b").is_some());
}

/// No body is taken over the in-flight budget, whatever --max-body-bytes allows: it could
/// never be held, and the budget's overdraft is only that large. A body that declares more is
/// refused at once. (It used to be read up to the budget and wait, then 408; with the
/// overdraft alone it was read whole, over the budget.)
#[test]
fn a_body_larger_than_the_in_flight_budget_is_refused_at_once() {
    let d = Daemon::start_with(&["--max-inflight-body-bytes", "65536", "--body-timeout", "30"]);
    let mut c = UnixStream::connect(&d.socket).expect("connect");
    let started = Instant::now();
    c.write_all(&batch_head(307_200, true))
        .expect("write the head");
    // 70 KiB of the 300 KiB, then nothing (the daemon may have closed already).
    let _ = c.write_all(b"[");
    let _ = c.write_all(&[b' '; 71_679]);
    let answer = read_answer(&mut c);
    let took = started.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "after {took:?}: {answer}"
    );
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
    assert!(answer.contains("65536 bytes"), "{answer}");
    assert!(took < Duration::from_secs(20), "answered after {took:?}");
    nothing_was_applied(&d);
}

/// `v` as JSON, gzipped as tightly as flate2 can.
fn gzip_json(v: &Value) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&serde_json::to_vec(v).unwrap()).unwrap();
    gz.finish().unwrap()
}

/// A gzipped batch of one event for `distinct_id` whose property `pad` is `pad`.
fn gzipped_batch(distinct_id: &str, pad: String) -> Vec<u8> {
    gzip_json(
        &json!({"api_key": T, "batch": [{"event": "e", "distinct_id": distinct_id, "properties": {"pad": pad}}]}),
    )
}

/// The budget of bodies in memory counts a compressed body's decoded bytes too: a 1 KB gzip
/// that inflates to 100 KiB, under --max-body-bytes, was charged 1 KiB, so a few thousand of
/// them could hold gigabytes while they waited for their 200.
#[test]
fn a_compressed_body_is_charged_its_decoded_bytes() {
    let d = Daemon::start_with(&["--max-inflight-body-bytes", "65536", "--body-timeout", "2"]);
    let big = gzipped_batch("too-big", "x".repeat(100 * 1024));
    assert!(big.len() < 2048, "{} bytes", big.len());
    let r = d.request("POST", "/batch/", &[("content-encoding", "gzip")], big);
    assert_eq!(
        (r.status, code(&r)),
        (413, json!("payload_too_large")),
        "{}",
        r.json()
    );
    assert!(r.json()["detail"]
        .as_str()
        .is_some_and(|s| s.contains("--max-inflight-body-bytes")));
    nothing_was_applied(&d);
    // Barely compressible: ~55 KB received that decode to ~72 KB. What decoding adds fits in
    // the budget, the whole does not: 413 at once, not a wait for room that never comes.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: String = (0..70_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .filter(|c| *c != '"' && *c != '\\')
        .collect();
    let gz = gzipped_batch("noise", noise);
    assert!(gz.len() > 40_000 && gz.len() < 65_536, "{} bytes", gz.len());
    // (It used to wait the body timeout for that room, then answer 503 busy.)
    let r = d.request("POST", "/batch/", &[("content-encoding", "gzip")], gz);
    assert_eq!(
        (r.status, code(&r)),
        (413, json!("payload_too_large")),
        "{}",
        r.json()
    );
    nothing_was_applied(&d);

    // Slow clients hold the budget and its overdraft for the body timeout (2 s); a gzip of
    // ~1 KB that inflates to 20 KiB fits as received but not as decoded, so it waits for that
    // room, then succeeds.
    let slow = slow_bodies_holding_the_budget_and_the_overdraft(&d);
    let started = Instant::now();
    let r = d.request(
        "POST",
        "/batch/",
        &[("content-encoding", "gzip")],
        gzipped_batch("waited", "x".repeat(20 * 1024)),
    );
    let waited = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.json());
    assert!(
        waited >= Duration::from_millis(500),
        "the decoded bytes did not wait for the slow body's room: {waited:?}"
    );
    assert!(d.person(T, "waited").is_some());
    drop(slow);
}

/// Connections that declare large bodies and send nothing hold no room: charged by what
/// they declared, three of them took the whole budget and every other request waited for
/// their body timeout.
#[test]
fn bodies_declared_but_not_sent_do_not_hold_the_room_of_others() {
    let d = Daemon::start_with(&["--max-inflight-body-bytes", "65536", "--body-timeout", "30"]);
    let idle: Vec<UnixStream> = (0..3)
        .map(|_| {
            let mut c = UnixStream::connect(&d.socket).expect("connect");
            c.write_all(&batch_head(61_440, false)).expect("write");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    d.capture(T, json!([{"event": "e", "distinct_id": "not-stalled"}]));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(20),
        "waited for the idle bodies' timeout: {waited:?}"
    );
    assert!(d.person(T, "not-stalled").is_some());
    drop(idle);
}

#[test]
fn past_max_distinct_ids_per_person_an_attachment_is_refused_with_a_warning() {
    let d = Daemon::start_with(&["--max-distinct-ids-per-person", "3"]);
    d.capture(
        T,
        json!([
            {"event": "$identify", "distinct_id": "user", "properties": {"$anon_distinct_id": "laptop"}},
            {"event": "$identify", "distinct_id": "user", "properties": {"$anon_distinct_id": "phone"}},
            {"event": "$identify", "distinct_id": "user", "properties": {"$anon_distinct_id": "tablet"}},
        ]),
    );
    let p = d.person(T, "user").expect("user");
    assert_eq!(crate::support::dids(&p).len(), 3, "{p}");
    assert!(
        d.person(T, "tablet").is_none(),
        "the fourth ID was not attached"
    );
    let w = d.warnings(T);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0]["type"], "distinct_id_limit_exceeded");
    assert_eq!(w[0]["details"]["limit"], 3);
    // The setting is refused below 2 (an $identify joins two IDs).
    let out = Command::new(bin())
        .args(["serve", "--max-distinct-ids-per-person", "1", "--data-dir"])
        .arg(d.dir.join("never"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 2"));
}

#[test]
fn a_client_sending_its_headers_one_byte_a_second_gets_408_and_is_cut_off() {
    let d = Daemon::start_with(&["--header-timeout", "1"]);
    let answer = trickle(
        &d,
        b"GET /_health HTTP/1.1\r\nHost: idstitch\r\n",
        &[b'a'; 64],
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(d.get("/_health").status, 200, "the daemon keeps serving");
}

#[test]
fn a_client_sending_its_body_one_byte_a_second_gets_408_and_is_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("idstitch.toml");
    std::fs::write(&config, "body_timeout = 1\n").unwrap();
    let d = Daemon::start_with(&["--config", config.to_str().unwrap()]);
    let head = [batch_head(1000, false), b"{".to_vec()].concat();
    let answer = trickle(&d, &head, &[b' '; 64]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains(r#""code":"body_timeout""#), "{answer:?}");
    nothing_was_applied(&d);
    d.capture(T, json!([{"event": "e", "distinct_id": "after"}]));
    assert!(d.person(T, "after").is_some(), "the daemon keeps serving");
}

#[test]
fn a_fast_body_is_not_cut_off_by_the_body_timeout() {
    let d = Daemon::start_with(&["--body-timeout", "1"]);
    let big: Vec<Value> = (0..2000)
        .map(|i| json!({"event": "e", "distinct_id": format!("user-{}", i % 50), "properties": {"i": i}}))
        .collect();
    d.capture(T, json!(big));
    assert_eq!(d.all_persons(T).len(), 50);
}

#[test]
fn with_keep_alive_0_every_answer_closes_its_connection() {
    let d = Daemon::start_with(&["--keep-alive", "0"]);
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    s.write_all(b"GET /_health HTTP/1.1\r\nHost: idstitch\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .expect("the daemon closes the connection after its answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[test]
fn past_max_connections_a_client_waits_until_a_connection_closes() {
    let d = Daemon::start_with(&[
        "--max-connections",
        "1",
        "--workers",
        "1",
        "--header-timeout",
        "60",
    ]);
    // The first connection holds the only slot (its request head is never finished).
    let mut holder = UnixStream::connect(&d.socket).unwrap();
    holder.write_all(b"GET /_health HTTP/1.1\r\n").unwrap();
    let mut waiting = UnixStream::connect(&d.socket).unwrap();
    waiting
        .write_all(b"GET /_health HTTP/1.1\r\nHost: idstitch\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 512];
    let early = waiting.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "answered past the limit: {early:?}"
    );
    drop(holder);
    waiting.set_read_timeout(Some(BOUND)).unwrap();
    let mut answer = String::new();
    waiting
        .read_to_string(&mut answer)
        .expect("answered once the slot is free");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[test]
fn the_limits_are_documented_in_help_with_their_environment_variables() {
    let out = Command::new(bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for name in [
        "max-connections",
        "header-timeout",
        "body-timeout",
        "keep-alive",
        "max-properties",
        "max-inflight-body-bytes",
        "max-distinct-ids-per-person",
        "max-body-bytes",
        "max-events-per-request",
        "max-depth",
    ] {
        let env = format!("IDSTITCH_{}", name.to_uppercase().replace('-', "_"));
        assert!(help.contains(&format!("--{name}")), "--{name} in {help}");
        assert!(help.contains(&env), "{env} in {help}");
    }
}

#[test]
fn a_zero_limit_from_the_environment_is_refused_with_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    for (var, flag) in [
        ("IDSTITCH_MAX_CONNECTIONS", "--max-connections"),
        ("IDSTITCH_HEADER_TIMEOUT", "--header-timeout"),
        ("IDSTITCH_BODY_TIMEOUT", "--body-timeout"),
        (
            "IDSTITCH_MAX_INFLIGHT_BODY_BYTES",
            "--max-inflight-body-bytes",
        ),
        ("IDSTITCH_MAX_BODY_BYTES", "--max-body-bytes"),
        (
            "IDSTITCH_MAX_EVENTS_PER_REQUEST",
            "--max-events-per-request",
        ),
        ("IDSTITCH_MAX_DEPTH", "--max-depth"),
        ("IDSTITCH_MAX_RESIDENT_PERSONS", "--max-resident-persons"),
        ("IDSTITCH_WORKERS", "--workers"),
    ] {
        let out = Command::new(bin())
            .args(["serve", "--data-dir"])
            .arg(tmp.path().join("store"))
            .env(var, "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}: {stderr}");
        assert!(
            stderr.contains(&format!("{flag} must be at least 1")),
            "{stderr}"
        );
    }
}

#[test]
fn a_kept_alive_client_trickling_its_second_requests_headers_is_cut_off() {
    // actix times only the first request's head; the watchdog times the next ones.
    let d = Daemon::start_with(&["--header-timeout", "1", "--keep-alive", "1"]);
    let started = Instant::now();
    let answer = trickle(
        &d,
        b"GET /_health HTTP/1.1\r\nHost: idstitch\r\n\r\nGET /_health HTTP/1.1\r\n",
        &[b'a'; 64],
    );
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the first request is answered: {answer:?}"
    );
    assert_eq!(
        answer.matches("HTTP/1.1").count(),
        1,
        "the trickled one is not: {answer:?}"
    );
    assert!(started.elapsed() < BOUND);
    assert_eq!(d.get("/_health").status, 200, "the daemon keeps serving");
}

#[test]
fn a_kept_alive_connection_that_keeps_sending_whole_requests_stays_open() {
    let d = Daemon::start_with(&["--header-timeout", "1", "--keep-alive", "2"]);
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    // Requests 0.5 s apart (well inside keep-alive) for 5 s: longer than keep-alive + header
    // timeout, after which the watchdog would cut a connection with no request in progress.
    for i in 0..10 {
        s.write_all(b"GET /_health HTTP/1.1\r\nHost: idstitch\r\n\r\n")
            .unwrap_or_else(|e| panic!("request {i} at {:?}: {e}", t0.elapsed()));
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("answer {i} at {:?}: {e}", t0.elapsed()));
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "answer {i}: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A soft open-files limit below the hard one is raised at start (each connection takes two
/// descriptors; a soft limit of 1,024 ran out near 500 connections).
#[test]
fn serve_raises_the_soft_open_files_limit_to_the_hard_one() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setrlimit is async-signal-safe, and only changes the child's own limit.
    unsafe {
        cmd.pre_exec(|| {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
            l.rlim_cur = 256.min(l.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    while !socket.exists() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers[0], numbers[1], "soft limit not raised: {line}");
}

/// Memory: mimalloc's arenas are not backed by transparent huge pages. With them, the first
/// touch of memory it starts using faulted in a whole 2 MiB huge page for the kernel to zero,
/// in stalls the load generator saw (`cli::no_transparent_huge_pages`).
#[test]
fn the_daemon_runs_without_transparent_huge_pages() {
    let d = Daemon::start();
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let thp = status.lines().find(|l| l.starts_with("THP_enabled:"));
    assert_eq!(
        thp.map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["THP_enabled:", "0"]),
        "{status}"
    );
}
