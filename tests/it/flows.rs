//! The flows of `shared/seeds/identify-users.txt`, end to end over the Unix socket.

use serde_json::{json, Value};

use crate::support::{dids, Daemon};
use idstitch::cli::client::Response;

const T: &str = "phc_flows";

fn page(did: &str, uuid: &str, personless: bool) -> Value {
    json!({"event": "$pageview", "distinct_id": did, "uuid": uuid, "properties": {"$process_person_profile": !personless, "$current_url": "https://x/"}})
}

#[test]
fn identify_merges_anonymous_events_into_the_new_person() {
    let d = Daemon::start();
    let anon = "17b845b08de74-033c497ed2753c-35667c03-1fa400-17b845b08dfd55";
    d.capture(T, json!([page(anon, "e1", true), page(anon, "e2", true)]));
    assert!(
        d.person(T, anon).is_none(),
        "anonymous personless browsing creates no person"
    );
    d.capture(T, json!([{"event": "$identify", "distinct_id": "my_user_12345", "uuid": "e3",
        "properties": {"$anon_distinct_id": anon}, "$set": {"name": "Max Hedgehog", "email": "max@hedgehogmail.com"}}]));
    d.capture(
        T,
        json!([page(anon, "e4", false), page("my_user_12345", "e5", false)]),
    );
    let p = d.person(T, "my_user_12345").unwrap();
    assert_eq!(dids(&p), vec!["my_user_12345", anon]);
    assert_eq!(p["is_identified"], json!(true));
    assert_eq!(p["properties"]["email"], json!("max@hedgehogmail.com"));
    assert_eq!(d.person(T, anon).unwrap()["uuid"], p["uuid"]);
    let events = d.events_of_person(T, p["uuid"].as_str().unwrap());
    let uuids: Vec<&str> = events.iter().map(|e| e["uuid"].as_str().unwrap()).collect();
    assert_eq!(
        uuids,
        vec!["e5", "e4", "e3", "e2", "e1"],
        "newest first, anonymous events included"
    );
    assert!(events.iter().all(|e| e["person_id"] == p["uuid"]));
}

#[test]
fn past_events_follow_the_person_after_a_merge_of_two_persons() {
    let d = Daemon::start();
    d.capture(
        T,
        json!([page("anon", "a1", false), page("user", "u1", false)]),
    );
    let anon_uuid = d.person(T, "anon").unwrap()["uuid"].clone();
    d.capture(T, json!([{"event": "$identify", "distinct_id": "user", "uuid": "i1", "properties": {"$anon_distinct_id": "anon"}}]));
    let p = d.person(T, "anon").unwrap();
    assert_ne!(p["uuid"], anon_uuid, "the into person survives");
    assert_eq!(d.events_of_person(T, p["uuid"].as_str().unwrap()).len(), 3);
    let r = d.get(&format!(
        "/api/projects/{T}/persons/{}/",
        anon_uuid.as_str().unwrap()
    ));
    assert_eq!(r.status, 404, "the absorbed person ceased to exist");
}

#[test]
fn a_returning_user_on_a_second_device_joins_the_same_person() {
    let d = Daemon::start();
    d.capture(T, json!([page("device-1", "d1", false),
        {"event": "$identify", "distinct_id": "user", "uuid": "d2", "properties": {"$anon_distinct_id": "device-1"}},
        page("device-2", "d3", false),
        {"event": "$identify", "distinct_id": "user", "uuid": "d4", "properties": {"$anon_distinct_id": "device-2"}}]));
    let p = d.person(T, "device-2").unwrap();
    assert_eq!(dids(&p), vec!["device-1", "user", "device-2"]);
    assert_eq!(d.all_persons(T).len(), 1);
}

#[test]
fn frontend_and_backend_share_an_id_or_alias_it() {
    let d = Daemon::start();
    d.capture(T, json!([
        {"event": "$identify", "distinct_id": "db-42", "uuid": "b1", "$set": {"email": "a@b.c"}},
        {"event": "$identify", "distinct_id": "db-42", "uuid": "f1", "properties": {"$anon_distinct_id": "browser-anon"}},
        {"event": "$create_alias", "distinct_id": "db-42", "uuid": "b2", "properties": {"alias": "alt-99"}},
    ]));
    let p = d.person(T, "alt-99").unwrap();
    assert_eq!(dids(&p), vec!["db-42", "browser-anon", "alt-99"]);
    assert_eq!(p["properties"]["email"], json!("a@b.c"));
}

