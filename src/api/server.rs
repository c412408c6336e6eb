//! Routes, transports, the admin-key guard and the connection limits.

use std::cell::Cell;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::EitherBody;
use actix_web::dev::{Payload, Server, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::uri::{PathAndQuery, Uri};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{guard, web, App, HttpMessage, HttpServer};
use futures_util::Stream;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::decode::DecodeError;
use super::{admin, capture, error, insights, projects, read, AppState, Transport};
use crate::metrics::Metrics;

/// Limits on connections and on slow clients, per listener (`idstitch serve --help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections served at once per worker thread; beyond it the listener stops accepting
    /// (further clients wait in the kernel's backlog until a connection closes).
    pub max_connections: usize,
    /// Time a new connection has to send its first request's head; then 408 and close.
    pub header_timeout: Duration,
    /// Time a request's whole body has to arrive after its head; then 408 and close.
    pub body_timeout: Duration,
    /// Idle time after which a kept-alive connection is closed (zero: no keep-alive).
    pub keep_alive: Duration,
    /// Request body bytes held at once across all connections and both listeners; a request
    /// whose declared body does not fit waits until others finish.
    pub max_inflight_body_bytes: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(5),
            max_inflight_body_bytes: 256 << 20,
        }
    }
}

const CAPTURE_PATHS: [&str; 6] = ["/batch", "/capture", "/e", "/i/v0/e", "/track", "/engage"];

