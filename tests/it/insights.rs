//! Insights counted per person after merges, on the seed's onboarding flow: anonymous visitors,
//! some sign up (identify), some come back on a second device, and internal users who drop out
//! with `filter_test_accounts`.

use std::process::Command;

use serde_json::{json, Value};

use crate::support::{bin, Daemon};

const T: &str = "phc_insights";

/// 2026-01-01T00:00:00Z plus `min` minutes.
fn at(min: i64) -> String {
    let ms = 1_767_225_600_000 + min * 60_000;
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339()
}

fn ev(name: &str, did: &str, min: i64) -> Value {
    json!({"event": name, "distinct_id": did, "timestamp": at(min)})
}

fn pageview(anon: &str, min: i64) -> Value {
    json!({"event": "$pageview", "distinct_id": anon, "timestamp": at(min),
           "properties": {"$device_id": anon, "$current_url": "https://shop.example/"}})
}

fn identify(user: &str, anon: &str, email: &str, min: i64) -> Value {
    json!({"event": "$identify", "distinct_id": user, "timestamp": at(min),
           "properties": {"$anon_distinct_id": anon, "$set": {"email": email}}})
}

/// The flow, with what each visitor should count as (hand-computed below).
fn onboarding(d: &Daemon) {
    let events = json!([
        // A: converts fully on one device; the pageview is anonymous, the rest identified.
        pageview("anon-a", 0), identify("user-a", "anon-a", "a@hedgehogmail.com", 1),
        ev("signed_up", "user-a", 2), ev("created_project", "user-a", 3),
        // B: signs up on a laptop, creates the project from a phone visited anonymously first.
        pageview("anon-b", 0), identify("user-b", "anon-b", "b@hedgehogmail.com", 1),
        ev("signed_up", "user-b", 2),
        pageview("anon-b2", 30), identify("user-b", "anon-b2", "b@hedgehogmail.com", 31),
        ev("created_project", "anon-b2", 32),
        // C: only looks.
        pageview("anon-c", 5),
        // D: an internal user, gets to signed_up.
        pageview("anon-d", 0), identify("user-d", "anon-d", "dev@ourcompany.com", 1),
        ev("signed_up", "user-d", 2),
        // E: an internal user who converts fully.
        pageview("anon-e", 0), identify("user-e", "anon-e", "qa@OurCompany.com", 1),
        ev("signed_up", "user-e", 2), ev("created_project", "user-e", 3),
        // F: personless pageviews: counted under the distinct ID, twice from one ID.
        {"event": "$pageview", "distinct_id": "cookie-f", "timestamp": at(7), "properties": {"$process_person_profile": false}},
        {"event": "$pageview", "distinct_id": "cookie-f", "timestamp": at(8), "properties": {"$process_person_profile": false}},
        // G: signs up before any pageview: out of order, reaches step 1 only.
        ev("signed_up", "user-g", 0), pageview("user-g", 1),
        // H: signs up two days after the pageview: outside a one-day window.
        pageview("anon-h", 0), identify("user-h", "anon-h", "h@hedgehogmail.com", 1),
        ev("signed_up", "user-h", 2 * 24 * 60),
    ]);
    d.capture(T, events);
    let body = json!({"test_account_filters": [
        {"key": "email", "value": "@ourcompany.com", "operator": "not_icontains", "type": "person"}
    ]});
    let r = d.request(
        "PATCH",
        &format!("/api/projects/{T}/"),
        &[("content-type", "application/json")],
        serde_json::to_vec(&body).unwrap(),
    );
    assert_eq!(r.status, 200);
}

fn funnel(d: &Daemon, query: &str) -> Vec<u64> {
    funnel_counts(
        d,
        &format!("steps=$pageview,signed_up,created_project&window_secs=86400{query}"),
    )
}

