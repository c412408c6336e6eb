//! Prometheus metrics. Names follow `idstitch_<noun>_<unit>_total`; label values are bounded.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A label with one bounded value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// The value (a reason, a status class, an outcome).
    pub kind: String,
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    /// Events stored.
    pub events_accepted: Counter,
    /// Events rejected or dropped, by reason.
    pub events_rejected: Family<Kind, Counter>,
    /// Duplicate deliveries acknowledged without effect.
    pub events_duplicate: Counter,
    /// HTTP requests by status code.
    pub requests: Family<Kind, Counter>,
    /// Persons merged.
    pub merges: Counter,
    /// Merges refused, by reason.
    pub merge_refusals: Family<Kind, Counter>,
    /// Log entries appended.
    pub log_appends: Counter,
    /// Synced group writes.
    pub log_fsyncs: Counter,
    /// Duration of one synced group write, in seconds.
    pub fsync_seconds: Histogram,
    /// Where a capture request's time goes, in seconds, by stage: `decode` (parse and
    /// normalise the body), `route` (queued for and decided by the router), `durable` (waiting
    /// for the group write that holds its last entry).
    pub capture_stage_seconds: Family<Kind, Histogram, fn() -> Histogram>,
    /// Person actors alive.
    pub resident_actors: Gauge,
    /// Events waiting in the conversion buffer.
    pub buffer_waiting: Gauge,
    /// Events the conversion buffer released.
    pub buffer_released: Counter,
    /// Events that would have waited but were processed at once: the buffers were full.
    pub buffer_full: Counter,
    /// Age of the oldest waiting event, in seconds (0 when none waits).
    pub buffer_oldest_age_seconds: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// All metrics, registered.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let m = Metrics {
            events_accepted: Counter::default(),
            events_rejected: Family::default(),
            events_duplicate: Counter::default(),
            requests: Family::default(),
            merges: Counter::default(),
            merge_refusals: Family::default(),
            log_appends: Counter::default(),
            log_fsyncs: Counter::default(),
            fsync_seconds: latency_histogram(),
            capture_stage_seconds: Family::new_with_constructor(latency_histogram),
            resident_actors: Gauge::default(),
            buffer_waiting: Gauge::default(),
            buffer_released: Counter::default(),
            buffer_full: Counter::default(),
            buffer_oldest_age_seconds: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "idstitch_events_accepted",
            "Events stored",
            m.events_accepted.clone(),
        );
        registry.register(
            "idstitch_events_rejected",
            "Events rejected or dropped",
            m.events_rejected.clone(),
        );
        registry.register(
            "idstitch_events_duplicate",
            "Duplicate deliveries ignored",
            m.events_duplicate.clone(),
        );
        registry.register(
            "idstitch_http_requests",
            "HTTP requests by status",
            m.requests.clone(),
        );
        registry.register("idstitch_merges", "Persons merged", m.merges.clone());
        registry.register(
            "idstitch_merge_refusals",
            "Merges refused",
            m.merge_refusals.clone(),
        );
        registry.register(
            "idstitch_log_appends",
            "Log entries appended",
            m.log_appends.clone(),
        );
        registry.register(
            "idstitch_log_fsyncs",
            "Synced group writes",
            m.log_fsyncs.clone(),
        );
        registry.register(
            "idstitch_log_fsync_seconds",
            "Synced group write latency",
            m.fsync_seconds.clone(),
        );
        registry.register(
            "idstitch_capture_stage_seconds",
            "Time of a capture request by stage (decode, route, durable)",
            m.capture_stage_seconds.clone(),
        );
        registry.register(
            "idstitch_resident_actors",
            "Person actors alive",
            m.resident_actors.clone(),
        );
        registry.register(
            "idstitch_buffer_events_waiting",
            "Events waiting in the conversion buffer",
            m.buffer_waiting.clone(),
        );
        registry.register(
            "idstitch_buffer_events_released",
            "Events released by the conversion buffer",
            m.buffer_released.clone(),
        );
        registry.register(
            "idstitch_buffer_full_events",
            "Events processed at once that would have waited: the buffers held --buffer-max-waiting",
            m.buffer_full.clone(),
        );
        registry.register(
            "idstitch_buffer_oldest_age_seconds",
            "Age of the oldest event waiting in the conversion buffer",
            m.buffer_oldest_age_seconds.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Record `seconds` spent in a capture `stage`.
    pub fn capture_stage(&self, stage: &'static str, seconds: f64) {
        self.capture_stage_seconds
            .get_or_create(&Kind {
                kind: stage.to_string(),
            })
            .observe(seconds);
    }

    /// Shorthand for a labelled counter.
    pub fn inc(family: &Family<Kind, Counter>, kind: &str) {
        family
            .get_or_create(&Kind {
                kind: kind.to_string(),
            })
            .inc();
    }
}

/// Buckets from 50 µs to about 1.6 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}
