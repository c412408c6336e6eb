//! The runner: one tokio task per connection sends that connection's requests in order, either
//! as fast as acknowledgements come back (closed loop) or on a fixed schedule (open loop).
//!
//! In the open loop a request's latency runs from its *scheduled* send time, so a slow answer
//! that delays the next requests is charged to them too (no coordinated omission). A connection
//! has at most one request in flight (HTTP/1.1 without pipelining), which keeps each user's
//! events in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use idstitch::cli::client::Conn;

use crate::daemon::Target;
use crate::workload::{stamp_sent_at, Request};

/// How requests are paced.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Next request as soon as the previous one is acknowledged.
    Closed,
    /// Requests at a fixed total rate of events per second, spread evenly over connections.
    Open {
        /// Events per second, over all connections.
        events_per_sec: f64,
    },
}

/// A request that was not answered `200 {"status": 1}`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RequestError {
    /// Connection number.
    pub conn: usize,
    /// Request number on that connection.
    pub index: usize,
    /// Its first event.
    pub request: String,
    /// HTTP status, if there was an answer.
    pub status: Option<u16>,
    /// The answer's body, or the transport error.
    pub got: String,
}

/// What a run measured.
pub struct RunOutcome {
    /// From the first send to the last acknowledgement.
    pub elapsed: Duration,
    /// Requests acknowledged with 200.
    pub requests: u64,
    /// Events in those requests.
    pub events: u64,
    /// Acknowledgement latency of each request, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Requests that failed (the first 100 per connection).
    pub errors: Vec<RequestError>,
}

/// A connection idle this long is replaced before its next request.
const IDLE_RECONNECT: Duration = Duration::from_secs(2);

/// The largest latency the histogram holds: one hour, in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Send every connection's requests; `plans[c]` goes on connection `c`.
pub async fn run(
    target: &Target,
    plans: Vec<Vec<Request>>,
    pace: Pace,
    progress_every: Option<Duration>,
) -> anyhow::Result<RunOutcome> {
    let n = plans.len();
    let total: u64 = plans.iter().flatten().map(|r| u64::from(r.events)).sum();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(target.connect().await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (c, (conn, requests)) in conns.into_iter().zip(plans).enumerate() {
        // Open loop: connection c sends its k-th request at start + (k + c/n) * interval.
        let interval = match pace {
            Pace::Closed => None,
            Pace::Open { events_per_sec } => {
                let per_conn_rate = events_per_sec / n as f64;
                let batch = requests.first().map_or(1, |r| r.events) as f64;
                Some(Duration::from_secs_f64(batch / per_conn_rate))
            }
        };
        let schedule = interval.map(|i| (i, i.mul_f64(c as f64 / n as f64)));
        tasks.push(tokio::spawn(drive(
            c,
            target.clone(),
            conn,
            requests,
            start,
            schedule,
            done.clone(),
        )));
    }
    let reporter = progress_every.map(|every| {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(every).await;
                let now = (Instant::now(), done.load(Ordering::Relaxed));
                let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
                eprintln!(
                    "[load] {:>10} / {total} events, {rate:>9.0} events/s",
                    now.1
                );
                last = now;
            }
        })
    });
    let mut out = RunOutcome {
        elapsed: Duration::ZERO,
        requests: 0,
        events: 0,
        latency_us: histogram(),
        errors: Vec::new(),
    };
    for task in tasks {
        let r = task.await?;
        out.requests += r.requests;
        out.events += r.events;
        out.latency_us.add(&r.latency_us)?;
        out.errors.extend(r.errors);
    }
    out.elapsed = start.elapsed();
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    Ok(out)
}

/// One connection's loop.
async fn drive(
    c: usize,
    target: Target,
    mut conn: Conn,
    requests: Vec<Request>,
    start: Instant,
    schedule: Option<(Duration, Duration)>,
    done: Arc<AtomicU64>,
) -> RunOutcome {
    let mut out = RunOutcome {
        elapsed: Duration::ZERO,
        requests: 0,
        events: 0,
        latency_us: histogram(),
        errors: Vec::new(),
    };
    let headers = [("content-type", "application/json")];
    let mut last_answer = Instant::now();
    for (k, mut req) in requests.into_iter().enumerate() {
        let t0 = match schedule {
            Some((interval, offset)) => {
                let at = start + offset + interval.mul_f64(k as f64);
                tokio::time::sleep_until(at.into()).await;
                at
            }
            None => Instant::now(),
        };
        if last_answer.elapsed() > IDLE_RECONNECT {
            // The server closes idle keep-alive connections (actix-web: after 5 s).
            match target.connect().await {
                Ok(fresh) => conn = fresh,
                Err(e) => {
                    out.errors.push(RequestError {
                        conn: c,
                        index: k,
                        request: req.first.clone(),
                        status: None,
                        got: format!("cannot reconnect: {e:#}"),
                    });
                    break;
                }
            }
        }
        stamp_sent_at(&mut req.body, chrono::Utc::now());
        let answer = conn.request("POST", "/batch/", &headers, req.body).await;
        last_answer = Instant::now();
        let latency = t0.elapsed();
        let error = |status, got: String| RequestError {
            conn: c,
            index: k,
            request: req.first.clone(),
            status,
            got,
        };
        match answer {
            Ok(r) if r.status == 200 && r.json() == serde_json::json!({"status": 1}) => {
                out.latency_us
                    .saturating_record(latency.as_micros().max(1) as u64);
                out.requests += 1;
                out.events += u64::from(req.events);
                done.fetch_add(u64::from(req.events), Ordering::Relaxed);
            }
            Ok(r) => {
                out.errors.push(error(
                    Some(r.status),
                    String::from_utf8_lossy(&r.body)
                        .chars()
                        .take(2_000)
                        .collect(),
                ));
                if out.errors.len() >= 100 {
                    break;
                }
            }
            Err(e) => {
                // The connection is gone: the rest of this connection's users cannot be sent in order.
                out.errors
                    .push(error(None, format!("transport error: {e:#}")));
                break;
            }
        }
    }
    out
}