/// Each step's count of the funnel `query` asks for.
fn funnel_counts(d: &Daemon, query: &str) -> Vec<u64> {
    let r = d.get(&format!("/api/projects/{T}/insights/funnel/?{query}"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["count"].as_u64().unwrap())
        .collect()
}

fn unique(d: &Daemon, query: &str) -> u64 {
    let r = d.get(&format!(
        "/api/projects/{T}/insights/unique_persons/?{query}"
    ));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["count"].as_u64().unwrap()
}

#[test]
fn the_onboarding_funnel_counts_persons_not_distinct_ids() {
    let d = Daemon::start();
    onboarding(&d);
    // $pageview: A B C D E F G H (B's two devices are one person) = 8;
    // signed_up after it within a day: A B D E = 4 (G out of order, H too late);
    // created_project after that: A B E = 3 (B's from the second device).
    assert_eq!(funnel(&d, ""), [8, 4, 3]);
    // Internal users D and E drop out.
    assert_eq!(funnel(&d, "&filter_test_accounts=true"), [6, 2, 2]);
    // With a week's window H converts too.
    let r = d.get(&format!(
        "/api/projects/{T}/insights/funnel/?steps=$pageview,signed_up&window_secs=604800"
    ));
    let steps = r.json()["results"].clone();
    assert_eq!(steps[1]["count"], json!(5));
    assert_eq!(steps[1]["conversion_rate"], json!(5.0 / 8.0));
}

#[test]
fn unique_persons_counts_each_person_once_after_merges() {
    let d = Daemon::start();
    onboarding(&d);
    assert_eq!(unique(&d, "event=$pageview"), 8);
    // The naive count: anon-a anon-b anon-b2 anon-c anon-d anon-e cookie-f user-g anon-h.
    assert_eq!(unique(&d, "event=$pageview&count_by=distinct_id"), 9);
    assert_eq!(unique(&d, "event=$pageview&filter_test_accounts=true"), 6);
    assert_eq!(unique(&d, "event=created_project"), 3);
    // Only the first ten minutes: H's late signed_up is out (A B D E G remain).
    let to = crate::support::enc(&at(10));
    assert_eq!(unique(&d, &format!("event=signed_up&date_to={to}")), 5);
    assert_eq!(unique(&d, "event=signed_up&date_from=2026-01-02"), 1);
    assert_eq!(unique(&d, "event=nothing_like_it"), 0);
    let r = d.get(&format!(
        "/api/projects/{T}/insights/unique_persons/?event=e&date_from=yesterday"
    ));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["attr"], json!("date_from"));
    let r = d.get(&format!(
        "/api/projects/{T}/insights/funnel/?steps=only_one"
    ));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["attr"], json!("steps"));
}

#[test]
fn the_persons_list_leaves_out_test_accounts_with_the_filter_on() {
    let d = Daemon::start();
    onboarding(&d);
    let emails = |query: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut path = format!("/api/projects/{T}/persons/?limit=2{query}");
        loop {
            let j = d.get(&path).json();
            for p in j["results"].as_array().unwrap() {
                out.push(p["properties"]["email"].as_str().unwrap_or("-").to_string());
            }
            match j["next"].as_str() {
                Some(n) => path = crate::support::path_of_url(n),
                None => return out,
            }
        }
    };
    let all = emails("");
    let kept = emails("&filter_test_accounts=true");
    assert_eq!(all.len(), 7, "{all:?}");
    assert_eq!(kept.len(), 5, "{kept:?}");
    assert!(kept
        .iter()
        .all(|e| !e.to_lowercase().contains("@ourcompany.com")));
    let r = d.get(&format!(
        "/api/projects/{T}/persons/?distinct_id=user-d&filter_test_accounts=true"
    ));
    assert_eq!(r.json()["results"], json!([]));
}

#[test]
fn deleting_a_person_with_its_events_removes_them_from_insights() {
    let d = Daemon::start();
    onboarding(&d);
    let a = d.person(T, "user-a").unwrap();
    let r = d.request(
        "DELETE",
        &format!(
            "/api/projects/{T}/persons/{}/?delete_events=true",
            a["uuid"].as_str().unwrap()
        ),
        &[],
        Vec::new(),
    );
    assert_eq!(r.status, 204);
    assert_eq!(unique(&d, "event=created_project"), 2);
    assert_eq!(funnel(&d, ""), [7, 3, 2]);
}

