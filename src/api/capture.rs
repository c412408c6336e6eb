//! The capture endpoints the PostHog SDKs call.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::decode::{decode_capture, decode_capture_v1, CaptureBody, DecodeError, RawRequest};
use super::server::{Busy, ConnLimits, InflightBodies, Overdrawn, Room};
use super::{engine_error, error, AppState};
use crate::actors::{IngestItem, ItemOutcome};
use crate::domain::normalize::event_token;
use crate::domain::{normalize_received, ProjectId, Received, Rejection, WireEvent};
use crate::metrics::Metrics;

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn raw<'a>(req: &'a HttpRequest, body: &'a [u8]) -> RawRequest<'a> {
    RawRequest {
        body,
        content_encoding: header(req, "content-encoding"),
        content_type: header(req, "content-type"),
        query: req.query_string(),
    }
}

/// The project of a token: cached, else asked of the router (which may create it).
async fn project_of(st: &AppState, token: &str) -> Result<Option<ProjectId>, HttpResponse> {
    if let Some(id) = st.tokens.read().ok().and_then(|t| t.get(token).copied()) {
        return Ok(Some(id));
    }
    let id = st
        .engine
        .resolve_project(token, None, st.config.create_projects)
        .await
        .map_err(|e| engine_error(&e))?;
    if let (Some(id), Ok(mut t)) = (id, st.tokens.write()) {
        t.insert(token.to_string(), id);
    }
    Ok(id)
}

/// Longest project token, in bytes (PostHog's are 47: `phc_` and 43 characters).
pub const MAX_TOKEN_BYTES: usize = 200;

/// The project token of every event, or why the request is refused (its error code and
/// detail): a request with an event that names no usable project is refused whole (api.md),
/// so this runs before any project is created. An item that is not an event object, or that
/// the decoder refused over a limit ([`WireEvent::OverLimit`]), has no token to look for and
/// needs no project (`None`): it is an event-level problem, rejected alone, wherever it is in
/// the array and whether or not the request has an `api_key`.
fn tokens_of(
    api_key: Option<&str>,
    events: &[WireEvent],
    token_from: TokenFrom,
) -> Result<Vec<Option<String>>, (&'static str, String)> {
    let mut tokens = Vec::with_capacity(events.len());
    for (i, ev) in events.iter().enumerate() {
        if ev.fields().is_none() {
            tokens.push(None);
            continue;
        }
        let Some(token) = event_token(api_key, ev) else {
            return Err((
                "no_token",
                format!(
                    "event {i} has no project token: {}, or token in the event's properties",
                    token_from.advice()
                ),
            ));
        };
        if token.len() > MAX_TOKEN_BYTES || token.chars().any(char::is_control) {
            return Err((
                "invalid_token",
                format!("event {i}'s project token is not one: use at most {MAX_TOKEN_BYTES} bytes and no control characters"),
            ));
        }
        tokens.push(Some(token));
    }
    Ok(tokens)
}

/// Where a request's own project token goes: what to advise when an event has none.
#[derive(Clone, Copy)]
enum TokenFrom {
    /// `api_key` in a batch envelope (capture v0).
    ApiKey,
    /// `Authorization: Bearer <token>` (capture v1).
    Bearer,
}

impl TokenFrom {
    fn advice(self) -> &'static str {
        match self {
            TokenFrom::ApiKey => "set api_key on the batch",
            TokenFrom::Bearer => "send Authorization: Bearer <token>",
        }
    }
}

/// Normalise, ingest and answer; `ok` is the body of a success. `started` is when the handler
/// began, so that the `decode` stage counts the body's decoding too.
async fn ingest(
    st: &AppState,
    started: Instant,
    body: CaptureBody,
    token_from: TokenFrom,
    ok: Value,
) -> HttpResponse {
    let received = Received {
        now_ms: chrono::Utc::now().timestamp_millis(),
        sent_at_ms: body.sent_at_ms(),
    };
    let mut items = Vec::with_capacity(body.events.len());
    let mut index_of = Vec::with_capacity(body.events.len());
    let mut rejected = Vec::new();
    let CaptureBody {
        api_key, events, ..
    } = body;
    let tokens = match tokens_of(api_key.as_deref(), &events, token_from) {
        Ok(t) => t,
        Err((code, detail)) => return error(StatusCode::BAD_REQUEST, code, detail),
    };
    for ((i, ev), token) in events.into_iter().enumerate().zip(tokens) {
        let Some(token) = token else {
            // Not an event object, or one over a limit of the decoder ([`tokens_of`]):
            // rejected, with no project to resolve.
            Metrics::inc(&st.engine.metrics().events_rejected, "invalid_event");
            rejected.push((i, Rejection::of_non_object(ev).to_string()));
            continue;
        };
        let project = match project_of(st, &token).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    format!("unknown project token {token:?}: add it to the --projects file"),
                )
            }
            Err(resp) => return resp,
        };
        match normalize_received(ev, received) {
            Ok(event) => {
                items.push(IngestItem { project, event });
                index_of.push(i);
            }
            Err(rej) => {
                Metrics::inc(&st.engine.metrics().events_rejected, "invalid_event");
                rejected.push((i, rej.to_string()));
            }
        }
    }
    st.engine
        .metrics()
        .capture_stage("decode", started.elapsed().as_secs_f64());
    match st.engine.ingest(items).await {
        Ok(outcomes) => {
            for (k, outcome) in outcomes.into_iter().enumerate() {
                if let ItemOutcome::Dropped(reason) = outcome {
                    rejected.push((index_of[k], reason));
                }
            }
            rejected.sort_by_key(|(i, _)| *i);
            let mut answer = ok;
            if !rejected.is_empty() {
                let list: Vec<Value> = rejected
                    .into_iter()
                    .map(|(i, d)| json!({"index": i, "detail": d}))
                    .collect();
                answer["rejected"] = Value::Array(list);
            }
            HttpResponse::Ok().json(answer)
        }
        Err(e) => engine_error(&e),
    }
}

