//! Project isolation, as a property: random sequences of API calls made with project A's token
//! or numeric id (captures, reads of persons, events, warnings and history, splits, deletes,
//! aimed at A's persons or at B's) never change project B (its persons, events, history and
//! warnings are identical after every call) and never read B (no answer made for A holds a B
//! person uuid, a B event uuid or a distinct ID that only B has). B shares some distinct IDs
//! with A on purpose: the same ID in two projects must be two persons.

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

use crate::support::{enc, Daemon};

const A: &str = "phc_iso_a";
const B: &str = "phc_iso_b";

/// Distinct IDs A may use; the `shared-*` ones are B's too.
const A_IDS: [&str; 5] = ["p1", "p2", "p3", "shared-1", "shared-2"];

/// Distinct IDs, event uuids and the like that only B ever has.
const B_ONLY: [&str; 2] = ["b-only-", "b-ev-"];

static EVENT: AtomicUsize = AtomicUsize::new(0);

/// One event A sends (indices into `A_IDS`).
#[derive(Clone, Debug)]
enum Ev {
    View(usize),
    Identify(usize, usize),
    Alias(usize, usize),
    Merge(usize, usize),
    Set(usize, u8),
    Unset(usize),
    Personless(usize),
    IllegalAnon(usize),
}

/// Whose person an operation aims at (an index into that project's persons).
#[derive(Clone, Debug)]
enum Who {
    A(usize),
    B(usize),
}

/// One API call made with A's token or (`by_id`) A's numeric id.
#[derive(Clone, Debug)]
enum Op {
    Capture {
        events: Vec<Ev>,
        token_in_event: bool,
    },
    Persons {
        by_id: bool,
        did: Option<usize>,
    },
    Person {
        by_id: bool,
        who: Who,
    },
    EventsOfId {
        by_id: bool,
        did: usize,
    },
    EventsOfPerson {
        by_id: bool,
        who: Who,
    },
    Warnings {
        by_id: bool,
    },
    History {
        by_id: bool,
        who: Who,
    },
    Split {
        by_id: bool,
        who: Who,
    },
    Delete {
        by_id: bool,
        who: Who,
        events: bool,
    },
}

fn id() -> impl Strategy<Value = usize> {
    0..A_IDS.len()
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        id().prop_map(Ev::View),
        (id(), id()).prop_map(|(a, b)| Ev::Identify(a, b)),
        (id(), id()).prop_map(|(a, b)| Ev::Alias(a, b)),
        (id(), id()).prop_map(|(a, b)| Ev::Merge(a, b)),
        (id(), any::<u8>()).prop_map(|(a, v)| Ev::Set(a, v)),
        id().prop_map(Ev::Unset),
        id().prop_map(Ev::Personless),
        id().prop_map(Ev::IllegalAnon),
    ]
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![(0..8usize).prop_map(Who::A), (0..8usize).prop_map(Who::B)]
}

fn op() -> impl Strategy<Value = Op> {
    let by_id = any::<bool>;
    prop_oneof![
        3 => (prop::collection::vec(ev(), 1..4), any::<bool>())
            .prop_map(|(events, token_in_event)| Op::Capture { events, token_in_event }),
        1 => (by_id(), prop::option::of(id())).prop_map(|(by_id, did)| Op::Persons { by_id, did }),
        1 => (by_id(), who()).prop_map(|(by_id, who)| Op::Person { by_id, who }),
        1 => (by_id(), id()).prop_map(|(by_id, did)| Op::EventsOfId { by_id, did }),
        1 => (by_id(), who()).prop_map(|(by_id, who)| Op::EventsOfPerson { by_id, who }),
        1 => by_id().prop_map(|by_id| Op::Warnings { by_id }),
        1 => (by_id(), who()).prop_map(|(by_id, who)| Op::History { by_id, who }),
        1 => (by_id(), who()).prop_map(|(by_id, who)| Op::Split { by_id, who }),
        1 => (by_id(), who(), any::<bool>())
            .prop_map(|(by_id, who, events)| Op::Delete { by_id, who, events }),
    ]
}