/// A relative date whose unit is a character of more than one byte is a bad date (400), not
/// a panic that drops the connection.
#[test]
fn a_relative_date_with_a_multibyte_unit_is_a_bad_request() {
    let d = Daemon::start();
    onboarding(&d);
    for q in [
        "unique_persons/?event=x&date_from=-%C3%A9",
        "funnel/?steps=a,b&date_to=-1%C3%A9",
        // Further back than a date can be written: refused, not echoed as 1970.
        "unique_persons/?event=x&date_to=-9999999999999w",
    ] {
        let r = d.get(&format!("/api/projects/{T}/insights/{q}"));
        assert_eq!(r.status, 400, "{q}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["code"], "invalid_input", "{q}");
    }
}

/// A funnel step at the same millisecond as the step before it converts, whichever arrived
/// first (PostHog compares step times with `<=`).
#[test]
fn a_funnel_step_at_the_same_time_as_the_one_before_converts() {
    let d = Daemon::start();
    let t = at(5);
    d.capture(
        T,
        json!([
            {"event": "signed_up", "distinct_id": "same-ms", "timestamp": t},
            {"event": "$pageview", "distinct_id": "same-ms", "timestamp": t},
        ]),
    );
    let counts = funnel_counts(&d, "steps=$pageview,signed_up&window_secs=60");
    assert_eq!(counts, [1, 1]);
}

#[test]
fn the_cli_prints_insights_and_settings_as_tables() {
    let d = Daemon::start();
    onboarding(&d);
    let run = |args: &[&str]| {
        let out = Command::new(bin())
            .arg(args[0])
            .arg("--socket")
            .arg(&d.socket)
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(&[
        "insights",
        "funnel",
        T,
        "--steps",
        "$pageview,signed_up,created_project",
        "--window-secs",
        "86400",
        "--filter-test-accounts",
    ]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[1], ["1", "$pageview", "6", "100.0%", "100.0%"]);
    assert_eq!(rows[3], ["3", "created_project", "2", "33.3%", "100.0%"]);
    // Every row as wide as the header: the counts right-aligned under it.
    let widths: Vec<usize> = table.lines().map(|l| l.chars().count()).collect();
    assert!(widths.iter().all(|w| *w == widths[0]), "{table}");
    // A relative date, which starts with a hyphen, is a value, not a flag.
    let table = run(&[
        "insights",
        "unique",
        T,
        "--event",
        "$pageview",
        "--date-from",
        "-3650d",
    ]);
    assert!(table.lines().nth(1).unwrap().ends_with(" 8"), "{table}");
    assert_eq!(
        table.lines().next().unwrap().len(),
        table.lines().nth(1).unwrap().len(),
        "{table}"
    );
    let table = run(&[
        "project",
        "set",
        T,
        "--buffer",
        "on",
        "--buffer-window-secs",
        "90",
        "--merge-limit",
        "4",
    ]);
    assert!(table.contains("on, 90 s window"), "{table}");
    assert!(table.contains("not_icontains"), "{table}");
    let table = run(&["project", "show", T]);
    assert!(table.contains("merge limit           4"), "{table}");
    let list = run(&["project", "list"]);
    let row = list.lines().find(|l| l.contains(T));
    assert!(row.is_some_and(|r| r.starts_with('1')), "{list}");
    assert!(list.starts_with("ID"), "{list}");
    // The columns are apart, and each row's token sits under TOKEN (the id used to run into it).
    let (header, row) = (list.lines().next().unwrap(), row.unwrap());
    let cells: Vec<&str> = row.split_whitespace().take(2).collect();
    assert_eq!(cells, ["1", T], "{list}");
    assert_eq!(row.find(T), header.find("TOKEN"), "{list}");
}

/// An event name at two steps: the second `other` in the same millisecond as `purchase`
/// counts as the last step, whatever arrived first (helper-36's case).
#[test]
fn a_name_at_two_steps_counts_at_the_later_one_in_the_same_millisecond() {
    let d = Daemon::start();
    let at = |name: &str, did: &str, ts: &str| json!({"event": name, "distinct_id": did, "timestamp": ts});
    d.capture(
        T,
        json!([
            at("other", "f1", "2026-03-01T00:00:00.000Z"),
            at("purchase", "f1", "2026-03-01T00:00:05.000Z"),
            at("other", "f1", "2026-03-01T00:00:05.000Z"),
            at("other", "f2", "2026-03-01T00:00:00.000Z"),
            at("purchase", "f2", "2026-03-01T00:00:05.000Z"),
            at("other", "f2", "2026-03-01T00:00:05.001Z"),
        ]),
    );
    let counts = funnel_counts(&d, "steps=other,purchase,other");
    assert_eq!(counts, [2, 2, 2]);
}

/// A query the daemon refuses is explained in the CLI's terms: the flag, not the query field.
#[test]
fn the_cli_names_its_flags_when_the_daemon_refuses_a_query() {
    let d = Daemon::start();
    onboarding(&d);
    let refused = |args: &[&str]| {
        let out = Command::new(bin())
            .args(["insights", "--socket"])
            .arg(&d.socket)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let err = refused(&["funnel", T, "--steps", "$pageview"]);
    assert!(
        err.starts_with("idstitch: --steps: give 2 to 20")
            && err.contains("e.g. --steps $pageview,signed_up"),
        "{err}"
    );
    let err = refused(&["funnel", T, "--steps", "a,b", "--window-secs", "0"]);
    assert!(err.starts_with("idstitch: --window-secs: "), "{err}");
    let err = refused(&["unique", T, "--event", "e", "--date-to", "yesterday"]);
    assert!(
        err.starts_with("idstitch: --date-to: must be a date"),
        "{err}"
    );
    assert!(!err.contains("date_to"), "{err}");
}

/// Enough visitors (21,000 persons, 28,000 distinct IDs, 500 personless IDs) that the queries
/// take their large-query paths: sequential reads of the project's IDs and persons, spread over
/// the cores, and the test-account verdict read from the properties' text. They must count
/// exactly what the point-read paths of the small flow above count.
#[test]
fn large_queries_read_ids_and_persons_sequentially_and_count_the_same() {
    let d = Daemon::start();
    let mut events = Vec::new();
    for i in 0..21_000i64 {
        let anon = format!("anon-{i}");
        events.push(pageview(&anon, i % 1000));
        if i % 3 == 0 {
            let user = format!("user-{i}");
            let domain = if i % 30 == 0 {
                "OurCompany.com"
            } else {
                "hedgehogmail.com"
            };
            events.push(identify(&user, &anon, &format!("u{i}@{domain}"), i % 1000));
            events.push(ev("signed_up", &user, i % 1000 + 1));
        }
    }
    for j in 0..500 {
        events.push(
            json!({"event": "$pageview", "distinct_id": format!("cookie-{j}"),
            "timestamp": at(j % 1000), "properties": {"$process_person_profile": false}}),
        );
    }
    for batch in events.chunks(2000) {
        d.capture(T, Value::Array(batch.to_vec()));
    }
    let set_filters = |filters: Value| {
        let body = json!({ "test_account_filters": filters });
        let r = d.request(
            "PATCH",
            &format!("/api/projects/{T}/"),
            &[("content-type", "application/json")],
            serde_json::to_vec(&body).unwrap(),
        );
        assert_eq!(r.status, 200);
    };
    let two_steps = |query: &str| -> Vec<u64> {
        let r = d.get(&format!(
            "/api/projects/{T}/insights/funnel/?steps=$pageview,signed_up&window_secs=86400{query}"
        ));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["count"].as_u64().unwrap())
            .collect()
    };
    // 7,000 identified visitors (every third), 700 of them internal (every thirtieth).
    set_filters(json!([
        {"key": "email", "value": "@ourcompany.com", "operator": "not_icontains", "type": "person"}
    ]));
    assert_eq!(unique(&d, "event=$pageview"), 21_500);
    assert_eq!(unique(&d, "event=$pageview&count_by=distinct_id"), 21_500);
    assert_eq!(
        unique(&d, "event=$pageview&filter_test_accounts=true"),
        20_800
    );
    assert_eq!(
        unique(
            &d,
            "event=$pageview&count_by=distinct_id&filter_test_accounts=true"
        ),
        20_800
    );
    assert_eq!(unique(&d, "event=signed_up"), 7_000);
    assert_eq!(two_steps(""), [21_500, 7_000]);
    assert_eq!(two_steps("&filter_test_accounts=true"), [20_800, 6_300]);
    // A filter that a person without properties fails: only those with an email are kept,
    // personless IDs and anonymous persons are not.
    set_filters(json!([{"key": "email", "operator": "is_set", "type": "person"}]));
    assert_eq!(
        unique(&d, "event=$pageview&filter_test_accounts=true"),
        7_000
    );
    assert_eq!(two_steps("&filter_test_accounts=true"), [7_000, 7_000]);
}