/// A path and the handlers of its methods: any other method is answered 405 with an `Allow`
/// header naming these, rather than the 404 of an unknown path. A `GET` route also answers
/// `HEAD` (RFC 9110 §9.3.2: its headers without the body, which actix-http drops), so that
/// `curl -I` and load balancers' health checks work.
fn resource(path: &str, routes: Vec<(Method, actix_web::Route)>) -> actix_web::Resource {
    let allow = routes
        .iter()
        .flat_map(|(m, _)| match *m {
            Method::GET => vec!["GET", "HEAD"],
            _ => vec![m.as_str()],
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut r = web::resource(path);
    for (m, route) in routes {
        r = r.route(match m {
            Method::GET => route.guard(guard::Any(guard::Get()).or(guard::Head())),
            m => route.method(m),
        });
    }
    r.default_service(web::to(move || admin::method_not_allowed(allow.clone())))
}

/// Register every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let post = |f| vec![(Method::POST, f)];
    for p in CAPTURE_PATHS {
        cfg.service(resource(p, post(web::route().to(capture::capture))));
        cfg.service(resource(
            &format!("{p}/"),
            post(web::route().to(capture::capture)),
        ));
    }
    for p in ["/i/v1/analytics/events", "/i/v1/analytics/events/"] {
        cfg.service(resource(p, post(web::route().to(capture::capture_v1))));
    }
    for p in ["/flags", "/flags/", "/decide", "/decide/"] {
        cfg.service(resource(
            p,
            vec![
                (Method::GET, web::route().to(capture::flags)),
                (Method::POST, web::route().to(capture::flags)),
            ],
        ));
    }
    let get = |f| vec![(Method::GET, f)];
    cfg.service(resource(
        "/array/{token}/config",
        get(web::route().to(capture::remote_config)),
    ))
    .service(resource(
        "/array/{token}/config.js",
        get(web::route().to(capture::remote_config_js)),
    ))
    .service(resource("/_health", get(web::route().to(admin::health))))
    .service(resource("/metrics", get(web::route().to(admin::metrics))))
    .service(
        // Every path here ends with `/`: [`api_trailing_slash`] adds it to one sent without.
        web::scope("/api")
            .wrap(actix_web::middleware::from_fn(admin_guard))
            .service(resource("/projects/", get(web::route().to(projects::list))))
            .service(resource(
                "/projects/{project}/",
                vec![
                    (Method::GET, web::route().to(projects::show)),
                    (Method::PATCH, web::route().to(projects::patch)),
                ],
            ))
            .service(resource(
                "/projects/{project}/buffer/",
                get(web::route().to(projects::buffer)),
            ))
            .service(resource(
                "/projects/{project}/insights/unique_persons/",
                get(web::route().to(insights::unique_persons)),
            ))
            .service(resource(
                "/projects/{project}/insights/funnel/",
                get(web::route().to(insights::funnel)),
            ))
            .service(resource(
                "/_test/clock/",
                post(web::route().to(projects::test_clock)),
            ))
            .service(resource(
                "/projects/{project}/persons/",
                get(web::route().to(read::persons)),
            ))
            .service(resource(
                "/projects/{project}/persons/{uuid}/",
                vec![
                    (Method::GET, web::route().to(read::person)),
                    (Method::DELETE, web::route().to(admin::delete)),
                ],
            ))
            .service(resource(
                "/projects/{project}/persons/{uuid}/history/",
                get(web::route().to(read::history)),
            ))
            .service(resource(
                "/projects/{project}/persons/{uuid}/split/",
                post(web::route().to(admin::split)),
            ))
            .service(resource(
                "/projects/{project}/events/",
                get(web::route().to(read::events)),
            ))
            .service(resource(
                "/projects/{project}/ingestion_warnings/",
                get(web::route().to(read::warnings)),
            ))
            .service(resource(
                "/snapshot/",
                post(web::route().to(admin::snapshot)),
            )),
    )
    .default_service(web::to(admin::not_found));
}

/// A path under `/api/` is served with or without its trailing slash, as PostHog's API is (its
/// router takes `/?`): one sent without gets it before routing, so that every `/api/` route
/// is registered once, and a `next` link names the path with it.
async fn api_trailing_slash(
    mut req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let path = req.path();
    if path.starts_with("/api/") && !path.ends_with('/') {
        let with_slash = match req.query_string() {
            "" => format!("{path}/"),
            q => format!("{path}/?{q}"),
        };
        let mut parts = req.head().uri.clone().into_parts();
        parts.path_and_query = PathAndQuery::try_from(with_slash).ok();
        if let Ok(uri) = Uri::from_parts(parts) {
            req.match_info_mut().get_mut().update(&uri);
            req.head_mut().uri = uri;
        }
    }
    next.call(req).await
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
            .and_then(super::bearer)
            .unwrap_or("");
        let denied = match key {
            None => Some((actix_web::http::StatusCode::FORBIDDEN, "no admin key is configured: /api/ is only on the Unix socket (see --admin-key-file)")),
            Some(k) if !admin_key_matches(&k, given) => {
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

/// Cuts off a body that has not fully arrived `body_timeout` after the request's head (actix
/// itself only times the head): the handler's body read fails, and the client gets 408 and a
/// closed connection. Also gives the body-size refusal of `web::PayloadConfig` the JSON shape of
/// every other error answer.
async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl actix_web::body::MessageBody>>, actix_web::Error> {
    let limits = req
        .app_data::<web::Data<ConnLimits>>()
        .map(|l| *l.get_ref());
    let limits = limits.unwrap_or_default();
    let expired = Rc::new(Cell::new(false));
    let payload = Deadline {
        inner: req.take_payload(),
        sleep: Box::pin(actix_rt::time::sleep(limits.body_timeout)),
        expired: expired.clone(),
    };
    req.set_payload(Payload::Stream {
        payload: Box::pin(payload),
    });
    let resp = next.call(req).await?;
    let overflow = resp
        .response()
        .error()
        .and_then(|e| e.as_error::<PayloadError>())
        .is_some_and(|e| matches!(e, PayloadError::Overflow));
    let replacement = if expired.get() {
        let secs = limits.body_timeout.as_secs_f64();
        tracing::info!(
            timeout_s = secs,
            "Cut off a request whose body was too slow."
        );
        let detail = format!("The request body did not arrive within {secs} s of its headers; send it faster, or in smaller batches.");
        Some(error(StatusCode::REQUEST_TIMEOUT, "body_timeout", detail))
    } else if overflow {
        let limit = req_limit(&resp);
        let detail = DecodeError::PayloadTooLarge { limit };
        Some(error(StatusCode::PAYLOAD_TOO_LARGE, detail.code(), detail))
    } else {
        None
    };
    Ok(match replacement {
        Some(mut answer) => {
            answer
                .head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
            resp.into_response(answer).map_into_right_body()
        }
        None => resp.map_into_left_body(),
    })
}

/// The body-size limit in force for a request.
fn req_limit<B>(resp: &ServiceResponse<B>) -> usize {
    let req = resp.request();
    match (
        req.app_data::<web::Data<AppState>>(),
        req.app_data::<web::Data<InflightBodies>>(),
    ) {
        (Some(st), Some(bodies)) => body_limit(st, bodies),
        (st, _) => st.map_or(0, |s| s.config.limits.max_body_bytes),
    }
}

/// The largest body taken: `--max-body-bytes`, and never more than the in-flight budget,
/// which could never hold it (and whose overdraft is only that large).
fn body_limit(st: &AppState, bodies: &InflightBodies) -> usize {
    st.config.limits.max_body_bytes.min(bodies.budget())
}

/// A request body that fails once its deadline has passed, and says so in `expired`.
struct Deadline {
    inner: Payload,
    sleep: Pin<Box<actix_rt::time::Sleep>>,
    expired: Rc<Cell<bool>>,
}

impl Stream for Deadline {
    type Item = Result<web::Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.expired.set(true);
        let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "request body too slow");
        Poll::Ready(Some(Err(PayloadError::Io(e))))
    }
}

/// Whether `given` is the admin key, in time that depends on neither: both are hashed first
/// (so not even the length is compared early), then the digests are compared in constant time.
/// Neither key is ever logged.
fn admin_key_matches(expected: &str, given: &str) -> bool {
    let (expected, given) = (Sha256::digest(expected), Sha256::digest(given));
    bool::from(expected.as_slice().ct_eq(given.as_slice()))
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

/// Request body bytes held at once, in KiB permits (a `Semaphore` counts in `u32`).
///
/// A request takes its room a part at a time (a body as it arrives, then what decompression
/// adds), so two requests that each hold part of the budget could wait for each other's part
/// forever (until the body timeout answered both 408). The overdraft breaks that: a request
/// that holds room and has to wait for more may take the one overdraft instead, and then goes
/// on without taking more room, so it finishes and gives everything back. A request that
/// holds nothing waits for room only: it can delay others (the semaphore hands it freed room
/// first), but holds none of its own while it waits, so it is no part of such a cycle. No
/// body is over the budget ([`body_limit`]), so memory held at once stays under twice the
/// budget. A slow client can still hold room, or the overdraft, until `--body-timeout` cuts
/// it off, and others wait.
#[derive(Clone)]
pub struct InflightBodies {
    permits: Arc<tokio::sync::Semaphore>,
    overdraft: Arc<tokio::sync::Semaphore>,
    max_kib: u32,
}

impl InflightBodies {
    /// Room for `max_bytes` of request bodies at once.
    pub fn new(max_bytes: usize) -> Self {
        let max_kib = u32::try_from(max_bytes.div_ceil(1024)).unwrap_or(u32::MAX >> 4);
        InflightBodies {
            permits: Arc::new(tokio::sync::Semaphore::new(max_kib as usize)),
            overdraft: Arc::new(tokio::sync::Semaphore::new(1)),
            max_kib,
        }
    }

    /// `kib` of room, or, for a request that `holds` room already, the overdraft if it comes
    /// first. `None` only if a semaphore were closed, which they never are.
    fn room_or_overdraft(&self, kib: u32, holds: bool) -> Acquire {
        let (permits, overdraft) = (self.permits.clone(), self.overdraft.clone());
        Box::pin(async move {
            tokio::select! {
                biased;
                p = permits.acquire_many_owned(kib) => p.ok().map(|p| (p, false)),
                o = overdraft.acquire_owned(), if holds => o.ok().map(|o| (o, true)),
            }
        })
    }
}

/// Whether a request went over the in-flight budget (holds the overdraft): it takes no more
/// room, so it never waits for any, since waiting while holding the overdraft is what the
/// overdraft is there to prevent (a request extension, set by [`bound_inflight_bodies`]).
#[derive(Clone, Default)]
pub struct Overdrawn(Rc<std::cell::Cell<bool>>);

impl Overdrawn {
    pub fn get(&self) -> bool {
        self.0.get()
    }
}

/// Why a body's decoded bytes found no room in the in-flight budget: it stayed full for the
/// whole wait.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy {
    /// How long it was waited for.
    pub waited: Duration,
}

/// Room in the in-flight budget, given back when dropped (`None`: nothing was charged).
pub type Room = Option<tokio::sync::OwnedSemaphorePermit>;

impl InflightBodies {
    /// Whether a body of `bytes` could ever be held: the whole budget is at least that.
    pub fn fits(&self, bytes: usize) -> bool {
        bytes.div_ceil(1024) <= self.max_kib as usize
    }

    /// The budget, in bytes.
    pub fn budget(&self) -> usize {
        self.max_kib as usize * 1024
    }

    /// Room for `bytes` more now, or `None` when there is not that much free.
    pub fn try_charge(&self, bytes: usize) -> Option<Room> {
        match Self::kib(bytes) {
            0 => Some(None),
            kib => self
                .permits
                .clone()
                .try_acquire_many_owned(kib)
                .ok()
                .map(Some),
        }
    }

    /// Room for `bytes` more (a body that grew when it was decoded: a 20 KB gzip can inflate
    /// to 20 MiB, and its events are held until the request is answered), waiting up to
    /// `wait` for it or for the overdraft (the caller holds its body's room, and not the
    /// overdraft: see [`Overdrawn`]). Check [`InflightBodies::fits`] first: more than the
    /// budget never comes.
    pub async fn charge(&self, bytes: usize, wait: Duration) -> Result<Room, Busy> {
        let kib = Self::kib(bytes);
        if kib == 0 {
            return Ok(None);
        }
        match actix_rt::time::timeout(wait, self.room_or_overdraft(kib, true)).await {
            Ok(room) => Ok(room.map(|(permit, _)| permit)),
            Err(_) => Err(Busy { waited: wait }),
        }
    }

    fn kib(bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
    }
}

/// Bounds the memory of concurrent request bodies: a body takes permits of the budget for its
/// bytes as they arrive (a KiB each, rounded up; [`Charged`]) and holds them until its request
/// is answered; a chunk that does not fit waits for room or for the overdraft (within the
/// body deadline, which this runs inside of). Charging what arrived, not what a
/// `Content-Length` declares, keeps a few connections that declare large bodies and send
/// nothing from holding the budget and stalling every other request. Requests without a body
/// pass.
async fn bound_inflight_bodies(
    mut req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let bodies = req.app_data::<web::Data<InflightBodies>>().cloned();
    let has_body = !matches!(
        *req.method(),
        actix_web::http::Method::GET | actix_web::http::Method::HEAD
    );
    let held = Rc::new(std::cell::RefCell::new(Vec::new()));
    if let Some(b) = bodies.filter(|_| has_body) {
        let overdrawn = Overdrawn::default();
        req.extensions_mut().insert(overdrawn.clone());
        let charged = Charged {
            inner: req.take_payload(),
            bodies: b.get_ref().clone(),
            held: held.clone(),
            bytes: 0,
            kib: 0,
            overdrawn,
            waiting: None,
        };
        req.set_payload(Payload::Stream {
            payload: Box::pin(charged),
        });
    }
    let resp = next.call(req).await;
    // The body's bytes are the handler's until it answered: the permits go now.
    drop(held);
    resp
}

/// The wait for room or for the overdraft: the permit, and whether it is the overdraft.
type Acquire = Pin<Box<dyn Future<Output = Option<(tokio::sync::OwnedSemaphorePermit, bool)>>>>;

/// A request body that takes permits of the in-flight budget for its bytes as they arrive,
/// into `held`, which [`bound_inflight_bodies`] keeps until the request is answered.
struct Charged {
    inner: Payload,
    bodies: InflightBodies,
    held: Rc<std::cell::RefCell<Vec<tokio::sync::OwnedSemaphorePermit>>>,
    /// Bytes arrived so far.
    bytes: usize,
    /// KiB charged so far.
    kib: u32,
    /// Set once this request holds the overdraft: its later chunks pass uncharged.
    overdrawn: Overdrawn,
    /// A chunk that arrived, and the wait for its permits or the overdraft.
    waiting: Option<(web::Bytes, Acquire)>,
}

impl Stream for Charged {
    type Item = Result<web::Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some((_, acquire)) = &mut self.waiting {
            let Poll::Ready(permit) = acquire.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            let (chunk, _) = self.waiting.take().expect("waiting");
            // The semaphores are never closed; were they, the chunk would go uncharged.
            if let Some((p, overdraft)) = permit {
                self.held.borrow_mut().push(p);
                self.overdrawn.0.set(overdraft);
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        let chunk = match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => chunk,
            other => return other,
        };
        self.bytes += chunk.len();
        let due = InflightBodies::kib(self.bytes).min(self.bodies.max_kib);
        let more = due.saturating_sub(self.kib);
        if more == 0 || self.overdrawn.get() {
            return Poll::Ready(Some(Ok(chunk)));
        }
        self.kib = due;
        match self.bodies.permits.clone().try_acquire_many_owned(more) {
            Ok(p) => {
                self.held.borrow_mut().push(p);
                Poll::Ready(Some(Ok(chunk)))
            }
            Err(_) => {
                let holds = !self.held.borrow().is_empty();
                self.waiting = Some((chunk, self.bodies.room_or_overdraft(more, holds)));
                self.poll_next(cx)
            }
        }
    }
}

/// One server for one transport (a macro: `HttpServer`'s type cannot be named).
macro_rules! server {
    ($state:expr, $transport:expr, $workers:expr, $limits:expr, $bodies:expr) => {{
        let bodies = web::Data::new($bodies);
        let state = $state;
        let max_body = body_limit(&state, &bodies);
        let metrics = web::Data::new(state.engine.metrics().clone());
        let transport = $transport;
        let limits: ConnLimits = $limits;
        HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::Data::new(transport))
                .app_data(web::Data::new(limits))
                .app_data(metrics.clone())
                .app_data(bodies.clone())
                .app_data(web::PayloadConfig::new(max_body))
                .app_data(web::QueryConfig::default().error_handler(query_error))
                .app_data(
                    web::JsonConfig::default()
                        .limit(1 << 20)
                        .error_handler(|e, _| json_error(e, "invalid_body")),
                )
                .wrap(actix_web::middleware::from_fn(body_deadline))
                .wrap(actix_web::middleware::from_fn(bound_inflight_bodies))
                .wrap(actix_web::middleware::from_fn(super::watchdog::track))
                .wrap(actix_web::middleware::from_fn(count_status))
                .wrap(actix_web::middleware::from_fn(api_trailing_slash))
                .wrap(actix_cors::Cors::permissive())
                .configure(routes)
        })
        .on_connect(move |conn, ext| {
            super::watchdog::on_connect(conn, ext, limits.keep_alive + limits.header_timeout)
        })
        .workers($workers)
        .max_connections(limits.max_connections)
        .client_request_timeout(limits.header_timeout)
        .client_disconnect_timeout(Duration::from_secs(1))
        .keep_alive(match limits.keep_alive.is_zero() {
            true => actix_web::http::KeepAlive::Disabled,
            false => actix_web::http::KeepAlive::Timeout(limits.keep_alive),
        })
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
    limits: ConnLimits,
) -> std::io::Result<Vec<Server>> {
    // Bound here and handed over with `listen_uds`: actix's `bind_uds` skips `on_connect`, which
    // the connection watchdog needs.
    // The socket file is created with the process umask: bind under 0o177, so that it is
    // never more open than 0600 (not even until the chmod below gives it `socket_mode`).
    // SAFETY: umask only swaps the process's file mode mask; it cannot fail. Files created
    // by other threads meanwhile get 0600 at most, never more than they would.
    let on = |what: String| {
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    let on_socket = on(format!("on the socket {}", socket.display()));
    let umask = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(socket);
    unsafe { libc::umask(umask) };
    let listener = bound.map_err(on_socket.clone())?;
    // One bound for both listeners and all their workers.
    let bodies = InflightBodies::new(limits.max_inflight_body_bytes);
    let unix = server!(
        state.clone(),
        Transport::Unix,
        workers,
        limits,
        bodies.clone()
    )
    .listen_uds(listener)
    .map_err(on_socket.clone())?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(socket_mode))
        .map_err(on_socket)?;
    let mut servers = vec![unix.run()];
    if let Some(addr) = tcp {
        let tcp = server!(state, Transport::Tcp, workers, limits, bodies)
            .bind(addr)
            .map_err(on(format!("on --http {addr}")))?;
        servers.push(tcp.run());
    }
    Ok(servers)
}

/// An extractor's refusal (a query string or JSON body that does not parse) in the API's JSON
/// error shape, with the status actix gives it (400, or 413 for a body over the limit).
/// A query string the handler's type refuses: which parameter, and what it takes (serde's
/// message names neither: "invalid digit found in string").
fn query_error(
    e: actix_web::error::QueryPayloadError,
    req: &actix_web::HttpRequest,
) -> actix_web::Error {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    // Repeated, a parameter the endpoint reads fails as one value: serde names it.
    let repeated = e
        .to_string()
        .split_once("duplicate field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(k, _)| format!("{k} is given more than once: give it once"));
    let wrong = repeated.or_else(|| {
        pairs.iter().find_map(|(k, v)| {
            let takes = match k.as_str() {
                "limit" if v.parse::<usize>().is_err() => "a whole number (1 or more)",
                "window_secs" if v.parse::<i64>().is_err() => "a whole number of seconds",
                "after" if req.path().ends_with("/events/") && v.parse::<u64>().is_err() => {
                    "the seq of the last event seen (as a `next` URL gives it)"
                }
                "explain" | "filter_test_accounts" | "delete_events"
                    if !matches!(v.as_str(), "true" | "false") =>
                {
                    "true or false"
                }
                _ => return None,
            };
            Some(format!("{k}={v:?} is not valid: {k} takes {takes}"))
        })
    });
    match wrong {
        Some(detail) => {
            let response = super::error(StatusCode::BAD_REQUEST, "invalid_query", detail);
            actix_web::error::InternalError::from_response(e, response).into()
        }
        None => json_error(e, "invalid_query"),
    }
}

fn json_error(e: impl actix_web::ResponseError + 'static, code: &str) -> actix_web::Error {
    let response = super::error(e.status_code(), code, &e);
    actix_web::error::InternalError::from_response(e, response).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_admin_key_matches() {
        let key = "s3cret-key";
        assert!(admin_key_matches(key, "s3cret-key"));
        for wrong in [
            "",
            "s3cret-ke",
            "s3cret-key2",
            "S3cret-key",
            "s3cret-kez",
            "x",
        ] {
            assert!(!admin_key_matches(key, wrong), "{wrong:?}");
        }
    }

    #[actix_rt::test]
    async fn decoded_bytes_take_room_now_or_wait_for_it() {
        let bodies = InflightBodies::new(64 * 1024);
        let wait = Duration::from_millis(50);
        assert!(bodies.fits(64 * 1024) && !bodies.fits(64 * 1024 + 1));
        assert_eq!(bodies.budget(), 65536);
        assert!(bodies.try_charge(0).unwrap().is_none());
        let most = bodies.try_charge(60 * 1024).unwrap();
        assert_eq!(bodies.permits.available_permits(), 4);
        // 10 KiB more does not fit while `most` is held: not now, and not within the wait.
        assert!(bodies.try_charge(10 * 1024).is_none());
        // Waiting, it takes the overdraft: memory goes over the budget by this request.
        let over = bodies.charge(10 * 1024, wait).await.unwrap();
        assert!(over.is_some());
        assert_eq!(bodies.overdraft.available_permits(), 0);
        assert_eq!(bodies.permits.available_permits(), 4);
        // With the overdraft taken, another waits and gives up.
        let busy = bodies.charge(10 * 1024, wait).await;
        assert_eq!(busy.unwrap_err(), Busy { waited: wait });
        // Once `most` is given back, room comes first, and the overdraft stays free.
        drop((most, over));
        let room = bodies.charge(10 * 1024, wait).await.unwrap();
        assert_eq!(bodies.permits.available_permits(), 54);
        assert_eq!(bodies.overdraft.available_permits(), 1);
        drop(room);
        assert_eq!(bodies.permits.available_permits(), 64);
    }
}
