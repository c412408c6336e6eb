//! The sequential model against the real daemon on RocksDB, with SIGKILL restarts mixed into
//! the streams (issue 2: "random streams ... with restarts of the engine mixed in").

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Value};

use crate::model::{ops, run, ComparablePerson, Model, Op, Target};
use crate::support::Daemon;

const T: &str = "phc_model";

/// The daemon as a [`Target`]: events are sent in batches (order kept), a restart is SIGKILL then
/// start, which must lose nothing that was acknowledged.
struct DaemonTarget {
    d: Daemon,
    pending: Vec<Value>,
    batch: usize,
}

impl DaemonTarget {
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let events = std::mem::take(&mut self.pending);
            self.d.capture(T, Value::Array(events));
        }
    }
}

impl Target for DaemonTarget {
    fn send(&mut self, ev: &Value) {
        self.pending.push(ev.clone());
        if self.pending.len() >= self.batch {
            self.flush();
        }
    }

    fn restart(&mut self) {
        self.flush();
        self.d.restart();
    }

    fn persons(&self) -> Vec<ComparablePerson> {
        self.d
            .all_persons(T)
            .iter()
            .map(|p| ComparablePerson {
                uuid: field(p, "uuid", Value::as_str).to_string(),
                distinct_ids: field(p, "distinct_ids", Value::as_array)
                    .iter()
                    .map(|id| id.as_str().expect("a distinct ID is a string").to_string())
                    .collect(),
                properties: Value::Object(field(p, "properties", Value::as_object).clone()),
                is_identified: field(p, "is_identified", Value::as_bool),
                version: field(p, "version", Value::as_u64),
                created_at_ms: 0,
            })
            .collect()
    }

    fn warning_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        // No event at all means no project yet (404): no warnings either.
        let r = self
            .d
            .get(&format!("/api/projects/{T}/ingestion_warnings/"));
        if r.status == 404 {
            return counts;
        }
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let body = r.json();
        for w in field(&body, "results", Value::as_array) {
            *counts
                .entry(field(w, "type", Value::as_str).to_string())
                .or_default() += 1;
        }
        counts
    }
}

/// Field `name` of a response object, as `read` takes it: a missing field or one of another
/// type fails the test (read as a default, it would compare equal to an unidentified or
/// unchanged person).
fn field<'v, T>(object: &'v Value, name: &str, read: impl FnOnce(&'v Value) -> Option<T>) -> T {
    let value = object
        .get(name)
        .unwrap_or_else(|| panic!("the response has no `{name}`: {object}"));
    read(value).unwrap_or_else(|| panic!("`{name}` is {value}, of another type: {object}"))
}

/// Persons without `created_at` (ingestion time differs between the model's fixed clock and the
/// daemon's), keyed by their sorted distinct IDs, plus the creation order.
fn comparable(
    ps: Vec<ComparablePerson>,
) -> (BTreeMap<Vec<String>, ComparablePerson>, Vec<Vec<String>>) {
    let order = ps.iter().map(|p| p.distinct_ids.clone()).collect();
    let map = ps
        .into_iter()
        .map(|mut p| {
            p.created_at_ms = 0;
            let mut ids = p.distinct_ids.clone();
            ids.sort();
            (ids, p)
        })
        .collect();
    (map, order)
}

fn check(ops: &[Op], batch: usize) -> Result<(), TestCaseError> {
    let mut model = Model::new(None);
    run(&mut model, ops);
    let mut target = DaemonTarget {
        d: Daemon::start(),
        pending: Vec::new(),
        batch,
    };
    run(&mut target, ops);
    target.flush();
    let (want, want_order) = comparable(model.persons());
    let (got, got_order) = comparable(target.persons());
    prop_assert_eq!(&want, &got, "persons differ (left: model, right: daemon)");
    prop_assert_eq!(want_order, got_order, "creation order differs");
    prop_assert_eq!(
        model.warning_counts(),
        target.warning_counts(),
        "warning counts differ"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn the_daemon_matches_the_sequential_model_across_sigkill_restarts(ops in ops(60), batch in 1usize..25) {
        check(&ops, batch)?;
    }
}

#[test]
fn a_fixed_stream_gives_the_same_persons_however_it_is_batched() {
    let stream: Vec<Op> = (0..40)
        .map(|i| {
            Op::Send(json!({"event": if i % 3 == 0 { "$identify" } else { "e" }, "distinct_id": format!("u{}", i % 4), "uuid": format!("fixed-{i}"),
                "properties": {"$anon_distinct_id": format!("a{}", i % 6)}, "$set": {"k": i % 5}}))
        })
        .collect();
    let mut results = Vec::new();
    for batch in [1, 7, 40] {
        let mut t = DaemonTarget {
            d: Daemon::start(),
            pending: Vec::new(),
            batch,
        };
        run(&mut t, &stream);
        t.flush();
        results.push(
            t.persons()
                .into_iter()
                .map(|p| {
                    (
                        p.uuid,
                        p.distinct_ids,
                        p.properties,
                        p.is_identified,
                        p.version,
                    )
                })
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}
