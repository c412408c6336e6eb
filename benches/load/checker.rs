//! The checker: after the load, the daemon must hold exactly the persons the workload implies.
//!
//! - every person of the project (paged listing), compared in full with the expected one found
//!   by uuid (UUIDv5 of `"<project id>:<user id>"`, spec §6): exact `distinct_ids`,
//!   `is_identified`, every explicitly set property (or its absence), `$creator_event_uuid`;
//!   no person more, none less;
//! - a sample of distinct-ID lookups (`?distinct_id=`): each ID of a sampled person finds that
//!   person, and sampled personless IDs find none;
//! - ingestion warnings: one `cannot_merge_with_illegal_distinct_id` per illegal sign-up, no
//!   other kind;
//! - counters (when the daemon served nothing else): accepted, duplicate and rejected events.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context};
use idstitch::cli::client::Conn;
use serde_json::Value;

use crate::daemon::Target;
use crate::workload::ExpectedPerson;

/// Namespace of person uuids (spec §6).
const PERSON_NAMESPACE: &str = "932979b4-65c3-4424-8467-0b66ec27bc22";

/// One difference between what the workload implies and what the daemon answered.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Mismatch {
    /// What was compared (the request, and the person or field).
    pub what: String,
    /// The expected value.
    pub expected: String,
    /// The daemon's value.
    pub got: String,
}

/// What the checker did and found.
#[derive(Debug, Default, serde::Serialize)]
pub struct CheckOutcome {
    /// Persons the workload implies.
    pub persons_expected: usize,
    /// Persons the daemon listed.
    pub persons_found: usize,
    /// Persons compared in full.
    pub persons_compared: usize,
    /// `?distinct_id=` lookups made.
    pub lookups: usize,
    /// Every difference found.
    pub mismatches: Vec<Mismatch>,
}

/// What the checker needs to know about the run.
pub struct Expectations<'a> {
    /// The project token.
    pub token: &'a str,
    /// Every person the workload implies.
    pub persons: &'a [ExpectedPerson],
    /// Distinct IDs that must have no person.
    pub personless_ids: &'a [String],
    /// Illegal sign-ups (one warning each).
    pub illegal_identifies: u64,
    /// Events sent, duplicates included.
    pub events: u64,
    /// Duplicate deliveries sent.
    pub duplicates: u64,
    /// How many persons (and as many personless IDs) to look up by distinct ID.
    pub sample: usize,
    /// Counter deltas over the run, when nobody else was feeding the daemon.
    pub counters: Option<HashMap<String, f64>>,
}

