//! Operator endpoints: split, delete, snapshot, health and metrics.

use std::sync::atomic::Ordering;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::read::{find_project, parse_uuid, tri};
use super::{engine_error, error, json as render, AppState};
use crate::store::snapshot::SnapshotError;

/// Body of a split.
#[derive(Deserialize)]
pub struct SplitBody {
    main_distinct_id: Option<String>,
}

/// `POST /api/projects/{project}/persons/{uuid}/split/`. The body is optional, and read as
/// JSON whatever its content type; one that does not parse is refused, since a split made
/// without the main ID asked for cannot be undone.
pub async fn split(
    path: web::Path<(String, String)>,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> HttpResponse {
    let p = tri!(find_project(st.engine.store(), &path.0));
    let uuid = tri!(parse_uuid(&path.1));
    let main = if body.trim_ascii().is_empty() {
        None
    } else {
        match serde_json::from_slice::<SplitBody>(&body) {
            Ok(b) => b.main_distinct_id,
            Err(e) => {
                let detail = format!("the body is not a split's JSON ({e}): nothing was split");
                return error(StatusCode::BAD_REQUEST, "invalid_body", detail);
            }
        }
    };
    match st.engine.split(p.id, uuid, main).await {
        Ok(persons) => HttpResponse::Ok().json(json!({
            "success": true,
            "results": persons.iter().map(render::person).collect::<Vec<_>>(),
        })),
        Err(e) => engine_error(&e),
    }
}

/// Query of a delete.
#[derive(Deserialize)]
pub struct DeleteQuery {
    delete_events: Option<bool>,
}

/// `DELETE /api/projects/{project}/persons/{uuid}/`.
pub async fn delete(
    path: web::Path<(String, String)>,
    q: web::Query<DeleteQuery>,
    st: web::Data<AppState>,
) -> HttpResponse {
    let p = tri!(find_project(st.engine.store(), &path.0));
    let uuid = tri!(parse_uuid(&path.1));
    let delete_events = q.delete_events.unwrap_or(false);
    if let Err(e) = st.engine.delete(p.id, uuid, delete_events).await {
        return engine_error(&e);
    }
    if delete_events {
        // Reclaim the redacted events' bytes before answering, so a 204 means they are gone.
        let store = st.engine.store().clone();
        let failed = match web::block(move || store.compact_log()).await {
            Ok(Ok(())) => return HttpResponse::NoContent().finish(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the compaction did not run ({e})"),
        };
        tracing::warn!(person = %uuid, error = %failed, "Compaction after a deletion failed: the deleted events' bytes may still be on disk.");
        // Not a 204: that promises the bytes are gone. The deletion itself is durable.
        let detail = format!(
            "person {uuid} and its events are deleted (durable: the deletion is in the log, and \
             reads and restarts no longer show them), but reclaiming the deleted events' bytes \
             from disk failed: {failed}. Their old bytes may still be in the data dir's files. \
             Fix the cause (see the daemon's log): the next DELETE with delete_events=true \
             that succeeds (of any person) compacts the whole log and removes them; until \
             then, RocksDB's own compactions rewrite those files in time"
        );
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "compaction_failed",
            detail,
        );
    }
    HttpResponse::NoContent().finish()
}

/// `GET /_health`: 200 when serving, 503 when not (shutting down, or the log writer failed).
pub async fn health(st: web::Data<AppState>) -> HttpResponse {
    let writer = st.engine.writer_status();
    if !st.ready.load(Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable().json(json!({"status": "stopping"}));
    }
    match writer.failed {
        Some(e) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "failed", "detail": e.to_string()})),
        None => HttpResponse::Ok().json(json!({"status": "ok", "durable_seq": writer.durable.0})),
    }
}

/// `GET /metrics`, in the OpenMetrics text format (`prometheus_client` writes it: `_total`
/// counters, `# EOF`), and labelled as such so that a scraper parses it as that.
pub async fn metrics(st: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(st.engine.metrics().render())
}

/// Any unknown path.
pub async fn not_found() -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see the API in the README",
    )
}

/// A known path asked with a method it does not answer: 405, with the methods it does.
pub async fn method_not_allowed(allow: String) -> HttpResponse {
    let detail = format!("this endpoint answers {allow} only");
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", detail);
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&allow) {
        resp.headers_mut().insert(actix_web::http::header::ALLOW, v);
    }
    resp
}

/// Body of `POST /api/snapshot`.
#[derive(Deserialize)]
pub struct SnapshotBody {
    path: String,
}

/// Resolve a requested snapshot path under `root`: relative paths are joined to it; absolute
/// ones must already be inside it; `..` is never allowed.
pub fn snapshot_path(
    root: &std::path::Path,
    requested: &str,
) -> Result<std::path::PathBuf, String> {
    let p = std::path::Path::new(requested);
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("snapshot path {requested:?} contains '..'"));
    }
    // `std::path::absolute` keeps `..` (the default root is `<data-dir>/../snapshots`): resolve
    // it by the path's text, so that a path under the root as written matches it.
    let root = std::path::absolute(root)
        .map_err(|e| e.to_string())?
        .components()
        .fold(std::path::PathBuf::new(), |mut acc, c| {
            match c {
                std::path::Component::ParentDir => {
                    acc.pop();
                }
                std::path::Component::CurDir => {}
                c => acc.push(c),
            }
            acc
        });
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    };
    if !full.starts_with(&root) {
        return Err(format!(
            "snapshot path {requested:?} is outside the snapshot dir {} (see --snapshot-dir)",
            root.display()
        ));
    }
    Ok(full)
}

/// `POST /api/snapshot`: a consistent snapshot while serving.
pub async fn snapshot(body: web::Json<SnapshotBody>, st: web::Data<AppState>) -> HttpResponse {
    let out = match snapshot_path(&st.config.snapshot_dir, &body.path) {
        Ok(p) => p,
        Err(detail) => return error(StatusCode::BAD_REQUEST, "invalid_path", detail),
    };
    let store = st.engine.store().clone();
    let target = out.clone();
    match web::block(move || crate::store::snapshot::create(&store, &target, |_, _| {})).await {
        Ok(Ok(m)) => {
            HttpResponse::Ok().json(json!({"path": out.display().to_string(), "manifest": m}))
        }
        // The request's fault (the path is taken) is a 400; the daemon's or the disk's (a
        // full disk, a failed checkpoint) is a 500.
        Ok(Err(e @ SnapshotError::Refused(_))) => {
            error(StatusCode::BAD_REQUEST, "snapshot_failed", e)
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "snapshot_failed", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "snapshot_failed", e),
    }
}