/// The JSON of one event A sends.
fn event(e: &Ev, token_in_event: bool) -> Value {
    let n = EVENT.fetch_add(1, Ordering::Relaxed);
    let (name, did, mut props, top) = match *e {
        Ev::View(a) => ("$pageview", a, json!({}), json!({})),
        Ev::Identify(a, b) => (
            "$identify",
            a,
            json!({"$anon_distinct_id": A_IDS[b]}),
            json!({"$set": {"email": format!("{a}@a")}}),
        ),
        Ev::Alias(a, b) => ("$create_alias", a, json!({"alias": A_IDS[b]}), json!({})),
        Ev::Merge(a, b) => (
            "$merge_dangerously",
            a,
            json!({"alias": A_IDS[b]}),
            json!({}),
        ),
        Ev::Set(a, v) => (
            "$set",
            a,
            json!({"$set": {"v": v}, "$set_once": {"first": v}}),
            json!({}),
        ),
        Ev::Unset(a) => ("$set", a, json!({"$unset": ["v"]}), json!({})),
        Ev::Personless(a) => (
            "seen",
            a,
            json!({"$process_person_profile": false}),
            json!({}),
        ),
        Ev::IllegalAnon(a) => (
            "$identify",
            a,
            json!({"$anon_distinct_id": "null"}),
            json!({}),
        ),
    };
    if token_in_event {
        props["token"] = json!(A);
    }
    let mut ev = json!({"event": name, "distinct_id": A_IDS[did], "uuid": format!("a-ev-{n}"), "properties": props});
    if let (Some(ev), Some(top)) = (ev.as_object_mut(), top.as_object()) {
        ev.extend(top.clone());
    }
    ev
}

/// B's data, fixed for the whole test.
fn populate_b(d: &Daemon) {
    let ev = |n: usize, name: &str, did: &str, props: Value| json!({"event": name, "distinct_id": did, "uuid": format!("b-ev-{n}"), "properties": props});
    d.capture(
        B,
        json!([
            ev(
                0,
                "$pageview",
                "b-only-1",
                json!({"$current_url": "https://b.example/"})
            ),
            ev(
                1,
                "$identify",
                "shared-1",
                json!({"$anon_distinct_id": "b-only-1", "$set": {"plan": "b"}})
            ),
            ev(
                2,
                "$pageview",
                "shared-2",
                json!({"$set_once": {"first": "b"}})
            ),
            ev(3, "$create_alias", "shared-2", json!({"alias": "b-only-2"})),
            ev(4, "$identify", "p1", json!({"$anon_distinct_id": "null"})),
            ev(
                5,
                "seen",
                "b-only-3",
                json!({"$process_person_profile": false})
            ),
        ]),
    );
}

/// Everything B holds, as read with B's token.
fn snapshot_b(d: &Daemon) -> Value {
    let mut persons = d.all_persons(B);
    persons.sort_by_key(|p| p["uuid"].as_str().unwrap_or_default().to_string());
    let mut events = Vec::new();
    let mut history = Vec::new();
    for p in &persons {
        let uuid = p["uuid"].as_str().unwrap_or_default();
        events.push(d.events_of_person(B, uuid));
        history.push(
            d.get(&format!("/api/projects/{B}/persons/{uuid}/history/"))
                .json(),
        );
    }
    let personless = d
        .get(&format!("/api/projects/{B}/events/?distinct_id=b-only-3"))
        .json();
    json!({"persons": persons, "events": events, "history": history,
           "personless": personless, "warnings": d.warnings(B)})
}

fn uuids(persons: &[Value]) -> Vec<String> {
    persons
        .iter()
        .filter_map(|p| p["uuid"].as_str().map(str::to_string))
        .collect()
}

/// The uuid `who` names: one of A's current persons, or one of B's.
fn resolve(who: &Who, a: &[String], b: &[String]) -> (String, bool) {
    let nil = "00000000-0000-4000-8000-000000000000".to_string();
    match who {
        Who::A(_) if a.is_empty() => (nil, false),
        Who::A(i) => (a[i % a.len()].clone(), false),
        Who::B(i) => (b[i % b.len()].clone(), true),
    }
}

