//! The connection watchdog: cuts off a kept-alive connection whose *next* request's headers do
//! not arrive in time.
//!
//! actix times only a connection's first request head (`client_request_timeout`) and the idle
//! gap before the next one (`keep_alive`). A client that starts a second request and then sends
//! its headers one byte a second would hold the connection forever. So every connection gets a
//! watchdog task: [`track`] (a middleware) marks when requests start and end, and when no
//! request has been in progress for `keep_alive + header_timeout`, the connection cannot be
//! idle (actix closes idle ones after `keep_alive`), so it is trickling: the watchdog shuts its
//! socket down. The task ends, and lets go of its duplicate of the socket, when actix drops the
//! connection.

use std::any::Any;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use actix_web::dev::{Extensions, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

/// The process's clock origin for [`Activity`] (an `AtomicU64` cannot hold an `Instant`).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// What the watchdog knows of one connection.
struct Activity {
    /// Requests being handled now.
    in_flight: AtomicU32,
    /// When the last request ended, or the connection opened (ms since [`EPOCH`]).
    idle_since_ms: AtomicU64,
}

/// Kept in the connection's extensions: dropped when actix drops the connection, which closes
/// `_closed` and so ends the watchdog.
struct Guard {
    activity: Arc<Activity>,
    _closed: tokio::sync::oneshot::Sender<()>,
}

/// `HttpServer::on_connect`: start the watchdog of a new connection. `stalled_after` is
/// `keep_alive + header_timeout`.
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions, stalled_after: Duration) {
    let socket = if let Some(s) = conn.downcast_ref::<actix_rt::net::UnixStream>() {
        socket2::SockRef::from(s).try_clone()
    } else if let Some(s) = conn.downcast_ref::<actix_rt::net::TcpStream>() {
        socket2::SockRef::from(s).try_clone()
    } else {
        tracing::debug!("No watchdog for a connection of an unknown transport.");
        return;
    };
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            // Said once: when descriptors run short, it would be said for every connection.
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(error = %e, "No watchdog for a connection: cannot duplicate its socket (said once; raise the open-files limit, ulimit -n).");
            }
            return;
        }
    };
    let activity = Arc::new(Activity {
        in_flight: AtomicU32::new(0),
        idle_since_ms: AtomicU64::new(now_ms()),
    });
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
    ext.insert(Guard {
        activity: activity.clone(),
        _closed: closed_tx,
    });
    tracing::debug!(?stalled_after, "Connection watchdog started.");
    let limit = stalled_after.as_millis() as u64;
    let period = (stalled_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    actix_rt::spawn(async move {
        let mut tick = actix_rt::time::interval(period);
        loop {
            tokio::select! {
                _ = &mut closed => return,
                _ = tick.tick() => {
                    let idle = now_ms().saturating_sub(activity.idle_since_ms.load(Ordering::Relaxed));
                    if activity.in_flight.load(Ordering::Relaxed) == 0 && idle > limit {
                        tracing::info!(
                            stalled_ms = idle,
                            "Cut off a connection whose next request's headers did not arrive in time."
                        );
                        let _ = socket.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
            }
        }
    });
}

/// Ends a request's span of activity however its handling ends (answer, error, or a dropped
/// future).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Middleware: tell the connection's watchdog that a request is in progress.
pub async fn track(
    req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    tracing::debug!(method = %req.method(), path = req.path(), "Request started.");
    let _in_flight = req.conn_data::<Guard>().map(|g| {
        g.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(g.activity.clone())
    });
    next.call(req).await
}
