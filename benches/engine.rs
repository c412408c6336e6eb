//! Micro-benchmarks of the engine's three hot loops (issue 2 targets):
//! - normalise + decide + apply one typical event in memory (target: 1,000,000 events/s),
//!   from the event's JSON text (`normalize_decide_apply`) and from the decoded event that a
//!   capture worker hands to normalisation (`normalize_decide_apply_decoded`);
//! - (no target of its own) a capture worker's decoding and normalising of a batch of 100;
//! - log append through the group-commit writer (target: 500,000 entries/s), and beside it
//!   the limit: raw RocksDB puts of the same records, in synced batches as large;
//! - full replay of the log into scratch state (target: 1,000,000 entries/s).
//!
//! Run: `cargo bench --bench engine` (numbers in benches/README.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use idstitch::actors::{writer::MAX_GROUP, WriterHandle};
use idstitch::api::decode::{decode_capture, RawRequest};
use idstitch::api::DecodeLimits;
use idstitch::domain::memstate::MemState;
use idstitch::domain::{
    apply_entry, decide, lookups, normalize_wire, Ctx, Entry, ProjectId, Seq, WarningLimiter,
    WireEvent,
};
use idstitch::metrics::Metrics;
use idstitch::store::{codec, log::write_group, verify::replay, Store};
use serde_json::{json, Value};

/// The daemon's allocator (src/main.rs), so these numbers are the daemon's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "load/baseline.rs"]
#[allow(dead_code)] // the load generator's baseline also reads a data dir's record sizes
mod baseline;

const P: ProjectId = ProjectId(1);

/// A posthog-js-like pageview: about 40 properties, about 1 KB.
fn typical(i: u64, users: u64) -> Value {
    let mut props = serde_json::Map::new();
    for (k, v) in [
        ("$os", "Mac OS X"),
        ("$os_version", "14.4.1"),
        ("$browser", "Chrome"),
        ("$browser_version", "126"),
        ("$device_type", "Desktop"),
        (
            "$current_url",
            "https://app.example.com/projects/42/insights",
        ),
        ("$host", "app.example.com"),
        ("$pathname", "/projects/42/insights"),
        ("$referrer", "$direct"),
        ("$referring_domain", "$direct"),
        ("$lib", "web"),
        ("$lib_version", "1.449.2"),
        ("$session_id", "01903c4e-6a0b-7c3f-9a5e-4d1f2a3b4c5d"),
        ("$window_id", "01903c4e-6a0b-7c3f-9a5e-4d1f2a3b4c5e"),
        ("$pageview_id", "01903c4e-6a0b-7c3f-9a5e-4d1f2a3b4c5f"),
        ("title", "Insights • Example"),
    ] {
        props.insert(k.into(), json!(v));
    }
    for n in 0..24 {
        props.insert(format!("prop_{n}"), json!(n * 7));
    }
    props.insert("$screen_height".into(), json!(1080));
    props.insert("$screen_width".into(), json!(1920));
    json!({"event": "$pageview", "distinct_id": format!("user-{}", i % users), "uuid": format!("ev-{i}"), "properties": props})
}

