//! Project settings (`GET`/`PATCH /api/projects/{project}/`), the conversion buffer's waiting
//! events, and the test clock.
//!
//! Helpers return `Result<T, HttpResponse>`: the error is the answer to send (see `read.rs`).
#![allow(clippy::result_large_err)]

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::read::{find_project, tri};
use super::{engine_error, error, json as render, AppState};
use crate::domain::{ProjectSettings, SettingsError, SettingsPatch};
use crate::store::{ProjectRecord, Store};

/// The settings in force for a project (the defaults until someone changes them).
pub fn settings_of(store: &Store, p: &ProjectRecord) -> Result<ProjectSettings, HttpResponse> {
    match store.project_settings(p.id) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Ok(ProjectSettings::new(&p.name)),
        Err(e) => {
            tracing::error!(error = %e, "Read failed.");
            Err(error(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", e))
        }
    }
}

/// A project with its settings.
fn project_json(p: &ProjectRecord, s: &ProjectSettings) -> Value {
    let mut v = render::project(p);
    if let (Some(obj), Value::Object(settings)) = (v.as_object_mut(), render::settings(s)) {
        obj.extend(settings);
    }
    v
}

/// The 400 answer for invalid settings: `attr` names the field, as PostHog's API does.
pub fn invalid_settings(e: &SettingsError) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({
        "type": "validation_error", "code": "invalid_input", "detail": e.to_string(), "attr": e.field,
    }))
}

/// `GET /api/projects/`.
pub async fn list(st: web::Data<AppState>) -> HttpResponse {
    let store = st.engine.store();
    let projects = match store.projects() {
        Ok(ps) => ps,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", e),
    };
    let mut results = Vec::with_capacity(projects.len());
    for p in &projects {
        let s = tri!(settings_of(store, p));
        results.push(project_json(p, &s));
    }
    HttpResponse::Ok().json(json!({"results": results, "next": null}))
}

/// `GET /api/projects/{project}/`: the project and its settings.
pub async fn show(path: web::Path<String>, st: web::Data<AppState>) -> HttpResponse {
    let store = st.engine.store();
    let p = tri!(find_project(store, &path));
    let s = tri!(settings_of(store, &p));
    HttpResponse::Ok().json(project_json(&p, &s))
}

/// `PATCH /api/projects/{project}/`: change some settings; answers the project as it is now.
pub async fn patch(
    path: web::Path<String>,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> HttpResponse {
    let p = tri!(find_project(st.engine.store(), &path));
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let e = SettingsError {
                field: "body".into(),
                reason: format!("is not valid JSON: {e}"),
            };
            return invalid_settings(&e);
        }
    };
    let patch = match SettingsPatch::parse(&value) {
        Ok(p) => p,
        Err(e) => return invalid_settings(&e),
    };
    match st.engine.patch_settings(p.id, patch).await {
        Ok(s) => {
            let rec = ProjectRecord {
                name: s.name.clone(),
                ..p
            };
            HttpResponse::Ok().json(project_json(&rec, &s))
        }
        Err(e) => engine_error(&e),
    }
}

/// Query of `GET /api/projects/{project}/buffer/`.
#[derive(Deserialize)]
pub struct BufferQuery {
    /// Most events listed (default 1,000, at most 10,000); `waiting` counts them all.
    limit: Option<usize>,
}

/// `GET /api/projects/{project}/buffer/?limit=N`: how many events wait in the conversion
/// buffer, and the first `limit` of them, oldest first.
pub async fn buffer(
    path: web::Path<String>,
    q: web::Query<BufferQuery>,
    st: web::Data<AppState>,
) -> HttpResponse {
    let store = st.engine.store();
    let p = tri!(find_project(store, &path));
    let limit = tri!(super::read::page_limit(q.limit, 1000, 10_000));
    let (count, waiting) = match store.buffered_events_of(p.id, limit) {
        Ok(w) => w,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", e),
    };
    let results: Vec<Value> = waiting
        .iter()
        .map(|b| {
            json!({
                "buffered_seq": b.seq.0, "uuid": b.event.uuid, "event": b.event.name,
                "distinct_id": b.event.distinct_id, "received_at": render::time(b.event.received_at_ms),
                "release_at": render::time(b.release_at_ms),
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({"waiting": count, "results": results}))
}

/// Body of `POST /api/_test/clock`.
#[derive(Deserialize)]
pub struct ClockBody {
    advance_secs: i64,
}

/// `POST /api/_test/clock {"advance_secs": N}`: move the buffer's clock forward (only on a
/// daemon started with `--test-clock`; 404 otherwise).
pub async fn test_clock(body: web::Json<ClockBody>, st: web::Data<AppState>) -> HttpResponse {
    let ms = body.advance_secs.clamp(0, 10 * 365 * 86_400) * 1000;
    match st.engine.clock().advance(ms) {
        Some(offset) => HttpResponse::Ok().json(json!({"offset_secs": offset / 1000})),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the test clock is off (start the daemon with --test-clock)",
        ),
    }
}
