//! Split, delete and the decision log ("why are these merged?").

use std::process::Command;

use serde_json::{json, Value};

use crate::support::{bin, dids, Daemon};

const T: &str = "phc_ops";

fn merged(d: &Daemon) -> Value {
    d.capture(T, json!([
        {"event": "e", "distinct_id": "anon", "uuid": "c1", "$set": {"from_anon": 1}},
        {"event": "e", "distinct_id": "user", "uuid": "c2", "$set": {"email": "u@x.io"}},
        {"event": "$identify", "distinct_id": "user", "uuid": "merge-1", "properties": {"$anon_distinct_id": "anon"}},
        {"event": "$identify", "distinct_id": "user", "uuid": "attach-1", "properties": {"$anon_distinct_id": "phone"}},
    ]));
    d.person(T, "user").unwrap()
}

#[test]
fn history_lists_creation_attachments_merges_and_refusals_oldest_first() {
    let d = Daemon::start();
    let p = merged(&d);
    d.capture(T, json!([{"event": "$identify", "distinct_id": "user", "uuid": "bad", "properties": {"$anon_distinct_id": "null"}}]));
    let uuid = p["uuid"].as_str().unwrap();
    let h = d
        .get(&format!("/api/projects/{T}/persons/{uuid}/history/"))
        .json();
    let kinds: Vec<String> = h["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            e["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["type"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(kinds[0], "person_created");
    assert!(kinds.contains(&"persons_merged".to_string()));
    assert!(kinds.contains(&"distinct_id_attached".to_string()));
    assert!(kinds.contains(&"merge_refused".to_string()));
    let merge = h["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cause_event_uuid"] == json!("merge-1"))
        .unwrap();
    let m = merge["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == json!("persons_merged"))
        .unwrap();
    assert_eq!(m["moved_distinct_ids"], json!(["anon"]));
    assert_eq!(m["properties_brought"], json!({"from_anon": 1}));
    let refused = h["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["changes"].as_array().unwrap().clone())
        .find(|c| c["type"] == json!("merge_refused"))
        .unwrap();
    assert_eq!(refused["reason"], json!("illegal_distinct_id"));
    assert_eq!(
        refused["detail"],
        json!("\"null\" is an illegal distinct ID, which never merges"),
        "a sentence, not Rust's debug form"
    );
}

/// A refused merge whose `into` had no person yet is logged before the same entry creates
/// that person (the target is treated as after any refused merge): it belongs to the new
/// person's history all the same, reason and cause included.
#[test]
fn a_refusal_that_creates_its_into_person_is_in_that_persons_history() {
    let d = Daemon::start();
    d.capture(
        T,
        json!([{"event": "$identify", "distinct_id": "newcomer", "uuid": "illegal-1",
                         "properties": {"$anon_distinct_id": "anonymous"}}]),
    );
    let uuid = d.person(T, "newcomer").unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let h = d
        .get(&format!("/api/projects/{T}/persons/{uuid}/history/"))
        .json();
    let changes: Vec<Value> = h["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["cause_event_uuid"] == json!("illegal-1"))
        .flat_map(|e| e["changes"].as_array().unwrap().clone())
        .collect();
    let types: Vec<&str> = changes
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["merge_refused", "person_created"], "{h}");
    assert_eq!(changes[0]["reason"], json!("illegal_distinct_id"), "{h}");
}

#[test]
fn explain_answers_why_an_id_belongs_to_its_person() {
    let d = Daemon::start();
    merged(&d);
    let r = d
        .get(&format!(
            "/api/projects/{T}/persons/?distinct_id=anon&explain=true"
        ))
        .json();
    let steps = r["explanation"].as_array().unwrap();
    assert!(steps
        .iter()
        .any(|s| s["cause_event_uuid"] == json!("merge-1")));
}

/// A split cannot be undone: a body that does not parse is refused (400, nothing split), not
/// read as "no main ID"; a JSON body is read whatever its content type (`curl -d`).
#[test]
fn a_split_body_that_does_not_parse_is_refused_and_any_json_body_is_read() {
    let d = Daemon::start();
    let p = merged(&d);
    let uuid = p["uuid"].as_str().unwrap().to_string();
    let path = format!("/api/projects/{T}/persons/{uuid}/split/");
    let json_type = [("content-type", "application/json")];
    let r = d.request(
        "POST",
        &path,
        &json_type,
        b"{\"main_distinct_id\": ".to_vec(),
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        dids(&d.person(T, "user").unwrap()).len(),
        3,
        "nothing split"
    );
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let body = br#"{"main_distinct_id": "anon"}"#.to_vec();
    let r = d.request("POST", &path, &form, body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let main = d.person(T, "anon").unwrap();
    assert_eq!(
        main["properties"]["email"],
        json!("u@x.io"),
        "the main ID kept the properties"
    );
}

#[test]
fn split_gives_each_id_its_own_person_and_its_events() {
    let mut d = Daemon::start();
    let p = merged(&d);
    let uuid = p["uuid"].as_str().unwrap().to_string();
    let r = d.post(
        &format!("/api/projects/{T}/persons/{uuid}/split/"),
        &json!({"main_distinct_id": "user"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let check = |d: &Daemon| {
        assert_eq!(d.all_persons(T).len(), 3);
        let main = d.person(T, "user").unwrap();
        assert_eq!(dids(&main), vec!["user"]);
        assert_eq!(main["properties"]["email"], json!("u@x.io"));
        assert_eq!(main["is_identified"], json!(true));
        let anon = d.person(T, "anon").unwrap();
        assert_eq!(anon["properties"], json!({}));
        assert_eq!(anon["is_identified"], json!(false));
        let ev = d.events_of_person(T, anon["uuid"].as_str().unwrap());
        assert_eq!(
            ev.iter().map(|e| e["uuid"].clone()).collect::<Vec<_>>(),
            vec![json!("c1")]
        );
    };
    check(&d);
    d.restart();
    check(&d);
    d.terminate();
    d.assert_verifies();
}

/// The original person's uuid is its creating ID's (spec §6), here "user"'s. Split with
/// another main ID, "user"'s part is still the original person: its version goes up (a
/// consumer that keeps the highest version per uuid must see the split), it stays identified
/// (`is_identified` never goes back to false, spec §4) and keeps its creation time and place;
/// only the properties go to the main ID's new person. The uuid's history runs on from the
/// original's creation and merge to the split.
#[test]
fn a_split_to_another_main_id_carries_the_person_on_under_its_uuid_without_its_properties() {
    let mut d = Daemon::start();
    let p = merged(&d);
    let uuid = p["uuid"].as_str().unwrap().to_string();
    let version = p["version"].as_u64().unwrap();
    assert!(version > 0);
    assert_eq!(p["is_identified"], json!(true));
    let r = d.post(
        &format!("/api/projects/{T}/persons/{uuid}/split/"),
        &json!({"main_distinct_id": "anon"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let check = |d: &Daemon| {
        let user = d.person(T, "user").unwrap();
        assert_eq!(user["uuid"], json!(uuid));
        assert_eq!(
            (
                &user["version"],
                &user["is_identified"],
                &user["properties"]
            ),
            (&json!(version + 1), &json!(true), &json!({})),
            "{user}: its version goes up, it stays identified (spec §4, §5)"
        );
        assert_eq!(user["created_at"], p["created_at"]);
        let h = history(d, &uuid);
        assert_eq!(h.first().unwrap().1, vec!["person_created"], "{h:?}");
        assert!(
            h.iter()
                .any(|(_, c)| c.iter().any(|c| c == "persons_merged")),
            "{h:?}"
        );
        assert_eq!(h.last().unwrap().1, vec!["person_split"], "{h:?}");
        let main = d.person(T, "anon").unwrap();
        assert_ne!(main["uuid"], json!(uuid));
        assert_eq!(main["is_identified"], json!(true));
        assert_eq!(main["properties"]["email"], json!("u@x.io"));
        let all = d.all_persons(T);
        assert_eq!(all.len(), 3, "one person per distinct ID");
        assert_eq!(
            all[0]["uuid"],
            json!(uuid),
            "it keeps its place in the creation order"
        );
    };
    check(&d);
    d.restart();
    check(&d);
    d.terminate();
    d.assert_verifies();
}

/// A 204 to a deletion with its events promises their bytes left the disk: when the compaction
/// that removes them fails, the answer is a server error that says the deletion itself holds
/// and how the bytes go, and the deletion is still durable.
#[test]
fn a_deletion_whose_compaction_fails_is_not_answered_204_but_stays_deleted() {
    let mut d = Daemon::start_with_env(&[("IDSTITCH_TEST_FAIL_COMPACTION", "1")]);
    let p = merged(&d);
    let uuid = p["uuid"].as_str().unwrap().to_string();
    let r = delete_person_and_events(&d, &uuid);
    let body = r.json();
    assert_eq!(r.status, 500, "{body}");
    assert_eq!(body["type"], "server_error", "{body}");
    assert_eq!(body["code"], "compaction_failed", "{body}");
    let detail = body["detail"].as_str().unwrap();
    for says in [
        uuid.as_str(),
        "deleted (durable",
        "IDSTITCH_TEST_FAIL_COMPACTION",
        "delete_events=true",
    ] {
        assert!(detail.contains(says), "does not say {says:?}: {detail}");
    }
    d.restart();
    assert_deleted_with_events(&d, &uuid);
}

/// `DELETE` of person `uuid` with its events.
fn delete_person_and_events(d: &Daemon, uuid: &str) -> idstitch::cli::client::Response {
    d.request(
        "DELETE",
        &format!("/api/projects/{T}/persons/{uuid}/?delete_events=true"),
        &[],
        Vec::new(),
    )
}

/// [`merged`]'s person, deleted with its events: found by neither ID nor its uuid, and the
/// anonymous ID's events gone.
fn assert_deleted_with_events(d: &Daemon, uuid: &str) {
    assert!(d.person(T, "user").is_none() && d.person(T, "anon").is_none());
    assert_eq!(
        d.get(&format!("/api/projects/{T}/persons/{uuid}/")).status,
        404
    );
    assert!(d
        .get(&format!("/api/projects/{T}/events/?distinct_id=anon"))
        .json()["results"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_deleted_person_disappears_and_a_later_event_starts_a_fresh_person() {
    let mut d = Daemon::start();
    let p = merged(&d);
    let uuid = p["uuid"].as_str().unwrap().to_string();
    assert_eq!(delete_person_and_events(&d, &uuid).status, 204);
    let gone = |d: &Daemon| {
        assert_deleted_with_events(d, &uuid);
        assert!(d.all_persons(T).is_empty());
    };
    gone(&d);
    d.restart();
    gone(&d);
    d.capture(
        T,
        json!([{"event": "e", "distinct_id": "anon", "uuid": "fresh", "$set": {"new": true}}]),
    );
    let fresh = d.person(T, "anon").unwrap();
    assert_eq!(dids(&fresh), vec!["anon"]);
    assert_eq!(
        fresh["properties"],
        json!({"new": true, "$creator_event_uuid": "fresh"})
    );
    d.terminate();
    d.assert_verifies();
}

/// Every file under `dir`, subdirectories (the write-ahead log archive) included.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .flat_map(|p| if p.is_dir() { files(&p) } else { vec![p] })
        .collect()
}

/// Whether any 6-byte piece of `needle` is in any file under `dir` that `only` admits. Table
/// files are LZ4-compressed: a string stays a literal run there unless 4 of its bytes repeat
/// earlier bytes of the same block, which then replace them with a back-reference. That
/// happened to a kept note twice in about 1,700 runs (only "keep-" was left), so whole
/// strings are not searched for.
fn on_disk(dir: &std::path::Path, needle: &str, only: &dyn Fn(&std::path::Path) -> bool) -> bool {
    let pieces: Vec<&[u8]> = needle.as_bytes().windows(6).collect();
    files(dir).iter().filter(|f| only(f)).any(|f| {
        std::fs::read(f)
            .map(|b| b.windows(6).any(|w| pieces.contains(&w)))
            .unwrap_or(false)
    })
}

#[test]
fn deleted_events_are_gone_from_disk_after_compaction() {
    let mut d = Daemon::start();
    let marker = "SECRET-MARKER-7f3a9c";
    let dir = d.dir.clone();
    let found_in =
        |needle: &str, only: &dyn Fn(&std::path::Path) -> bool| on_disk(&dir, needle, only);
    let found = |needle: &str| found_in(needle, &|_| true);
    d.capture(T, json!([{"event": "e", "distinct_id": "victim", "uuid": "v1", "properties": {"note": marker}},
                        {"event": "e", "distinct_id": "bystander", "uuid": "b1", "properties": {"note": "keep-me-4411"}}]));
    let uuid = d.person(T, "victim").unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        d.request(
            "DELETE",
            &format!("/api/projects/{T}/persons/{uuid}/?delete_events=true"),
            &[],
            Vec::new()
        )
        .status,
        204
    );
    // The write-ahead log file that held the event is obsolete after the deletion's flush:
    // gone by the time of the 204, not just by the reaper's next pass.
    let is_log = |f: &std::path::Path| f.extension().is_some_and(|x| x == "log");
    assert!(
        !found_in(marker, &is_log),
        "the deleted event is still in a write-ahead log file"
    );
    assert_eq!(d.terminate().code(), Some(0));
    assert!(
        !found(marker),
        "the deleted event's bytes are still on disk"
    );
    assert!(
        found("keep-me-4411"),
        "the search itself works: a kept event is found"
    );
    d.start_again();
    assert_eq!(
        d.get(&format!("/api/projects/{T}/events/?distinct_id=bystander"))
            .json()["results"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// A daemon with the conversion buffer on in project `b`: the backend event of `user-{n}`
/// (with `props`) waits, and a browser `$identify` joins `user-{n}` to `anon-{n}`'s person.
fn buffered_signup(b: &str, n: u32, props: Value) -> Daemon {
    let d = Daemon::start_with(&["--test-clock"]);
    crate::buffer::enable_buffer(&d, b, 60);
    let (anon, user) = (format!("anon-{n}"), format!("user-{n}"));
    let web = json!({"$device_id": anon, "$lib": "web"});
    d.capture(
        b,
        json!([{"event": "$pageview", "distinct_id": anon, "properties": web}]),
    );
    let uuid = format!("0190a3b0-0000-7000-8000-0000000000{n:02}");
    d.capture(
        b,
        json!([{"event": "signed_up", "distinct_id": user, "uuid": uuid, "properties": props}]),
    );
    assert_eq!(
        crate::buffer::waiting(&d, b).len(),
        1,
        "the backend event waits"
    );
    let identify = json!({"$anon_distinct_id": anon, "$lib": "web"});
    d.capture(
        b,
        json!([{"event": "$identify", "distinct_id": user, "properties": identify}]),
    );
    d
}

/// Delete the person of `did` with its events.
fn delete_with_events(d: &Daemon, b: &str, did: &str) {
    let uuid = d.person(b, did).unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/projects/{b}/persons/{uuid}/?delete_events=true");
    assert_eq!(d.request("DELETE", &path, &[], Vec::new()).status, 204);
}

/// Stop the daemon; `marker` must be in no file of its data dir, and the log must verify.
fn assert_gone_from_disk(mut d: Daemon, marker: &str) {
    assert_eq!(d.terminate().code(), Some(0));
    assert!(
        !on_disk(&d.dir, marker, &|_| true),
        "the deleted event's bytes are still on disk"
    );
    d.assert_verifies();
}

/// An event that waited in the conversion buffer is in the log twice: as it waited, and as
/// stored when released. Deleting its person with its events removes both.
#[test]
fn a_deleted_event_that_waited_in_the_buffer_is_gone_from_disk_too() {
    const B: &str = "phc_ops_buffer";
    let marker = "BUFFERED-SECRET-51c2e8";
    let d = buffered_signup(B, 9, json!({"$lib": "posthog-python", "note": marker}));
    let r = d.post("/api/_test/clock", &json!({"advance_secs": 61}));
    assert_eq!(r.status, 200);
    crate::buffer::wait_until_released(&d, B, std::time::Duration::from_secs(10));
    delete_with_events(&d, B, "user-9");
    assert_gone_from_disk(d, marker);
}

/// An event of the person's still waiting in the conversion buffer is one of its events:
/// a deletion with its events drops it (its bytes leave the disk), so that its release does
/// not bring the deleted user's properties back as a fresh person.
#[test]
fn a_deletion_with_its_events_drops_those_still_waiting_in_the_buffer() {
    const B: &str = "phc_ops_waiting";
    let marker = "WAITING-SECRET-0d93aa";
    let props = json!({"$lib": "posthog-python", "note": marker, "$set": {"email": marker}});
    let d = buffered_signup(B, 8, props);
    delete_with_events(&d, B, "user-8");
    assert!(
        crate::buffer::waiting(&d, B).is_empty(),
        "dropped with the person"
    );
    let r = d.post("/api/_test/clock", &json!({"advance_secs": 61}));
    assert_eq!(r.status, 200);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(d.person(B, "user-8").is_none(), "no person came back");
    assert_gone_from_disk(d, marker);
}

/// A query string or JSON body that does not parse gets a JSON error like every other error
/// of the API, not actix's plain text.
#[test]
fn a_bad_query_or_json_body_is_answered_in_json() {
    let d = Daemon::start();
    let p = merged(&d);
    let uuid = p["uuid"].as_str().unwrap().to_string();
    for (method, path, body) in [
        (
            "GET",
            format!("/api/projects/{T}/events/?limit=abc"),
            Vec::new(),
        ),
        (
            "DELETE",
            format!("/api/projects/{T}/persons/{uuid}/?delete_events=yes"),
            Vec::new(),
        ),
        ("POST", "/api/snapshot".to_string(), b"{not json".to_vec()),
    ] {
        let r = d.request(method, &path, &[("content-type", "application/json")], body);
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert_eq!(r.status, 400, "{method} {path}: {text}");
        let v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert_eq!(v["type"], json!("validation_error"), "{text}");
        assert!(
            v["detail"].as_str().is_some_and(|s| !s.is_empty()),
            "{text}"
        );
    }
    assert!(
        d.person(T, "user").is_some(),
        "the bad DELETE deleted nothing"
    );
}

/// `idstitch args`, which must exit 0 (the failure shows its stderr).
fn succeeds(args: &[&str]) -> std::process::Output {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "idstitch {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_person_cli_shows_and_splits_over_the_socket() {
    let d = Daemon::start();
    let p = merged(&d);
    let sock = d.socket.to_str().unwrap().to_string();
    let out = succeeds(&["person", "--socket", &sock, "show", T, "anon", "--explain"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("merge-1"));
    let uuid = p["uuid"].as_str().unwrap();
    succeeds(&["person", "--socket", &sock, "split", T, uuid]);
    assert_eq!(d.all_persons(T).len(), 3);
}

/// A project token is sent in the request's path percent-encoded: a space in it used to go as
/// `+`, and every `person` subcommand said the project did not exist.
#[test]
fn the_person_cli_finds_a_project_whose_token_has_a_space() {
    let d = Daemon::start();
    let token = "phc_sp ace";
    d.capture(token, json!([{"event": "e", "distinct_id": "w1"}]));
    let sock = d.socket.to_str().unwrap().to_string();
    let out = succeeds(&["person", "--socket", &sock, "show", token, "w1"]);
    let r = d.get("/api/projects/phc_sp%20ace/persons/?distinct_id=w1");
    let uuid = r.json()["results"][0]["uuid"].as_str().unwrap().to_string();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&uuid));
    succeeds(&["person", "--socket", &sock, "history", token, &uuid]);
}

/// A command whose output is piped into something that stops reading (`| head -1`) ends as
/// other Unix tools do, by SIGPIPE, without a panic and its backtrace (it exited 101).
#[test]
fn a_command_whose_output_pipe_closes_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let d = Daemon::start();
    d.capture(T, json!([{"event": "e", "distinct_id": "someone"}]));
    let sock = d.socket.to_str().unwrap().to_string();
    // A pipe whose reading end is closed before the command starts (`std::io::pipe` needs
    // Rust 1.87; the crate builds with 1.85).
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] was just opened by pipe(2) and is owned by nothing else.
    let writer = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    let out = Command::new(bin())
        .args(["project", "--socket", &sock, "list"])
        .stdout(std::process::Stdio::from(writer))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `person show` of a distinct ID with no person says so on stderr, and exits 1; a project
/// that is not there is named as the daemon names it, without JSON quotes.
#[test]
fn person_show_of_an_unknown_id_says_so() {
    let d = Daemon::start();
    d.capture(T, json!([{"event": "e", "distinct_id": "someone"}]));
    let sock = d.socket.to_str().unwrap().to_string();
    let out = Command::new(bin())
        .args(["person", "--socket", &sock, "show", T, "nobody"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "idstitch: no person has the distinct ID \"nobody\" in project \"{T}\""
        )),
        "{err}"
    );
    let out = Command::new(bin())
        .args(["person", "--socket", &sock, "show", "phc_nope", "someone"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no project \"phc_nope\" on this daemon")
            && err.contains("`idstitch project list` lists them"),
        "{err}"
    );
    // A uuid with no person, and a project shown or set that is not there, say what to do
    // too (they said only "404: person not found" and "404: project not found").
    let nobody = "00000000-0000-5000-8000-000000000000";
    let failed = |args: &[&str]| {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for cmd in ["history", "split", "delete"] {
        let err = failed(&["person", "--socket", &sock, cmd, T, nobody]);
        assert!(
            err.contains(&format!("no person has the uuid \"{nobody}\""))
                && err.contains("`idstitch person show PROJECT DISTINCT_ID`"),
            "{cmd}: {err}"
        );
    }
    // A negative number is refused as a bad value, not with clap's tip to write `-- -1`.
    for (flag, says) in [
        ("--merge-limit", "is not a whole number or none"),
        ("--buffer-window-secs", "invalid digit"),
    ] {
        let err = failed(&["project", "--socket", &sock, "set", T, flag, "-1"]);
        assert!(
            err.contains(says) && !err.contains("-- -1"),
            "{flag}: {err}"
        );
    }
    for args in [
        &["project", "--socket", &sock, "show", "phc_nope"][..],
        &[
            "project", "--socket", &sock, "set", "phc_nope", "--name", "x",
        ],
        &[
            "insights", "--socket", &sock, "unique", "phc_nope", "--event", "e",
        ],
    ] {
        let err = failed(args);
        assert!(
            err.contains("no project \"phc_nope\" on this daemon")
                && err.contains("`idstitch project list` lists them"),
            "{args:?}: {err}"
        );
    }
}

/// Snapshot the stopped daemon's data dir, restore it elsewhere and return a daemon on it.
fn snapshot_and_restore(d: &mut Daemon, tmp: &std::path::Path) -> Daemon {
    d.terminate();
    let (snap, restored) = (tmp.join("snap"), tmp.join("restored"));
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (snap_s, dir_s, restored_s) = (path(&snap), path(&d.dir), path(&restored));
    succeeds(&["snapshot", "create", &snap_s, "--data-dir", &dir_s]);
    succeeds(&["snapshot", "restore", &snap_s, "--data-dir", &restored_s]);
    Daemon::on(&restored, &[])
}

fn sorted_persons(d: &Daemon) -> Vec<Value> {
    let mut v = d.all_persons(T);
    v.sort_by_key(|p| p["uuid"].as_str().unwrap().to_string());
    v
}

#[test]
fn split_and_history_survive_snapshot_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start();
    let p = merged(&d);
    let uuid = p["uuid"].as_str().unwrap().to_string();
    assert_eq!(
        d.post(
            &format!("/api/projects/{T}/persons/{uuid}/split/"),
            &json!({})
        )
        .status,
        200
    );
    let want = sorted_persons(&d);
    let history = d
        .get(&format!("/api/projects/{T}/persons/{uuid}/history/"))
        .json();
    let r = snapshot_and_restore(&mut d, tmp.path());
    assert_eq!(sorted_persons(&r), want);
    assert_eq!(
        r.get(&format!("/api/projects/{T}/persons/{uuid}/history/"))
            .json(),
        history
    );
    assert!(history["results"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == json!("person_split"))));
}

#[test]
fn a_deletion_survives_snapshot_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start();
    let p = merged(&d);
    let uuid = p["uuid"].as_str().unwrap().to_string();
    assert_eq!(
        d.request(
            "DELETE",
            &format!("/api/projects/{T}/persons/{uuid}/?delete_events=true"),
            &[],
            Vec::new()
        )
        .status,
        204
    );
    let r = snapshot_and_restore(&mut d, tmp.path());
    assert!(r.all_persons(T).is_empty());
    assert!(r.person(T, "user").is_none());
    assert!(r
        .get(&format!("/api/projects/{T}/events/?distinct_id=user"))
        .json()["results"]
        .as_array()
        .unwrap()
        .is_empty());
    let h = r
        .get(&format!("/api/projects/{T}/persons/{uuid}/history/"))
        .json();
    assert!(h["results"].as_array().unwrap().iter().any(|e| e["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == json!("person_deleted"))));
}

/// Each entry of a history or an explanation as (cause, change types), oldest first.
fn steps(entries: &Value) -> Vec<(String, Vec<String>)> {
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let types = e["changes"].as_array().unwrap().iter();
            (
                e["cause_event_uuid"].as_str().unwrap_or("").to_string(),
                types
                    .map(|c| c["type"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn history(d: &Daemon, uuid: &str) -> Vec<(String, Vec<String>)> {
    steps(
        &d.get(&format!("/api/projects/{T}/persons/{uuid}/history/"))
            .json()["results"],
    )
}

fn explanation(d: &Daemon, did: &str) -> Vec<(String, Vec<String>)> {
    steps(
        &d.get(&format!(
            "/api/projects/{T}/persons/?distinct_id={did}&explain=true"
        ))
        .json()["explanation"],
    )
}

fn created_by(cause: &str) -> Vec<(String, Vec<String>)> {
    vec![(cause.to_string(), vec!["person_created".to_string()])]
}

/// A person's uuid is a function of (project, distinct ID) (spec §6): after a deletion, a later
/// event for the same ID starts a fresh person with the same uuid (spec §10). The explanation
/// of its ID starts at its own creation: the deleted person's merges are not why the ID is in
/// this person. The uuid's history keeps all it has been through, the deleted person's
/// creation, merges and tombstone, then the fresh person's creation: every merge stays
/// queryable per person, and the tombstone survives the later event (spec §10). (It used to
/// start at the fresh person's creation, which hid them.) The same for the uuid of a person
/// merged into the deleted one.
#[test]
fn a_fresh_person_after_a_deletion_keeps_the_uuids_earlier_history_before_its_own() {
    let d = Daemon::start();
    let p = merged(&d);
    let user = p["uuid"].as_str().unwrap().to_string();
    // The uuid of anon's first person, merged into user's.
    let h = d
        .get(&format!("/api/projects/{T}/persons/{user}/history/"))
        .json();
    let anon = h["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["changes"].as_array().unwrap().clone())
        .find(|c| c["type"] == json!("persons_merged"))
        .unwrap()["absorbed"]
        .as_str()
        .unwrap()
        .to_string();
    let old_anon = history(&d, &anon);
    assert_eq!(old_anon[..1], created_by("c1")[..], "{old_anon:?}");
    assert_ne!(anon, user);
    let r = d.request(
        "DELETE",
        &format!("/api/projects/{T}/persons/{user}/?delete_events=false"),
        &[],
        Vec::new(),
    );
    assert_eq!(r.status, 204);
    // Deleted, not taken again: everything up to the deletion.
    let deleted = history(&d, &user);
    assert_eq!(deleted[..1], created_by("c2")[..], "{deleted:?}");
    assert_eq!(deleted.last().unwrap().1, ["person_deleted"], "{deleted:?}");
    let causes: Vec<&str> = deleted.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(causes, ["c2", "merge-1", "attach-1", ""], "{deleted:?}");
    let user_story = explanation(&d, "user");
    assert_eq!(user_story.first(), deleted.first(), "{user_story:?}");
    assert_eq!(user_story.last(), deleted.last(), "{user_story:?}");
    assert_eq!(history(&d, &anon), old_anon, "merged away, not taken again");

    d.capture(
        T,
        json!([{"event": "e", "distinct_id": "user", "uuid": "fresh-user"}]),
    );
    let fresh = d.person(T, "user").unwrap();
    assert_eq!(fresh["uuid"], json!(user), "the same uuid, a fresh person");
    let user_history = [deleted.clone(), created_by("fresh-user")].concat();
    assert_eq!(history(&d, &user), user_history);
    assert_eq!(explanation(&d, "user"), created_by("fresh-user"));
    // anon was released by the deletion too, and not named since: its last story.
    let anon_story = explanation(&d, "anon");
    assert_eq!(anon_story[..1], created_by("c1")[..], "{anon_story:?}");
    assert_eq!(anon_story.last().unwrap().1, ["person_deleted"]);

    // anon's first person was merged into the deleted one: its uuid is free again too.
    d.capture(
        T,
        json!([{"event": "e", "distinct_id": "anon", "uuid": "fresh-anon"}]),
    );
    assert_eq!(d.person(T, "anon").unwrap()["uuid"], json!(anon));
    assert_eq!(
        history(&d, &anon),
        [old_anon, created_by("fresh-anon")].concat()
    );
    assert_eq!(explanation(&d, "anon"), created_by("fresh-anon"));

    // The CLI prints what the API answers.
    let sock = d.socket.to_str().unwrap().to_string();
    let out = succeeds(&["person", "--socket", &sock, "history", T, &user]);
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(steps(&printed["results"]), user_history);
    let out = succeeds(&["person", "--socket", &sock, "show", T, "user", "--explain"]);
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(steps(&printed["explanation"]), created_by("fresh-user"));
}

/// A query parameter the API cannot read is named with what it takes (serde's message said
/// only "invalid digit found in string"); both filters of the events list at once are refused
/// rather than one of them silently ignored.
#[test]
fn a_bad_query_parameter_is_named_with_what_it_takes() {
    let d = Daemon::start();
    let p = merged(&d);
    let uuid = p["uuid"].as_str().unwrap().to_string();
    for (method, path, says) in [
        (
            "GET",
            format!("/api/projects/{T}/persons/?limit=-1"),
            "limit=\"-1\" is not valid: limit takes a whole number",
        ),
        (
            "GET",
            format!("/api/projects/{T}/events/?distinct_id=user&limit=abc"),
            "limit=\"abc\"",
        ),
        (
            "GET",
            format!("/api/projects/{T}/events/?distinct_id=user&after=zzz"),
            "after=\"zzz\" is not valid",
        ),
        (
            "GET",
            format!("/api/projects/{T}/persons/?distinct_id=user&explain=1"),
            "explain takes true or false",
        ),
        (
            "DELETE",
            format!("/api/projects/{T}/persons/{uuid}/?delete_events=True"),
            "delete_events takes true or false",
        ),
        (
            "GET",
            format!("/api/projects/{T}/events/?distinct_id=user&person_id={uuid}"),
            "give distinct_id or person_id, not both",
        ),
        (
            "GET",
            format!("/api/projects/{T}/events/?distinct_id=user&distinct_id=anon"),
            "distinct_id is given more than once: give it once",
        ),
        (
            "GET",
            format!("/api/projects/{T}/persons/?x=1&x=2&limit=abc"),
            "limit=\"abc\" is not valid",
        ),
        (
            "GET",
            format!("/api/projects/{T}/events/?person_id=not-a-uuid"),
            "person_id=\"not-a-uuid\" is not valid: person_id takes a person uuid",
        ),
    ] {
        let r = d.request(method, &path, &[], Vec::new());
        let body = r.json();
        assert_eq!(r.status, 400, "{path}: {body}");
        assert_eq!(body["code"], json!("invalid_query"), "{path}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{path}: {detail}");
    }
    assert!(d.person(T, "user").is_some(), "nothing deleted");
}