/// Run one operation; returns (status, body text, whether it aimed at a B person).
fn run(d: &Daemon, op: &Op, a_id: &str, b_uuids: &[String]) -> (u16, String, bool) {
    let a_uuids = uuids(&d.all_persons(A));
    let project = |by_id: bool| {
        if by_id {
            a_id.to_string()
        } else {
            A.to_string()
        }
    };
    let base = |by_id: bool| format!("/api/projects/{}", project(by_id));
    let get = |path: String| {
        let r = d.get(&path);
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };
    let (status, body, aimed_at_b) = match op {
        Op::Capture {
            events,
            token_in_event,
        } => {
            let batch: Vec<Value> = events.iter().map(|e| event(e, *token_in_event)).collect();
            let body = match token_in_event {
                true => json!(batch),
                false => json!({"api_key": A, "batch": batch}),
            };
            let r = d.post("/batch/", &body);
            (
                r.status,
                String::from_utf8_lossy(&r.body).into_owned(),
                false,
            )
        }
        Op::Persons { by_id, did } => {
            let q = did.map_or("limit=500".into(), |i| {
                format!("distinct_id={}", enc(A_IDS[i]))
            });
            let (s, b) = get(format!("{}/persons/?{q}", base(*by_id)));
            (s, b, false)
        }
        Op::Person { by_id, who } => {
            let (uuid, at_b) = resolve(who, &a_uuids, b_uuids);
            let (s, b) = get(format!("{}/persons/{uuid}/", base(*by_id)));
            (s, b, at_b)
        }
        Op::EventsOfId { by_id, did } => {
            let (s, b) = get(format!(
                "{}/events/?distinct_id={}",
                base(*by_id),
                enc(A_IDS[*did])
            ));
            (s, b, false)
        }
        Op::EventsOfPerson { by_id, who } => {
            let (uuid, at_b) = resolve(who, &a_uuids, b_uuids);
            let (s, b) = get(format!("{}/events/?person_id={uuid}", base(*by_id)));
            if at_b {
                let results = serde_json::from_str::<Value>(&b).unwrap_or_default();
                assert_eq!(results["results"], json!([]), "A read B's events: {b}");
            }
            (s, b, false)
        }
        Op::Warnings { by_id } => {
            let (s, b) = get(format!("{}/ingestion_warnings/", base(*by_id)));
            (s, b, false)
        }
        Op::History { by_id, who } => {
            let (uuid, at_b) = resolve(who, &a_uuids, b_uuids);
            let (s, b) = get(format!("{}/persons/{uuid}/history/", base(*by_id)));
            (s, b, at_b)
        }
        Op::Split { by_id, who } => {
            let (uuid, at_b) = resolve(who, &a_uuids, b_uuids);
            let r = d.post(
                &format!("{}/persons/{uuid}/split/", base(*by_id)),
                &json!({}),
            );
            (
                r.status,
                String::from_utf8_lossy(&r.body).into_owned(),
                at_b,
            )
        }
        Op::Delete { by_id, who, events } => {
            let (uuid, at_b) = resolve(who, &a_uuids, b_uuids);
            let path = format!("{}/persons/{uuid}/?delete_events={events}", base(*by_id));
            let r = d.request("DELETE", &path, &[], Vec::new());
            (
                r.status,
                String::from_utf8_lossy(&r.body).into_owned(),
                at_b,
            )
        }
    };
    (status, body, aimed_at_b)
}

#[test]
fn nothing_done_with_project_a_reads_or_changes_project_b() {
    let d = Daemon::start();
    populate_b(&d);
    d.capture(
        A,
        json!([{"event": "$pageview", "distinct_id": "p1", "uuid": "a-ev-first"}]),
    );
    let a_id = d.get(&format!("/api/projects/{A}/")).json()["id"].to_string();
    let b_id = d.get(&format!("/api/projects/{B}/")).json()["id"].to_string();
    assert_ne!(a_id, b_id);
    let before = snapshot_b(&d);
    let b_uuids = uuids(&d.all_persons(B));
    assert_eq!(b_uuids.len(), 3, "B's persons: {before}");
    let config = Config {
        cases: 20,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let ops = prop::collection::vec(op(), 1..8);
    let (ran, at_b) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let result = runner.run(&ops, |ops| {
        for op in &ops {
            let (status, body, aimed_at_b) = run(&d, op, &a_id, &b_uuids);
            ran.fetch_add(1, Ordering::Relaxed);
            at_b.fetch_add(usize::from(aimed_at_b), Ordering::Relaxed);
            prop_assert!(status < 500, "{op:?} answered {status}: {body}");
            if aimed_at_b {
                prop_assert_eq!(status, 404, "{:?} reached B's person: {}", op, body);
            }
            for b_thing in B_ONLY.iter().map(|s| s.to_string()).chain(b_uuids.clone()) {
                prop_assert!(
                    !body.contains(&b_thing),
                    "{op:?} read B's {b_thing}: {body}"
                );
            }
            let after = snapshot_b(&d);
            prop_assert!(after == before, "{op:?} changed B:\n{before}\n{after}");
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (ran, at_b) = (ran.into_inner(), at_b.into_inner());
    assert!(ran >= 20 && at_b > 0, "{ran} operations, {at_b} aimed at B");
}
