//! The checker: after the load, the daemon must hold exactly the persons the workload implies.
//!
//! - every person of the project (paged listing), compared in full with the expected one found
//!   by uuid (UUIDv5 of `"<project id>:<user id>"`, spec §6): exact `distinct_ids`,
//!   `is_identified`, `created_at`, and exactly the expected properties (explicit ones, the
//!   auto-promoted ones with their `$initial_` names and values, `$creator_event_uuid`; a key
//!   more or less is a mismatch); no person more, none less;
//! - a sample of distinct-ID lookups (`?distinct_id=`): each ID of a sampled person finds that
//!   person, and sampled personless IDs (illegal ones included) find none;
//! - ingestion warnings: exactly the expected ones (type, the distinct IDs named and the event
//!   uuid), as a multiset, and no other;
//! - counters over the run: accepted, duplicate and rejected events, merges, and refused merges
//!   by reason, exactly when this run started the daemon; for a daemon given with `--socket` or
//!   `--tcp` (which others may feed too), accepted events must have grown by at least the
//!   workload's, so a run whose events were all duplicates of an earlier run fails.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context};
use idstitch::cli::client::Conn;
use serde_json::Value;

use crate::daemon::Target;
use crate::workload::{ExpectedPerson, ExpectedWarning, Outcomes};

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
    /// Every ingestion warning the workload must cause.
    pub warnings: &'a [ExpectedWarning],
    /// Merges and refused merges the workload must cause.
    pub outcomes: Outcomes,
    /// Events sent, duplicates included.
    pub events: u64,
    /// Duplicate deliveries sent.
    pub duplicates: u64,
    /// How many persons (and as many personless IDs) to look up by distinct ID.
    pub sample: usize,
    /// Counter deltas over the run.
    pub counters: Option<HashMap<String, f64>>,
    /// Whether nobody else fed the daemon during the run (this run started it): then the
    /// counters must match exactly, else accepted events must have grown by at least ours.
    pub exclusive: bool,
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
        // `next` is an absolute URL; this client needs its path and query.
        next = match page["next"].as_str() {
            None => None,
            Some(url) => Some(
                url.split_once("://")
                    .and_then(|(_, rest)| rest.find('/').map(|at| rest[at..].to_string()))
                    .with_context(|| format!("`next` is {url:?}, not an absolute URL"))?,
            ),
        };
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

    // Ingestion warnings: the expected ones exactly, as a multiset.
    let path = format!("/api/projects/{token}/ingestion_warnings/?limit=100000");
    let warnings = get_json(target, &mut conn, &path).await?;
    let mut got: Vec<ExpectedWarning> = warnings["results"]
        .as_array()
        .context("warnings without results")?
        .iter()
        .map(warning_of)
        .collect();
    let mut want = exp.warnings.to_vec();
    got.sort();
    want.sort();
    let (missing, extra) = multiset_diff(&want, &got);
    if !missing.is_empty() || !extra.is_empty() {
        let by_kind = |ws: &[ExpectedWarning]| {
            let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
            for w in ws {
                *kinds.entry(w.kind.as_str()).or_default() += 1;
            }
            format!("{kinds:?}")
        };
        out.mismatches.push(Mismatch {
            what: format!("GET {path}: warnings by type"),
            expected: by_kind(&want),
            got: by_kind(&got),
        });
        for w in missing.iter().take(10) {
            out.mismatches.push(Mismatch {
                what: format!("GET {path}: a warning"),
                expected: format!("{} {:?}", w.kind, w.details),
                got: "missing".into(),
            });
        }
        for w in extra.iter().take(10) {
            out.mismatches.push(Mismatch {
                what: format!("GET {path}: a warning"),
                expected: "none".into(),
                got: format!("{} {:?}", w.kind, w.details),
            });
        }
    }

    // Counters.
    if let Some(delta) = &exp.counters {
        let get = |k: &str| delta.get(k).copied().unwrap_or(0.0).round() as u64;
        let accepted = exp.events - exp.duplicates;
        let exact = [
            ("idstitch_events_accepted_total".to_string(), accepted),
            (
                "idstitch_events_duplicate_total".to_string(),
                exp.duplicates,
            ),
            ("idstitch_events_rejected_total".to_string(), 0),
            ("idstitch_merges_total".to_string(), exp.outcomes.merges),
            (
                r#"idstitch_merge_refusals_total{kind="illegal_distinct_id"}"#.to_string(),
                exp.outcomes.refused_illegal,
            ),
            (
                r#"idstitch_merge_refusals_total{kind="already_identified"}"#.to_string(),
                exp.outcomes.refused_identified,
            ),
        ];
        if exp.exclusive {
            for (name, want) in exact {
                if get(&name) != want {
                    out.mismatches.push(Mismatch {
                        what: format!("GET /metrics: {name} over the run"),
                        expected: want.to_string(),
                        got: get(&name).to_string(),
                    });
                }
            }
        } else if get("idstitch_events_accepted_total") < accepted {
            out.mismatches.push(Mismatch {
                what: "GET /metrics: idstitch_events_accepted_total over the run (a daemon \
                       others may feed: at least the workload's)"
                    .into(),
                expected: format!(">= {accepted}"),
                got: format!(
                    "{} (and {} duplicates): were these events sent before?",
                    get("idstitch_events_accepted_total"),
                    get("idstitch_events_duplicate_total")
                ),
            });
        }
    }
    // The run-wide findings (counts, warnings, counters) first: the printed report and the
    // JSON keep only the first mismatches.
    out.mismatches.sort_by_key(|m| {
        if m.what.starts_with("person ") || m.what.contains("?distinct_id=") {
            2
        } else if m.what.contains("/persons/: person") {
            1
        } else {
            0
        }
    });
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
    let props = got["properties"].as_object().cloned().unwrap_or_default();
    for (key, want) in &e.properties {
        match props.get(key) {
            Some(g) if g == want => {}
            g => differ(
                &format!("properties.{key}"),
                want.to_string(),
                g.map_or("absent".into(), Value::to_string),
            ),
        }
    }
    let extra: Vec<String> = props
        .iter()
        .filter(|(k, _)| !e.properties.contains_key(*k))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    if !extra.is_empty() {
        differ(
            "properties (keys outside the expected set)",
            "none".into(),
            extra.join(", "),
        );
    }
    let created_ms = got["created_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis());
    if created_ms != Some(e.created_at_ms) {
        differ(
            "created_at",
            chrono::DateTime::from_timestamp_millis(e.created_at_ms)
                .map_or(e.created_at_ms.to_string(), |t| t.to_rfc3339()),
            got["created_at"].to_string(),
        );
    }
}

