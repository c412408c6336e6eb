//! The read API: projects, persons, events, warnings, history.
//!
//! Helpers here return `Result<T, HttpResponse>`: the error *is* the answer to send, built once
//! per failed request, so its size does not matter and boxing it would only add noise.
#![allow(clippy::result_large_err)]

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error, json as render, AppState};
use crate::domain::filters::CompiledFilters;
use crate::domain::{Change, Entry, Person, PersonUuid, ProjectId, Seq};
use crate::store::{ProjectRecord, Store, StoreError};

/// Largest page of events.
const MAX_EVENTS_PAGE: usize = 10_000;

fn store_error(e: StoreError) -> HttpResponse {
    tracing::error!(error = %e, "Read failed.");
    error(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", e)
}

/// The project named by a token or a numeric id, or the 404 answer.
pub fn find_project(store: &Store, key: &str) -> Result<ProjectRecord, HttpResponse> {
    let found = match key.parse::<u32>() {
        Ok(id) => store.project(ProjectId(id)),
        Err(_) => store.project_id(key).and_then(|id| {
            id.map(|id| store.project(id))
                .transpose()
                .map(Option::flatten)
        }),
    };
    match found {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(HttpResponse::NotFound().json(json!({"detail": "project not found"}))),
        Err(e) => Err(store_error(e)),
    }
}

/// A person uuid from the path, or the 404 answer.
pub fn parse_uuid(s: &str) -> Result<PersonUuid, HttpResponse> {
    uuid::Uuid::parse_str(s).map(PersonUuid).map_err(|_| {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{s:?} is not a person uuid"),
        )
    })
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(resp) => return resp,
        }
    };
}
pub(crate) use tri;

/// `GET /api/projects/`.
pub async fn projects(st: web::Data<AppState>) -> HttpResponse {
    match st.engine.store().projects() {
        Ok(ps) => HttpResponse::Ok().json(
            json!({"results": ps.iter().map(render::project).collect::<Vec<_>>(), "next": null}),
        ),
        Err(e) => store_error(e),
    }
}

/// `GET /api/projects/{project}/`.
pub async fn project(path: web::Path<String>, st: web::Data<AppState>) -> HttpResponse {
    let p = tri!(find_project(st.engine.store(), &path));
    HttpResponse::Ok().json(render::project(&p))
}

/// Query of the persons list.
#[derive(Deserialize)]
pub struct PersonsQuery {
    distinct_id: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
    explain: Option<bool>,
    filter_test_accounts: Option<bool>,
}

/// `GET /api/projects/{project}/persons/`.
pub async fn persons(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<PersonsQuery>,
    st: web::Data<AppState>,
) -> HttpResponse {
    let store = st.engine.store();
    let p = tri!(find_project(store, &path));
    let filters = match q.filter_test_accounts {
        Some(true) => {
            let s = tri!(super::projects::settings_of(store, &p));
            Some(CompiledFilters::new(&s.test_account_filters))
        }
        _ => None,
    };
    let kept = |person: &Person| {
        filters
            .as_ref()
            .is_none_or(|f| !f.is_test_account(&person.properties.0))
    };
    if let Some(did) = &q.distinct_id {
        let person = store.person_of(p.id, did).and_then(|u| {
            u.map(|u| store.person(p.id, u))
                .transpose()
                .map(Option::flatten)
        });
        let results: Vec<Value> = match person {
            Ok(found) => found
                .iter()
                .filter(|p| kept(p))
                .map(render::person)
                .collect(),
            Err(e) => return store_error(e),
        };
        let mut answer = json!({"results": results, "next": null});
        if q.explain.unwrap_or(false) {
            answer["explanation"] = tri!(explain(store, p.id, did));
        }
        return HttpResponse::Ok().json(answer);
    }
    let limit = tri!(page_limit(q.limit, 100, 10_000));
    let after = match q.after.as_deref().map(hex_decode) {
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "after is not a cursor from a previous page",
            )
        }
        Some(Some(k)) => Some(k),
        None => None,
    };
    // Read one more than a page, and with the filter on go on until the page is full or the
    // persons run out: `more` is whether a kept person follows the page, so that a `next`
    // link never leads to an empty page.
    let mut page = Vec::with_capacity(limit);
    let mut cursor = after;
    let more = 'read: loop {
        let chunk = match store.persons_page(p.id, cursor.as_deref(), limit + 1) {
            Ok(chunk) => chunk,
            Err(e) => return store_error(e),
        };
        let exhausted = chunk.len() <= limit;
        cursor = chunk.last().map(|(k, _)| k.clone()).or(cursor);
        for (k, person) in chunk.into_iter().filter(|(_, person)| kept(person)) {
            if page.len() == limit {
                break 'read true;
            }
            page.push((k, person));
        }
        if exhausted {
            break false;
        }
    };
    let filter_arg = if filters.is_some() {
        "&filter_test_accounts=true"
    } else {
        ""
    };
    let next = match page.last() {
        Some((k, _)) if more => Value::String(page_url(
            &req,
            format_args!("limit={limit}&after={}{filter_arg}", hex_encode(k)),
        )),
        _ => Value::Null,
    };
    let results: Vec<Value> = page
        .iter()
        .map(|(_, person)| render::person(person))
        .collect();
    HttpResponse::Ok().json(json!({"results": results, "next": next}))
}

