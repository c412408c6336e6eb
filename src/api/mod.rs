//! HTTP: capture decoding and the read/admin API, over a Unix socket and optionally TCP.

pub mod admin;
pub mod capture;
pub mod decode;
pub mod insights;
pub mod json;
pub mod projects;
pub mod read;
pub mod server;
pub mod watchdog;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::RwLock;

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::json;

use crate::actors::{Engine, EngineError};
use crate::domain::ProjectId;
pub use decode::DecodeLimits;

/// Settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Body, event-count and depth limits of capture requests.
    pub limits: DecodeLimits,
    /// Create a project on first use of a token (off in strict `--projects` mode).
    pub create_projects: bool,
    /// Bearer key for `/api/` over TCP; `None` answers 403 there.
    pub admin_key: Option<String>,
    /// Where `POST /api/snapshot` may write.
    pub snapshot_dir: PathBuf,
}

/// Shared state of every handler.
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// Settings.
    pub config: ApiConfig,
    /// False while shutting down: `/_health` answers 503.
    pub ready: AtomicBool,
    /// Tokens already resolved, so capture skips a round trip to the router.
    pub tokens: RwLock<HashMap<String, ProjectId>>,
}

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The Unix socket: trusted with everything.
    Unix,
    /// TCP: `/api/` needs the admin key.
    Tcp,
}

/// A JSON error answer.
pub fn error(status: StatusCode, code: &str, detail: impl std::fmt::Display) -> HttpResponse {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "authentication_error",
        404 => "not_found",
        s if s >= 500 => "server_error",
        _ => "validation_error",
    };
    HttpResponse::build(status)
        .json(json!({"type": kind, "code": code, "detail": detail.to_string()}))
}

/// The answer for an engine failure: 503 (retry later) for storage trouble.
pub fn engine_error(e: &EngineError) -> HttpResponse {
    match e {
        EngineError::NotFound => error(StatusCode::NOT_FOUND, "not_found", "person not found"),
        EngineError::Admin(a) => error(StatusCode::BAD_REQUEST, "invalid_input", a),
        // The writer logged its failure once, when it happened: not again per request.
        EngineError::Writer(_) => unavailable(e),
        EngineError::Store(_) | EngineError::Stopped => {
            tracing::warn!(error = %e, "Request failed on the engine.");
            unavailable(e)
        }
    }
}

/// 503 with `Retry-After`: nothing of the request was acknowledged; send it again later.
fn unavailable(e: &EngineError) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header(("Retry-After", "5"))
        .json(json!({"type": "server_error", "code": "unavailable", "detail": e.to_string()}))
}

/// The credentials of an `Authorization: Bearer <credentials>` header value, trimmed. The
/// scheme's name is case-insensitive (RFC 9110 §11.1): `bearer` is as good as `Bearer`.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, credentials) = authorization.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bearer_scheme_is_read_whatever_its_case() {
        for h in ["Bearer k1", "bearer k1", "BEARER  k1 ", " Bearer k1"] {
            assert_eq!(super::bearer(h), Some("k1"), "{h:?}");
        }
        for h in ["Basic k1", "Bearerk1", "k1", ""] {
            assert_eq!(super::bearer(h), None, "{h:?}");
        }
    }
}