/// A capture body decoded (by `decode`), and room in the in-flight body budget for what
/// decoding added to it (its decompressed bytes beyond those received, which the budget holds
/// already), kept until the answer. Or the answer when there is none: 413 if it decodes to
/// more than the whole budget; 503 with `Retry-After` if the budget stayed full for
/// `--body-timeout`. While it waits for room it holds nothing decoded: it decodes again once
/// the room is its own (only when the budget is full, so rarely).
async fn decode_in_budget(
    req: &HttpRequest,
    received: usize,
    decode: impl Fn() -> Result<CaptureBody, DecodeError>,
) -> Result<(CaptureBody, Room), HttpResponse> {
    let refused = |e: DecodeError| {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        error(status, e.code(), &e)
    };
    let decoded = decode().map_err(refused)?;
    let (Some(bodies), Some(limits)) = (
        req.app_data::<web::Data<InflightBodies>>(),
        req.app_data::<web::Data<ConnLimits>>(),
    ) else {
        return Ok((decoded, None));
    };
    let total = decoded.decoded_bytes;
    if !bodies.fits(total) {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("The request body decodes to {total} bytes, more than --max-inflight-body-bytes ({}) allows in memory at once; send smaller batches.", bodies.budget()),
        ));
    }
    // A request that holds the overdraft takes no more room.
    if req
        .extensions()
        .get::<Overdrawn>()
        .is_some_and(Overdrawn::get)
    {
        return Ok((decoded, None));
    }
    let grown = total.saturating_sub(received);
    if let Some(room) = bodies.try_charge(grown) {
        return Ok((decoded, room));
    }
    drop(decoded);
    match bodies.charge(grown, limits.body_timeout).await {
        Ok(room) => Ok((decode().map_err(refused)?, room)),
        Err(Busy { waited }) => Err(HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(json!({
                "type": "server_error",
                "code": "busy",
                "detail": format!("Request bodies in memory filled --max-inflight-body-bytes for {:.1} s; nothing of this request was applied: send it again.", waited.as_secs_f64()),
            }))),
    }
}

/// `POST /batch/`, `/capture/`, `/e/`, `/i/v0/e/`, `/track/`, `/engage/`.
pub async fn capture(req: HttpRequest, body: web::Bytes, st: web::Data<AppState>) -> HttpResponse {
    let started = Instant::now();
    let decode = || decode_capture(&raw(&req, &body), &st.config.limits);
    match decode_in_budget(&req, body.len(), decode).await {
        Ok((decoded, _room)) => {
            ingest(
                &st,
                started,
                decoded,
                TokenFrom::ApiKey,
                json!({"status": 1}),
            )
            .await
        }
        Err(refused) => refused,
    }
}

/// `POST /i/v1/analytics/events` (capture v1).
pub async fn capture_v1(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> HttpResponse {
    let started = Instant::now();
    let bearer = header(&req, "authorization").and_then(super::bearer);
    let decode = || decode_capture_v1(&raw(&req, &body), bearer, &st.config.limits);
    match decode_in_budget(&req, body.len(), decode).await {
        Ok((decoded, _room)) => {
            ingest(
                &st,
                started,
                decoded,
                TokenFrom::Bearer,
                json!({"results": {}}),
            )
            .await
        }
        Err(refused) => refused,
    }
}

/// `POST /flags/` and `/decide/`: no feature flags here.
pub async fn flags() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "flags": {}, "featureFlags": {}, "featureFlagPayloads": {}, "errorsWhileComputingFlags": false
    }))
}

/// `GET /array/{token}/config`: no remote config.
pub async fn remote_config() -> HttpResponse {
    HttpResponse::Ok().json(json!({}))
}

/// `GET /array/{token}/config.js`: an empty script.
pub async fn remote_config_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/javascript")
        .body("// idstitch serves no remote config\n")
}