/// Percent-encode a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET a JSON answer that must be 200.
async fn get_json(target: &Target, conn: &mut Conn, path: &str) -> anyhow::Result<Value> {
    let r = target
        .get(conn, path)
        .await
        .with_context(|| format!("GET {path}"))?;
    if r.status != 200 {
        bail!(
            "GET {path} answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    Ok(r.json())
}

/// Run every check; an `Err` means the checker could not ask, mismatches are in the outcome.
pub async fn check(target: &Target, exp: &Expectations<'_>) -> anyhow::Result<CheckOutcome> {
    let mut conn = target.connect().await?;
    let mut out = CheckOutcome {
        persons_expected: exp.persons.len(),
        ..CheckOutcome::default()
    };
    let token = exp.token;
    let project = get_json(target, &mut conn, &format!("/api/projects/{token}/")).await?;
    let project_id = project["id"]
        .as_u64()
        .context("the project has no numeric id")?;
    let namespace = uuid::Uuid::parse_str(PERSON_NAMESPACE)?;
    let uuid_of = |user: &str| {
        uuid::Uuid::new_v5(&namespace, format!("{project_id}:{user}").as_bytes()).to_string()
    };
    let expected: HashMap<String, &ExpectedPerson> = exp
        .persons
        .iter()
        .map(|p| (uuid_of(&p.user_id), p))
        .collect();

    // Every person, in creation order.
    let mut found: BTreeMap<String, Value> = BTreeMap::new();
    let mut next = Some(format!("/api/projects/{token}/persons/?limit=10000"));
    while let Some(path) = next.take() {
        let page = get_json(target, &mut conn, &path).await?;
        for p in page["results"]
            .as_array()
            .context("persons page without results")?
        {
            let uuid = p["uuid"].as_str().unwrap_or_default().to_string();
            if found.insert(uuid.clone(), p.clone()).is_some() {
                out.mismatches.push(Mismatch {
                    what: format!("GET {path}: person {uuid}"),
                    expected: "listed once".into(),
                    got: "listed twice".into(),
                });
            }
        }
        next = page["next"].as_str().map(str::to_string);
    }
    out.persons_found = found.len();
    if found.len() != expected.len() {
        out.mismatches.push(Mismatch {
            what: format!("GET /api/projects/{token}/persons/: number of persons"),
            expected: expected.len().to_string(),
            got: found.len().to_string(),
        });
    }
    for (uuid, person) in &found {
        match expected.get(uuid) {
            Some(e) => {
                compare(
                    &format!("person {uuid} of {}", e.user_id),
                    e,
                    person,
                    &mut out.mismatches,
                );
                out.persons_compared += 1;
            }
            None => out.mismatches.push(Mismatch {
                what: format!("GET /api/projects/{token}/persons/: person {uuid}"),
                expected: "no such person".into(),
                got: person.to_string(),
            }),
        }
    }
    for (uuid, e) in &expected {
        if !found.contains_key(uuid) {
            out.mismatches.push(Mismatch {
                what: format!(
                    "GET /api/projects/{token}/persons/: person of {}",
                    e.user_id
                ),
                expected: format!("person {uuid} with distinct_ids {:?}", e.distinct_ids),
                got: "not listed".into(),
            });
        }
    }

    // Lookups by distinct ID: a spread-out sample of persons and of personless IDs.
    let stride = |len: usize| (len / exp.sample.max(1)).max(1);
    for e in exp
        .persons
        .iter()
        .step_by(stride(exp.persons.len()))
        .take(exp.sample)
    {
        let want = uuid_of(&e.user_id);
        for did in &e.distinct_ids {
            let path = format!("/api/projects/{token}/persons/?distinct_id={}", encode(did));
            let answer = get_json(target, &mut conn, &path).await?;
            out.lookups += 1;
            let results = answer["results"].as_array().cloned().unwrap_or_default();
            match results.as_slice() {
                [p] if p["uuid"] == want.as_str() => {
                    compare(&format!("GET {path}"), e, p, &mut out.mismatches)
                }
                _ => out.mismatches.push(Mismatch {
                    what: format!("GET {path}"),
                    expected: format!("[person {want}]"),
                    got: Value::Array(results).to_string(),
                }),
            }
        }
    }
    for did in exp
        .personless_ids
        .iter()
        .step_by(stride(exp.personless_ids.len()))
        .take(exp.sample)
    {
        let path = format!("/api/projects/{token}/persons/?distinct_id={}", encode(did));
        let answer = get_json(target, &mut conn, &path).await?;
        out.lookups += 1;
        if answer["results"].as_array().is_none_or(|r| !r.is_empty()) {
            out.mismatches.push(Mismatch {
                what: format!("GET {path} (personless ID)"),
                expected: "[]".into(),
                got: answer["results"].to_string(),
            });
        }
    }

    // Ingestion warnings, by kind.
    let path = format!("/api/projects/{token}/ingestion_warnings/?limit=100000");
    let warnings = get_json(target, &mut conn, &path).await?;
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for w in warnings["results"]
        .as_array()
        .context("warnings without results")?
    {
        *kinds
            .entry(w["type"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let illegal = kinds
        .remove("cannot_merge_with_illegal_distinct_id")
        .unwrap_or(0);
    if illegal != exp.illegal_identifies {
        out.mismatches.push(Mismatch {
            what: format!("GET {path}: cannot_merge_with_illegal_distinct_id warnings"),
            expected: exp.illegal_identifies.to_string(),
            got: illegal.to_string(),
        });
    }
    if !kinds.is_empty() {
        out.mismatches.push(Mismatch {
            what: format!("GET {path}: other warnings"),
            expected: "none".into(),
            got: format!("{kinds:?}"),
        });
    }

    // Counters.
    if let Some(delta) = &exp.counters {
        let get = |k: &str| delta.get(k).copied().unwrap_or(0.0).round() as u64;
        for (name, want) in [
            (
                "idstitch_events_accepted_total",
                exp.events - exp.duplicates,
            ),
            ("idstitch_events_duplicate_total", exp.duplicates),
            ("idstitch_events_rejected_total", 0),
        ] {
            if get(name) != want {
                out.mismatches.push(Mismatch {
                    what: format!("GET /metrics: {name} over the run"),
                    expected: want.to_string(),
                    got: get(name).to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Compare one person's JSON with its expectation.
fn compare(what: &str, e: &ExpectedPerson, got: &Value, mismatches: &mut Vec<Mismatch>) {
    let mut differ = |field: &str, expected: String, got: String| {
        mismatches.push(Mismatch {
            what: format!("{what}: {field}"),
            expected,
            got,
        });
    };
    let ids: Vec<&str> = got["distinct_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if ids
        != e.distinct_ids
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    {
        differ(
            "distinct_ids",
            format!("{:?}", e.distinct_ids),
            got["distinct_ids"].to_string(),
        );
    }
    if got["is_identified"] != Value::Bool(e.identified) {
        differ(
            "is_identified",
            e.identified.to_string(),
            got["is_identified"].to_string(),
        );
    }
    let props = &got["properties"];
    for (key, want) in &e.props {
        match (want, props.get(key)) {
            (Some(w), Some(g)) if w == g => {}
            (None, None) => {}
            (w, g) => differ(
                &format!("properties.{key}"),
                w.as_ref().map_or("absent".into(), Value::to_string),
                g.map_or("absent".into(), Value::to_string),
            ),
        }
    }
    if props["$creator_event_uuid"] != e.creator_event_uuid.as_str() {
        differ(
            "properties.$creator_event_uuid",
            e.creator_event_uuid.clone(),
            props["$creator_event_uuid"].to_string(),
        );
    }
}