#[test]
fn set_overrides_and_set_once_keeps_the_first_value_over_the_socket() {
    let d = Daemon::start();
    d.capture(T, json!([
        {"event": "movie played", "distinct_id": "u", "$set": {"plan": "free_trial"}, "$set_once": {"initial_location": "London"}},
        {"event": "movie played", "distinct_id": "u", "properties": {"$set": {"plan": "premium"}, "$set_once": {"initial_location": "Rome"}}},
    ]));
    let p = d.person(T, "u").unwrap();
    assert_eq!(p["properties"]["plan"], json!("premium"));
    assert_eq!(p["properties"]["initial_location"], json!("London"));
}

#[test]
fn merge_dangerously_joins_identified_persons_and_alias_refuses_them() {
    let d = Daemon::start();
    d.capture(T, json!([
        {"event": "$identify", "distinct_id": "user-a", "properties": {"$anon_distinct_id": "anon-a"}},
        {"event": "$identify", "distinct_id": "user-b", "properties": {"$anon_distinct_id": "anon-b"}},
        {"event": "$create_alias", "distinct_id": "user-b", "uuid": "refused", "properties": {"alias": "user-a"}},
    ]));
    assert_eq!(d.all_persons(T).len(), 2);
    let w = d.warnings(T);
    assert_eq!(w[0]["type"], json!("cannot_merge_already_identified"));
    assert_eq!(w[0]["details"]["eventUuid"], json!("refused"));
    d.capture(T, json!([{"event": "$merge_dangerously", "distinct_id": "user-b", "properties": {"alias": "user-a"}}]));
    assert_eq!(d.all_persons(T).len(), 1);
    assert_eq!(
        dids(&d.person(T, "anon-a").unwrap()),
        vec!["user-b", "anon-b", "user-a", "anon-a"]
    );
}

#[test]
fn each_illegal_id_is_refused_with_a_warning() {
    let d = Daemon::start();
    let illegal = [
        "anonymous",
        "guest",
        "distinctid",
        "distinct_id",
        "id",
        "not_authenticated",
        "email",
        "undefined",
        "true",
        "false",
        "[object Object]",
        "NaN",
        "None",
        "none",
        "null",
        "0",
        "   ",
    ];
    let events: Vec<Value> = illegal
        .iter()
        .map(|id| json!({"event": "$identify", "distinct_id": "real-user", "properties": {"$anon_distinct_id": id}}))
        .collect();
    d.capture(T, Value::Array(events));
    let w = d.warnings(T);
    assert_eq!(w.len(), illegal.len());
    assert!(w
        .iter()
        .all(|w| w["type"] == json!("cannot_merge_with_illegal_distinct_id")));
    let p = d.person(T, "real-user").unwrap();
    assert_eq!(dids(&p), vec!["real-user"]);
    assert_eq!(p["is_identified"], json!(false));
}

