//! Routes, transports and the admin-key guard.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use actix_web::body::EitherBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, App, HttpServer};
use subtle::ConstantTimeEq;

use super::{admin, capture, error, insights, projects, read, AppState, Transport};
use crate::metrics::Metrics;

const CAPTURE_PATHS: [&str; 6] = ["/batch", "/capture", "/e", "/i/v0/e", "/track", "/engage"];

/// Register every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for p in CAPTURE_PATHS {
        cfg.route(p, web::post().to(capture::capture));
        cfg.route(&format!("{p}/"), web::post().to(capture::capture));
    }
    cfg.route(
        "/i/v1/analytics/events",
        web::post().to(capture::capture_v1),
    )
    .route(
        "/i/v1/analytics/events/",
        web::post().to(capture::capture_v1),
    );
    for p in ["/flags", "/flags/", "/decide", "/decide/"] {
        cfg.route(p, web::post().to(capture::flags))
            .route(p, web::get().to(capture::flags));
    }
    cfg.route(
        "/array/{token}/config",
        web::get().to(capture::remote_config),
    )
    .route(
        "/array/{token}/config.js",
        web::get().to(capture::remote_config_js),
    )
    .route("/_health", web::get().to(admin::health))
    .route("/metrics", web::get().to(admin::metrics))
    .service(
        web::scope("/api")
            .wrap(actix_web::middleware::from_fn(admin_guard))
            .route("/projects/", web::get().to(projects::list))
            .route("/projects/{project}/", web::get().to(projects::show))
            .route("/projects/{project}/", web::patch().to(projects::patch))
            .route(
                "/projects/{project}/buffer/",
                web::get().to(projects::buffer),
            )
            .route(
                "/projects/{project}/insights/unique_persons/",
                web::get().to(insights::unique_persons),
            )
            .route(
                "/projects/{project}/insights/funnel/",
                web::get().to(insights::funnel),
            )
            .route("/_test/clock", web::post().to(projects::test_clock))
            .route("/projects/{project}/persons/", web::get().to(read::persons))
            .route(
                "/projects/{project}/persons/{uuid}/",
                web::get().to(read::person),
            )
            .route(
                "/projects/{project}/persons/{uuid}/",
                web::delete().to(admin::delete),
            )
            .route(
                "/projects/{project}/persons/{uuid}/history/",
                web::get().to(read::history),
            )
            .route(
                "/projects/{project}/persons/{uuid}/split/",
                web::post().to(admin::split),
            )
            .route("/projects/{project}/events/", web::get().to(read::events))
            .route(
                "/projects/{project}/ingestion_warnings/",
                web::get().to(read::warnings),
            )
            .route("/snapshot", web::post().to(admin::snapshot)),
    )
    .default_service(web::to(admin::not_found));
}

/// On TCP, `/api/` needs `Authorization: Bearer <admin key>` (compared in constant time).
async fn admin_guard(
    req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl actix_web::body::MessageBody>>, actix_web::Error> {
    let transport = req.app_data::<web::Data<Transport>>().map(|t| *t.get_ref());
    if transport == Some(Transport::Tcp) {
        let st = req.app_data::<web::Data<AppState>>().cloned();
        let key = st.as_ref().and_then(|s| s.config.admin_key.clone());
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let denied = match key {
            None => Some((actix_web::http::StatusCode::FORBIDDEN, "no admin key is configured: /api/ is only on the Unix socket (see --admin-key-file)")),
            Some(k) if !bool::from(k.as_bytes().ct_eq(given.trim().as_bytes())) => {
                Some((actix_web::http::StatusCode::UNAUTHORIZED, "send Authorization: Bearer <admin key>"))
            }
            Some(_) => None,
        };
        if let Some((status, detail)) = denied {
            let resp = error(status, "permission_denied", detail);
            return Ok(req.into_response(resp).map_into_right_body());
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// Count every answer by status code.
async fn count_status(
    req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let metrics = req.app_data::<web::Data<Arc<Metrics>>>().cloned();
    let resp = next.call(req).await?;
    if let Some(m) = metrics {
        Metrics::inc(&m.requests, resp.status().as_str());
    }
    Ok(resp)
}

/// One server for one transport (a macro: `HttpServer`'s type cannot be named).
macro_rules! server {
    ($state:expr, $transport:expr, $workers:expr) => {{
        let state = $state;
        let max_body = state.config.limits.max_body_bytes;
        let metrics = web::Data::new(state.engine.metrics().clone());
        let transport = $transport;
        HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::Data::new(transport))
                .app_data(metrics.clone())
                .app_data(web::PayloadConfig::new(max_body))
                .app_data(web::JsonConfig::default().limit(1 << 20))
                .wrap(actix_web::middleware::from_fn(count_status))
                .wrap(actix_cors::Cors::permissive())
                .configure(routes)
        })
        .workers($workers)
        .disable_signals()
        .shutdown_timeout(30)
    }};
}

/// Start the Unix-socket server (mode `socket_mode`) and, with `tcp`, the TCP one.
pub fn start(
    state: web::Data<AppState>,
    socket: &Path,
    socket_mode: u32,
    tcp: Option<&str>,
    workers: usize,
) -> std::io::Result<Vec<Server>> {
    let unix = server!(state.clone(), Transport::Unix, workers).bind_uds(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(socket_mode))?;
    let mut servers = vec![unix.run()];
    if let Some(addr) = tcp {
        servers.push(server!(state, Transport::Tcp, workers).bind(addr)?.run());
    }
    Ok(servers)
}