/// Why `did` belongs to its person: every logged decision that named it since it last lost a
/// person (a deletion releases it, and a later event gives it a fresh person), oldest first.
/// An ID whose person was deleted and that nothing named since shows the story that ended
/// with that deletion.
fn explain(store: &Store, project: ProjectId, did: &str) -> Result<Value, HttpResponse> {
    let seqs = store.history_of_did(project, did).map_err(store_error)?;
    let mut steps = Vec::new();
    for seq in seqs.into_iter().rev() {
        let Some(entry) = store.entry(seq).map_err(store_error)? else {
            continue;
        };
        if entry.releases_distinct_id(did) && !steps.is_empty() {
            break;
        }
        steps.push(render::entry(seq, &entry, |c| names_did(c, did)));
    }
    steps.reverse();
    Ok(Value::Array(steps))
}

fn names_did(c: &Change, did: &str) -> bool {
    match c {
        Change::PersonCreated { distinct_ids, .. } | Change::PersonDeleted { distinct_ids, .. } => {
            distinct_ids.iter().any(|d| d == did)
        }
        Change::DistinctIdAttached { distinct_id, .. } => distinct_id == did,
        Change::PersonsMerged { moved_ids, .. } => moved_ids.iter().any(|d| d == did),
        Change::MergeRefused { other, into, .. } => other == did || into == did,
        Change::PersonSplit { parts, .. } => parts.iter().any(|(d, _)| d == did),
        _ => false,
    }
}

/// Whether a change concerns a person (for its history).
pub fn concerns(c: &Change, uuid: PersonUuid) -> bool {
    match c {
        Change::PersonCreated { person, .. }
        | Change::PersonSplit { person, .. }
        | Change::PersonDeleted { person, .. } => {
            *person == uuid
                || matches!(c, Change::PersonSplit { parts, .. } if parts.iter().any(|(_, u)| *u == uuid))
        }
        Change::PersonsMerged {
            survivor, absorbed, ..
        } => *survivor == uuid || *absorbed == uuid,
        Change::MergeRefused {
            person,
            other_person,
            ..
        } => *person == Some(uuid) || *other_person == Some(uuid),
        other => other.touched() == Some(uuid),
    }
}

/// Whether a change of `entry` belongs to a person's history: it [`concerns`] the person, or it
/// is a refused merge whose `into` had no person yet and that the same entry then creates (the
/// refusal is logged before the creation, so it could not name the person).
fn in_history(entry: &Entry, c: &Change, uuid: PersonUuid) -> bool {
    concerns(c, uuid)
        || matches!(c, Change::MergeRefused { person: None, into, .. }
            if entry.changes.iter().any(|x| matches!(x,
                Change::PersonCreated { person, distinct_ids, .. }
                    if *person == uuid && distinct_ids.contains(into))))
}

/// `GET /api/projects/{project}/persons/{uuid}/`.
pub async fn person(path: web::Path<(String, String)>, st: web::Data<AppState>) -> HttpResponse {
    let store = st.engine.store();
    let p = tri!(find_project(store, &path.0));
    let uuid = tri!(parse_uuid(&path.1));
    match store.person(p.id, uuid) {
        Ok(Some(person)) => HttpResponse::Ok().json(render::person(&person)),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "person not found"),
        Err(e) => store_error(e),
    }
}

/// `GET /api/projects/{project}/persons/{uuid}/history/`: every entry the uuid has been in,
/// oldest first. After a deletion, a later event for its distinct ID starts a fresh person with
/// the same uuid (spec §6, §10), and a person absorbed by a merge can come back under its uuid at
/// a split: the earlier person's entries, tombstone included, come first.
pub async fn history(path: web::Path<(String, String)>, st: web::Data<AppState>) -> HttpResponse {
    let store = st.engine.store();
    let p = tri!(find_project(store, &path.0));
    let uuid = tri!(parse_uuid(&path.1));
    let seqs = match store.history_of(p.id, uuid) {
        Ok(s) if s.is_empty() => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no person of this project has had this uuid",
            )
        }
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    // Every entry this uuid has been in, oldest first: when the uuid named an earlier person
    // (deleted, or merged away and then split off again), that person's creation, merges
    // and end come first, and the entry that began the current one says so. Cut at the current
    // person's beginning, a split or a new event after a deletion hid the decisions and the
    // tombstone that came before (helper-40, helper-41).
    let mut results = Vec::new();
    for seq in seqs {
        match store.entry(seq) {
            Ok(Some(entry)) => {
                results.push(render::entry(seq, &entry, |c| in_history(&entry, c, uuid)));
            }
            Ok(None) => {}
            Err(e) => return store_error(e),
        }
    }
    HttpResponse::Ok().json(json!({"results": results}))
}