#[test]
fn the_persons_list_pages_in_creation_order() {
    let d = Daemon::start();
    let events: Vec<Value> = (0..25)
        .map(|i| json!({"event": "e", "distinct_id": format!("p{i:02}")}))
        .collect();
    d.capture(T, Value::Array(events));
    let mut seen = Vec::new();
    let mut path = format!("/api/projects/{T}/persons/?limit=10");
    loop {
        let j = d.get(&path).json();
        seen.extend(
            j["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| dids(p)[0].clone()),
        );
        match j["next"].as_str() {
            Some(n) => path = crate::support::path_of_url(n),
            None => break,
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(seen, want);
}

#[test]
fn unknown_projects_and_persons_are_404() {
    let d = Daemon::start();
    assert_eq!(
        d.get("/api/projects/phc_nope/persons/?distinct_id=x")
            .status,
        404
    );
    assert_eq!(
        d.get("/api/projects/phc_nope/persons/?distinct_id=x")
            .json(),
        json!({"detail": "project not found"})
    );
    d.capture(T, json!([{"event": "e", "distinct_id": "x"}]));
    let r = d.get(&format!(
        "/api/projects/{T}/persons/00000000-0000-0000-0000-000000000000/"
    ));
    assert_eq!(r.status, 404);
    let project = d.get(&format!("/api/projects/{T}/")).json();
    assert_eq!(project["token"], json!(T));
    let by_id = d.get(&format!("/api/projects/{}/", project["id"])).json();
    assert_eq!(by_id["token"], json!(T));
    let p = d.person(T, "x").unwrap();
    let again = d
        .get(&format!(
            "/api/projects/{}/persons/{}/",
            project["id"],
            p["uuid"].as_str().unwrap()
        ))
        .json();
    assert_eq!(again, p);
}

#[test]
fn projects_are_isolated_from_each_other() {
    let d = Daemon::start();
    d.capture("phc_one", json!([{"event": "$identify", "distinct_id": "u", "properties": {"$anon_distinct_id": "a"}, "$set": {"p": 1}}]));
    d.capture("phc_two", json!([{"event": "e", "distinct_id": "a"}]));
    assert_eq!(dids(&d.person("phc_two", "a").unwrap()), vec!["a"]);
    assert!(d.person("phc_two", "u").is_none());
    assert_eq!(
        d.person("phc_one", "a").unwrap()["properties"]["p"],
        json!(1)
    );
}

/// `next` names the host the request named (`Host`), never one a header of a proxy claims
/// (the daemon is no proxy's), and without a `Host` (HTTP/1.0) it is the path alone rather
/// than an address nothing listens on.
#[test]
fn next_is_on_the_host_asked_or_a_path() {
    use std::io::{Read, Write};
    let d = Daemon::start();
    d.capture(
        T,
        json!([{"event": "e", "distinct_id": "a"}, {"event": "e", "distinct_id": "b"}]),
    );
    let path = format!("/api/projects/{T}/persons/?limit=1");
    let forwarded = [
        ("x-forwarded-host", "elsewhere.example"),
        ("x-forwarded-proto", "https"),
    ];
    let r = d.request("GET", &path, &forwarded, Vec::new());
    let next = r.json()["next"].as_str().unwrap().to_string();
    assert!(next.starts_with("http://localhost/api/projects/"), "{next}");

    let mut c = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let j: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    let next = j["next"].as_str().unwrap();
    assert!(next.starts_with("/api/projects/"), "{next}");
}

/// A page that ends exactly where the list does has no `next`: a link to an empty page would
/// cost a client a request, and tell it that more was there.
#[test]
fn a_page_that_ends_the_list_has_no_next() {
    let d = Daemon::start();
    let events: Vec<Value> = (0..20)
        .map(|i| json!({"event": "e", "distinct_id": format!("p{i:02}")}))
        .collect();
    d.capture(T, Value::Array(events));
    let first = d
        .get(&format!("/api/projects/{T}/persons/?limit=10"))
        .json();
    let next = crate::support::path_of_url(first["next"].as_str().expect("a second page"));
    let second = d.get(&next).json();
    assert_eq!(second["results"].as_array().unwrap().len(), 10);
    assert_eq!(second["next"], Value::Null, "{second}");
    let all = d
        .get(&format!("/api/projects/{T}/persons/?limit=20"))
        .json();
    assert_eq!(all["next"], Value::Null);

    let mine: Vec<Value> = (0..4)
        .map(|i| json!({"event": format!("e{i}"), "distinct_id": "p00"}))
        .collect();
    d.capture(T, Value::Array(mine));
    // p00 now has 5 events: pages of 3 and 2, then nothing more.
    let first = d
        .get(&format!(
            "/api/projects/{T}/events/?distinct_id=p00&limit=3"
        ))
        .json();
    let next = crate::support::path_of_url(first["next"].as_str().expect("a second page"));
    let second = d.get(&next).json();
    assert_eq!(second["results"].as_array().unwrap().len(), 2);
    assert_eq!(second["next"], Value::Null, "{second}");
    let exact = d
        .get(&format!(
            "/api/projects/{T}/events/?distinct_id=p00&limit=5"
        ))
        .json();
    assert_eq!(exact["results"].as_array().unwrap().len(), 5);
    assert_eq!(exact["next"], Value::Null, "{exact}");
}

/// `limit=0` asks for no page at all: refused, naming the parameter, on every list.
#[test]
fn a_zero_limit_is_refused_on_every_list() {
    let d = Daemon::start();
    d.capture(T, json!([{"event": "e", "distinct_id": "a"}]));
    for list in [
        "persons/?limit=0",
        "events/?distinct_id=a&limit=0",
        "ingestion_warnings/?limit=0",
        "buffer/?limit=0",
    ] {
        let r = d.get(&format!("/api/projects/{T}/{list}"));
        assert_eq!(r.status, 400, "{list}");
        let j = r.json();
        assert_eq!(j["code"], "invalid_query", "{list}: {j}");
        assert!(
            j["detail"]
                .as_str()
                .unwrap()
                .contains("limit takes a whole number (1 or more)"),
            "{list}: {j}"
        );
    }
    let r = d.get(&format!("/api/projects/{T}/persons/?limit=1"));
    assert_eq!(r.status, 200);
}

/// `/api/` paths answer with or without their trailing slash, as PostHog's do; a known path
/// asked with another method is 405 naming the methods it answers, not 404.
#[test]
fn api_paths_take_no_trailing_slash_and_a_wrong_method_is_405() {
    let d = Daemon::start();
    d.capture(T, json!([{"event": "e", "distinct_id": "a"}]));
    let p = d.person(T, "a").unwrap();
    let uuid = p["uuid"].as_str().unwrap();
    assert_eq!(
        d.get("/api/projects").json()["results"][0]["token"],
        json!(T)
    );
    assert_eq!(
        d.get(&format!("/api/projects/{T}")).json()["token"],
        json!(T)
    );
    let by_did = d
        .get(&format!("/api/projects/{T}/persons?distinct_id=a"))
        .json();
    assert_eq!(by_did["results"][0], p);
    assert_eq!(
        d.get(&format!("/api/projects/{T}/persons/{uuid}")).json(),
        p
    );
    let history = d.get(&format!("/api/projects/{T}/persons/{uuid}/history"));
    assert_eq!(history.status, 200);
    // A `next` link names the path with its slash.
    d.capture(T, json!([{"event": "e", "distinct_id": "b"}]));
    let page = d.get(&format!("/api/projects/{T}/persons?limit=1")).json();
    let next = page["next"].as_str().unwrap();
    assert!(
        next.contains(&format!("/api/projects/{T}/persons/?")),
        "{next}"
    );

    for (method, path, allow) in [
        ("DELETE", format!("/api/projects/{T}/persons/"), "GET, HEAD"),
        (
            "POST",
            format!("/api/projects/{T}/persons/{uuid}/"),
            "GET, HEAD, DELETE",
        ),
        ("PUT", format!("/api/projects/{T}"), "GET, HEAD, PATCH"),
        (
            "GET",
            format!("/api/projects/{T}/persons/{uuid}/split/"),
            "POST",
        ),
        ("GET", "/batch/".to_string(), "POST"),
        ("GET", "/i/v1/analytics/events".to_string(), "POST"),
        ("DELETE", "/flags/".to_string(), "GET, HEAD, POST"),
        ("POST", "/_health".to_string(), "GET, HEAD"),
    ] {
        let r = d.request(method, &path, &[], Vec::new());
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.json()["code"], "method_not_allowed", "{method} {path}");
        let header = r.headers.iter().find(|(k, _)| k == "allow");
        assert_eq!(
            header.map(|(_, v)| v.as_str()),
            Some(allow),
            "{method} {path}"
        );
    }
    // What is nowhere is still 404.
    assert_eq!(d.get("/api/nothing/").status, 404);
    assert_eq!(d.get("/nothing").status, 404);
}

#[test]
fn head_answers_every_get_route_with_its_headers_and_no_body() {
    let d = Daemon::start();
    d.capture(T, json!([{"event": "e", "distinct_id": "a"}]));
    let uuid = d.person(T, "a").unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let header = |r: &Response, name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    for path in [
        "/_health".to_string(),
        "/metrics".to_string(),
        format!("/api/projects/{T}/persons/"),
        format!("/api/projects/{T}/persons/{uuid}/"),
        format!("/api/projects/{T}/events/?distinct_id=a"),
        format!("/api/projects/{T}"),
    ] {
        let get = d.get(&path);
        let head = d.request("HEAD", &path, &[], Vec::new());
        assert_eq!(get.status, 200, "GET {path}");
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path}: {:?}", head.body);
        assert_eq!(
            header(&head, "content-type"),
            header(&get, "content-type"),
            "HEAD {path}"
        );
    }
    // HEAD of what does not exist says so as GET does; HEAD of a POST-only path is 405.
    let missing = format!("/api/projects/{T}/persons/00000000-0000-0000-0000-000000000000/");
    assert_eq!(d.request("HEAD", &missing, &[], Vec::new()).status, 404);
    let r = d.request("HEAD", "/batch/", &[], Vec::new());
    assert_eq!(r.status, 405);
    assert_eq!(header(&r, "allow").as_deref(), Some("POST"));
}