/// A warning as the daemon listed it, in the form of [`ExpectedWarning`]: the details of the
/// two merge refusals by their named fields, any other kind with all its details.
fn warning_of(w: &Value) -> ExpectedWarning {
    let kind = w["type"].as_str().unwrap_or("?").to_string();
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let fields: &[&str] = match kind.as_str() {
        "cannot_merge_with_illegal_distinct_id" => {
            &["illegalDistinctId", "otherDistinctId", "eventUuid"]
        }
        "cannot_merge_already_identified" => &[
            "sourcePersonDistinctId",
            "targetPersonDistinctId",
            "eventUuid",
        ],
        _ => &[],
    };
    let details = if fields.is_empty() {
        w["details"]
            .as_object()
            .map(|d| d.iter().map(|(k, v)| (k.clone(), text(v))).collect())
            .unwrap_or_default()
    } else {
        fields
            .iter()
            .map(|f| (f.to_string(), text(&w["details"][*f])))
            .collect()
    };
    ExpectedWarning { kind, details }
}

/// What `want` has that `got` lacks, and the reverse (both sorted).
fn multiset_diff<'a>(
    want: &'a [ExpectedWarning],
    got: &'a [ExpectedWarning],
) -> (Vec<&'a ExpectedWarning>, Vec<&'a ExpectedWarning>) {
    let (mut i, mut j) = (0, 0);
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    while i < want.len() || j < got.len() {
        match (want.get(i), got.get(j)) {
            (Some(w), Some(g)) if w == g => {
                i += 1;
                j += 1;
            }
            (Some(w), Some(g)) if w < g => {
                missing.push(w);
                i += 1;
            }
            (Some(w), None) => {
                missing.push(w);
                i += 1;
            }
            (_, Some(g)) => {
                extra.push(g);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (missing, extra)
}