/// Query of the events list.
#[derive(Deserialize)]
pub struct EventsQuery {
    distinct_id: Option<String>,
    person_id: Option<String>,
    limit: Option<usize>,
    after: Option<u64>,
}

/// `GET /api/projects/{project}/events/`: newest first, `after` is the last `seq` seen.
pub async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<EventsQuery>,
    st: web::Data<AppState>,
) -> HttpResponse {
    let store = st.engine.store();
    let p = tri!(find_project(store, &path));
    let limit = tri!(page_limit(q.limit, 100, MAX_EVENTS_PAGE));
    let dids: Vec<String> = match (&q.distinct_id, &q.person_id) {
        (Some(_), Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "give distinct_id or person_id, not both",
            )
        }
        (Some(d), _) => vec![d.clone()],
        (None, Some(pid)) => {
            // A query value that is no uuid is a bad request (in a path, no such person).
            let Ok(uuid) = uuid::Uuid::parse_str(pid).map(PersonUuid) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("person_id={pid:?} is not valid: person_id takes a person uuid"),
                );
            };
            match store.person(p.id, uuid) {
                Ok(Some(person)) => person.distinct_ids,
                Ok(None) => Vec::new(),
                Err(e) => return store_error(e),
            }
        }
        (None, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "required",
                "give distinct_id or person_id",
            )
        }
    };
    let mut seqs = Vec::new();
    for did in &dids {
        // One more than a page: whether another page follows.
        match store.event_seqs_of(p.id, did, q.after.map(Seq), limit + 1) {
            Ok(s) => seqs.extend(s),
            Err(e) => return store_error(e),
        }
    }
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    let more = seqs.len() > limit;
    seqs.truncate(limit);
    let mut results = Vec::with_capacity(seqs.len());
    for seq in &seqs {
        let entry = match store.entry(*seq) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => return store_error(e),
        };
        for c in &entry.changes {
            if let Change::EventStored { event } = c {
                let person = store.person_of(p.id, &event.distinct_id).ok().flatten();
                results.push(render::event(p.id, *seq, event, person));
            }
        }
    }
    let next = match seqs.last() {
        Some(s) if more => {
            let filter = match (&q.distinct_id, &q.person_id) {
                (Some(d), _) => format!("distinct_id={}", urlencode(d)),
                (None, Some(pid)) => format!("person_id={pid}"),
                _ => String::new(),
            };
            Value::String(page_url(
                &req,
                format_args!("{filter}&limit={limit}&after={}", s.0),
            ))
        }
        _ => Value::Null,
    };
    HttpResponse::Ok().json(json!({"results": results, "next": next}))
}

/// Query of the warnings list.
#[derive(Deserialize)]
pub struct WarningsQuery {
    limit: Option<usize>,
}

/// `GET /api/projects/{project}/ingestion_warnings/`.
pub async fn warnings(
    path: web::Path<String>,
    q: web::Query<WarningsQuery>,
    st: web::Data<AppState>,
) -> HttpResponse {
    let store = st.engine.store();
    let p = tri!(find_project(store, &path));
    let limit = tri!(page_limit(q.limit, 1000, 100_000));
    match store.warnings(p.id, limit) {
        Ok(ws) => HttpResponse::Ok()
            .json(json!({"results": ws.iter().map(render::warning).collect::<Vec<_>>()})),
        Err(e) => store_error(e),
    }
}

/// A list's `limit`: `default` when not given, at most `max`. Zero is refused: it asks for no
/// page at all.
pub fn page_limit(given: Option<usize>, default: usize, max: usize) -> Result<usize, HttpResponse> {
    match given {
        Some(0) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit=\"0\" is not valid: limit takes a whole number (1 or more)",
        )),
        Some(n) => Ok(n.min(max)),
        None => Ok(default),
    }
}

/// The URL of another page of the list `req` asked for, with `query` (api.md: `next` is "the
/// URL of the next page", absolute as PostHog's are): `http://` and the host the request
/// named in its `Host` header (over the Unix socket, whatever host the client gave). The
/// daemon speaks plain HTTP and is no proxy's, so `X-Forwarded-*` is not read. A request
/// without a usable `Host` (HTTP/1.0) gets the path alone, rather than an address nothing
/// listens on.
fn page_url(req: &HttpRequest, query: std::fmt::Arguments<'_>) -> String {
    let host = req
        .headers()
        .get(actix_web::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']));
    match host {
        Some(host) => format!("http://{host}{}?{query}", req.path()),
        None => format!("{}?{query}", req.path()),
    }
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