fn bench_decide(c: &mut Criterion) {
    let events: Vec<String> = (0..10_000).map(|i| typical(i, 1_000).to_string()).collect();
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("normalize_decide_apply", |b| {
        b.iter(|| {
            let mut state = MemState::default();
            let mut limiter = WarningLimiter::default();
            for (i, raw) in events.iter().enumerate() {
                step(&mut state, &mut limiter, i as u64 + 1, raw);
            }
            state
        })
    });
    // The three steps alone: the events are parsed before the timing starts.
    g.bench_function("normalize_decide_apply_decoded", |b| {
        b.iter_batched(
            || {
                events
                    .iter()
                    .map(|t| WireEvent::from_json(t).expect("JSON"))
                    .collect::<Vec<_>>()
            },
            |decoded| {
                let mut state = MemState::default();
                let mut limiter = WarningLimiter::default();
                for (i, ev) in decoded.into_iter().enumerate() {
                    step_decoded(&mut state, &mut limiter, i as u64 + 1, ev);
                }
                state
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// One event through the engine's pure path, from its JSON text: parse (as the capture
/// endpoints do, properties left as text), then [`step_decoded`]. Returns the log entry.
fn step(state: &mut MemState, limiter: &mut WarningLimiter, seq: u64, text: &str) -> Entry {
    step_decoded(
        state,
        limiter,
        seq,
        WireEvent::from_json(text).expect("JSON"),
    )
}

/// Normalise, decide (the person borrowed, as the router's snapshot is), apply.
fn step_decoded(
    state: &mut MemState,
    limiter: &mut WarningLimiter,
    seq: u64,
    ev: WireEvent,
) -> Entry {
    let ev = normalize_wire(ev, 0).expect("valid");
    let (into, _) = lookups(&ev);
    let ctx = Ctx {
        project: P,
        now_ms: 0,
        merge_limit: None,
        max_ids: None,
        into: state.person_of(P, &into),
        other: None,
        limiter,
    };
    let changes = decide(&ev, ctx).changes;
    let entry = Entry {
        project: P,
        at_ms: 0,
        cause: None,
        changes,
    };
    apply_entry(state, Seq(seq), &entry);
    entry
}

/// Log entries of `n` typical events, decided in memory.
fn entries(n: u64) -> Vec<(Seq, Arc<Entry>)> {
    let mut state = MemState::default();
    let mut limiter = WarningLimiter::default();
    (0..n)
        .map(|i| {
            (
                Seq(i + 1),
                Arc::new(step(
                    &mut state,
                    &mut limiter,
                    i + 1,
                    &typical(i, 10_000).to_string(),
                )),
            )
        })
        .collect()
}

/// What a capture worker does with a `/batch/` request of 100 typical events before the
/// router sees them: decode the body (UTF-8, the envelope, every event checked and indexed)
/// and normalise each event. The daemon's HTTP workers spend most of their time here.
fn bench_capture_decode(c: &mut Criterion) {
    let events: Vec<Value> = (0..100).map(|i| typical(i, 1_000)).collect();
    let body = json!({"api_key": "phc_bench", "batch": events}).to_string();
    let limits = DecodeLimits::default();
    let mut g = c.benchmark_group("capture");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("decode_normalize_batch_of_100", |b| {
        b.iter(|| {
            let req = RawRequest {
                body: body.as_bytes(),
                content_encoding: None,
                content_type: Some("application/json"),
                query: "",
            };
            let decoded = decode_capture(&req, &limits).expect("valid batch");
            decoded
                .events
                .into_iter()
                .map(|ev| normalize_wire(ev, 0).expect("valid event"))
                .collect::<Vec<_>>()
        })
    });
    g.finish();
}

fn bench_append(c: &mut Criterion) {
    let batch = entries(50_000);
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.sample_size(10);
    g.bench_function("append_group_commit", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("tmp");
                let store = Store::open(dir.path()).expect("store");
                let (writer, join) = WriterHandle::spawn(store, Seq(0), Metrics::new(), |_| {});
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("rt");
                let start = Instant::now();
                for (seq, e) in &batch {
                    writer.append(*seq, e.clone()).expect("append");
                }
                rt.block_on(writer.wait_durable(batch[batch.len() - 1].0))
                    .expect("durable");
                total += start.elapsed();
                writer.stop();
                let _ = join.join();
            }
            total
        })
    });
    // The limit on this disk: the same log records alone (no derived state), put into a fresh
    // RocksDB in synced batches as large as the writer's largest group.
    let records: Vec<Vec<u8>> = batch.iter().map(|(_, e)| codec::encode_entry(e)).collect();
    let mean = records.iter().map(Vec::len).sum::<usize>() / records.len();
    eprintln!(
        "log/raw_rocksdb_append: {} log records of {mean} bytes on average, {MAX_GROUP} per synced batch",
        records.len()
    );
    g.bench_function("raw_rocksdb_append", |b| {
        b.iter_custom(|iters| {
            let parent = tempfile::tempdir().expect("tmp");
            (0..iters)
                .map(|_| {
                    let run =
                        baseline::run(parent.path(), batch.len() as u64, mean, MAX_GROUP, &records)
                            .expect("raw RocksDB append");
                    Duration::from_secs_f64(run.elapsed_s)
                })
                .sum()
        })
    });
    g.finish();
}

fn bench_replay(c: &mut Criterion) {
    let batch = entries(100_000);
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(dir.path()).expect("store");
    for chunk in batch.chunks(8192) {
        write_group(&store, chunk, false).expect("write");
    }
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.sample_size(10);
    g.bench_function("full_replay_into_scratch", |b| {
        // The replayed state is dropped outside the timing, as `verify` drops it off its
        // own thread (`store::verify::discard`).
        b.iter_with_large_drop(|| replay(&store, |_| {}).expect("replay"))
    });
    g.finish();
}

/// The daemon's process settings too (transparent huge pages off, src/main.rs).
fn like_the_daemon() -> Criterion {
    idstitch::cli::no_transparent_huge_pages();
    Criterion::default()
}

criterion_group!(
    name = benches;
    config = like_the_daemon();
    targets = bench_decide, bench_capture_decode, bench_append, bench_replay
);
criterion_main!(benches);
