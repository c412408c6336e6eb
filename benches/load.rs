//! Load generator for idstitch (issue 6): drives a daemon over its Unix socket (or TCP) with a
//! seeded, realistic identity workload, checks that the daemon ends up with exactly the persons
//! the workload implies, compares its throughput with raw RocksDB appends on the same disk, and
//! reports throughput, acknowledgement latency, fsyncs and the daemon's memory and CPU.
//!
//! Run: `cargo bench --bench load -- [options]` (`--help` lists them). Without `--socket` or
//! `--tcp` it starts `target/release/idstitch serve` on a temporary data directory and stops it
//! with SIGTERM at the end. `--quick` is the short mode (200,000 events). Slowness never fails a
//! run; a request error or a correctness mismatch does (exit 1).
//!
//! Modules: `workload` (users and events, and the persons they must produce), `runner` (one
//! task per connection, closed or open loop), `checker`, `baseline` (raw RocksDB), `report`,
//! `daemon` (start, stop, `/metrics`, `/proc`).

#[path = "load/baseline.rs"]
mod baseline;
#[path = "load/checker.rs"]
mod checker;
#[path = "load/daemon.rs"]
mod daemon;
#[path = "load/report.rs"]
mod report;
#[path = "load/runner.rs"]
mod runner;
#[path = "load/workload.rs"]
mod workload;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;

use daemon::{ProcStats, Spawned, Target};
use report::{Groups, Latency, Machine, Process, RecordSize, Report, Stage, ThreadCpu};
use runner::Pace;
use workload::{ConnPlan, Knobs};

/// Events of the default run.
const DEFAULT_EVENTS: u64 = 1_000_000;
/// Events of `--quick` (the `make bench` mode; well under two minutes).
const QUICK_EVENTS: u64 = 200_000;

/// Load generator for idstitch: a seeded identity workload, its correctness check, throughput,
/// latency, and the raw RocksDB limit on the same disk.
#[derive(Parser, Debug, Serialize)]
#[command(name = "load")]
struct Args {
    /// Drive the daemon on this Unix socket (default: start one on a temporary directory).
    #[arg(long, conflicts_with = "tcp")]
    socket: Option<PathBuf>,
    /// Drive the daemon at this TCP address (host:port).
    #[arg(long)]
    tcp: Option<String>,
    /// Admin key for `/api/` over TCP.
    #[arg(long, env = "IDSTITCH_ADMIN_KEY", hide_env_values = true)]
    #[serde(skip)]
    admin_key: Option<String>,
    /// Process id of a running daemon, to report its peak RSS and CPU time.
    #[arg(long)]
    pid: Option<u32>,
    /// Connections, one task each; each user's events go on one of them, in order.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Events in total (whole users: the last user of each connection may go a little over)
    /// [default: 1000000, or 200000 with --quick].
    #[arg(long)]
    events: Option<u64>,
    /// Short mode for `make bench`: 200,000 events unless --events says otherwise.
    #[arg(long)]
    quick: bool,
    /// Open loop: send at this many events per second on a fixed schedule, latency measured
    /// from each request's scheduled time [default: closed loop, as fast as acknowledged].
    #[arg(long)]
    rate: Option<f64>,
    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Project token [default: a new `phc_load_<seed>_<unix ms>`, so every run has a fresh project].
    #[arg(long)]
    token: Option<String>,
    /// The workload mix.
    #[command(flatten)]
    knobs: Knobs,
    /// Persons (and as many personless IDs) to look up by distinct ID after the run.
    #[arg(long, default_value_t = 500)]
    check_sample: usize,
    /// Generate the workload, print its size and stop (nothing is sent).
    #[arg(long)]
    dry_run: bool,
    /// Skip the correctness checks.
    #[arg(long)]
    no_check: bool,
    /// Skip the raw RocksDB baseline.
    #[arg(long)]
    no_baseline: bool,
    /// The daemon binary to start.
    #[arg(long, default_value = env!("CARGO_BIN_EXE_idstitch"))]
    bin: PathBuf,
    /// Extra argument for `idstitch serve` (repeat it), e.g. `--daemon-arg=--workers=4`.
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
    /// Parent of the temporary directory (daemon data, baseline database): pick the disk here.
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// Keep the temporary directory (it is always kept when the run fails).
    #[arg(long)]
    keep: bool,
    /// Seconds to wait for `GET /_health` to answer 200.
    #[arg(long, default_value_t = 60.0)]
    startup_timeout: f64,
    /// Where to write the JSON report.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/load-report.json"))]
    report: PathBuf,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 5.0)]
    progress: f64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    #[serde(skip)]
    bench: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: cannot start tokio: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("load: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The whole run; `Ok(false)` when a request failed, a check found a mismatch or the daemon we
/// started did not exit cleanly.
async fn run(args: Args) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.connections > 0 && args.batch > 0,
        "--connections and --batch must be at least 1"
    );
    let events = args.events.unwrap_or(if args.quick {
        QUICK_EVENTS
    } else {
        DEFAULT_EVENTS
    });
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let token = args
        .token
        .clone()
        .unwrap_or_else(|| format!("phc_load_{}_{unix_ms}", args.seed));

    // 1. The workload, generated before the clock starts (one thread per connection).
    eprintln!(
        "[load] generating {events} events for {} connections (seed {})",
        args.connections, args.seed
    );
    let started = Instant::now();
    let mut plans = generate(&args, events, &token);
    let generate_s = started.elapsed().as_secs_f64();
    let totals = Totals::of(&plans);
    let requests: Vec<_> = plans
        .iter_mut()
        .map(|p| std::mem::take(&mut p.requests))
        .collect();
    eprintln!(
        "[load] {} users, {} persons expected, {} events ({} duplicates) in {} requests, \
         {:.0} bytes/event, {} merges, {} warnings expected, in {generate_s:.1} s",
        totals.users,
        totals.persons,
        totals.events,
        totals.duplicates,
        requests.iter().map(Vec::len).sum::<usize>(),
        totals.avg_event_bytes(),
        totals.outcomes.merges,
        totals.warnings,
    );
    if args.dry_run {
        return Ok(true);
    }

    // 2. The daemon: given, or started here.
    let parent = args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("idstitch-load-")
        .tempdir_in(&parent)?;
    let (target, mut spawned) = start_target(&args, dir.path()).await?;
    let pid = spawned.as_ref().map(|s| s.pid).or(args.pid);
    if spawned.is_none() {
        refuse_used_project(&target, &token).await?;
    }

    // 3. The load.
    let pace = match args.rate {
        Some(events_per_sec) => Pace::Open { events_per_sec },
        None => Pace::Closed,
    };
    let progress = (args.progress > 0.0).then(|| Duration::from_secs_f64(args.progress));
    let before = Snapshot::take(&target, pid).await;
    eprintln!(
        "[load] sending ({})",
        args.rate.map_or("closed loop".to_string(), |r| format!(
            "open loop at {r} events/s"
        ))
    );
    let outcome = runner::run(&target, requests, pace, progress).await?;
    let after = Snapshot::take(&target, pid).await;
    let elapsed_s = outcome.elapsed.as_secs_f64();
    let delta = before.counters_until(&after);
    let groups = delta.as_ref().map(|d| groups(d, elapsed_s));
    let stages = delta.as_ref().map(stages).unwrap_or_default();

    // 4. Correctness. Counters match exactly only when nothing else fed the daemon (we
    // started it); on a given daemon accepted events must at least have grown by ours.
    let check = if args.no_check {
        None
    } else {
        Some(
            check(
                &target,
                &plans,
                &token,
                &totals,
                args.check_sample,
                delta.clone(),
                spawned.is_some(),
            )
            .await,
        )
    };
    let proc_end = pid.and_then(|p| daemon::proc_stats(p).ok());

    // 5. Stop the daemon we started, then measure its real log records.
    let (exit, daemon_ok, measured) = match spawned.as_mut() {
        Some(s) => stop(s),
        None => (None, true, None),
    };
    let log_record = measured.unwrap_or(RecordSize {
        bytes: totals.avg_event_bytes(),
        source: "average event size in requests",
    });

    // 6. The raw RocksDB baseline, with the daemon stopped.
    let baseline = if args.no_baseline {
        None
    } else {
        let records = groups
            .as_ref()
            .map_or(totals.events - totals.duplicates, |g| g.log_appends);
        let group = groups.as_ref().map_or(args.batch as f64, |g| g.avg_group);
        Some(run_baseline(&parent, &plans, records, &log_record, group)?)
    };

    // 7. The report. The raw baseline writes one record per accepted event (the daemon's log
    // appends), so the ratio compares accepted events per second, duplicates excluded.
    let events_per_s = outcome.events as f64 / elapsed_s;
    let accepted = match (&delta, spawned.is_some()) {
        (Some(d), true) => d
            .get("idstitch_events_accepted_total")
            .copied()
            .unwrap_or(0.0) as u64,
        _ => outcome.events.saturating_sub(totals.duplicates),
    };
    let accepted_events_per_s = accepted as f64 / elapsed_s;
    let ok = outcome.errors.is_empty()
        && check.as_ref().is_none_or(|c| c.mismatches.is_empty())
        && daemon_ok;
    let mut report = Report {
        options: serde_json::to_value(&args)?,
        target: target.describe(),
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            loadavg_before: before.loadavg.clone(),
            loadavg_after: after.loadavg.clone(),
        },
        token,
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        rate: args.rate,
        users: totals.users,
        events: totals.events,
        duplicates: totals.duplicates,
        requests: outcome.requests,
        avg_event_bytes: totals.avg_event_bytes(),
        generate_s,
        elapsed_s,
        events_per_s,
        accepted_events: accepted,
        accepted_events_per_s,
        requests_per_s: outcome.requests as f64 / elapsed_s,
        latency: latency(&outcome.latency_us, args.rate.is_some()),
        process: process_report(pid, &before, &after, proc_end, exit),
        generator_cpu_s_during_load: after
            .generator_cpu_s
            .zip(before.generator_cpu_s)
            .map(|(a, b)| a - b),
        groups,
        stages,
        log_record,
        ratio: baseline
            .as_ref()
            .map(|b| accepted_events_per_s / b.records_per_s),
        baseline,
        check,
        request_errors: outcome.errors,
        ok,
    };
    report.print();
    report.write_json(&args.report)?;
    println!("  JSON report         {}", args.report.display());
    if let (false, Some(s)) = (ok, &spawned) {
        println!(
            "  daemon log          {} (last lines below)\n{}",
            s.log.display(),
            s.log_tail(20)
        );
    }
    drop(spawned);
    if !ok || args.keep {
        println!("  kept                {}", dir.keep().display());
    }
    Ok(ok)
}

/// Sums over every connection's plan.
struct Totals {
    users: u64,
    persons: u64,
    events: u64,
    duplicates: u64,
    warnings: u64,
    outcomes: workload::Outcomes,
    event_bytes: u64,
}

impl Totals {
    fn of(plans: &[ConnPlan]) -> Totals {
        let sum = |f: fn(&ConnPlan) -> u64| plans.iter().map(f).sum::<u64>();
        Totals {
            users: sum(|p| p.users),
            persons: sum(|p| p.persons.len() as u64),
            events: sum(|p| p.events),
            duplicates: sum(|p| p.duplicates),
            warnings: sum(|p| p.warnings.len() as u64),
            outcomes: plans
                .iter()
                .fold(workload::Outcomes::default(), |mut o, p| {
                    o.merges += p.outcomes.merges;
                    o.refused_illegal += p.outcomes.refused_illegal;
                    o.refused_identified += p.outcomes.refused_identified;
                    o
                }),
            event_bytes: sum(|p| p.event_bytes),
        }
    }

    /// Average bytes of one event in a request body.
    fn avg_event_bytes(&self) -> f64 {
        self.event_bytes as f64 / self.events.max(1) as f64
    }
}

/// The daemon to drive: `--socket`, `--tcp`, or one started here in `dir`; healthy.
async fn start_target(
    args: &Args,
    dir: &std::path::Path,
) -> anyhow::Result<(Target, Option<Spawned>)> {
    let (target, mut spawned) = match (&args.socket, &args.tcp) {
        (Some(socket), _) => (Target::Unix(socket.clone()), None),
        (None, Some(addr)) => {
            let admin_key = args.admin_key.clone();
            (
                Target::Tcp {
                    addr: addr.clone(),
                    admin_key,
                },
                None,
            )
        }
        (None, None) => {
            let s = Spawned::start(&args.bin, dir, &args.daemon_args)?;
            eprintln!(
                "[load] started {} (pid {}) on {}",
                args.bin.display(),
                s.pid,
                s.data_dir.display()
            );
            (Target::Unix(s.socket.clone()), Some(s))
        }
    };
    let timeout = Duration::from_secs_f64(args.startup_timeout);
    let ready = daemon::wait_healthy(&target, spawned.as_mut(), timeout).await?;
    eprintln!("[load] daemon healthy after {:.2} s", ready.as_secs_f64());
    Ok((target, spawned))
}

/// Refuse a project that already has persons: the same seed and token would make every event a
/// duplicate of an earlier run's, acknowledged but not applied, and the persons it finds would
/// be the earlier run's.
async fn refuse_used_project(target: &Target, token: &str) -> anyhow::Result<()> {
    let mut conn = target.connect().await?;
    let path = format!("/api/projects/{token}/");
    let project = target.get(&mut conn, &path).await?;
    match project.status {
        404 => return Ok(()),
        200 => {}
        s => anyhow::bail!(
            "GET {path} answered {s}: {}",
            String::from_utf8_lossy(&project.body)
        ),
    }
    let path = format!("/api/projects/{token}/persons/?limit=3");
    let r = target.get(&mut conn, &path).await?;
    anyhow::ensure!(
        r.status == 200,
        "GET {path} answered {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let page = r.json();
    let persons = page["results"].as_array().cloned().unwrap_or_default();
    if !persons.is_empty() {
        let named: Vec<String> = persons
            .iter()
            .map(|p| format!("{} {}", p["uuid"], p["distinct_ids"]))
            .collect();
        anyhow::bail!(
            "project {token} on {} already has persons ({}{}): an earlier run's events would \
             come back as duplicates and the check would compare that run's persons. Run \
             without --token (each run then gets a fresh project) or pass an unused one",
            target.describe(),
            named.join(", "),
            if page["next"].is_null() { "" } else { ", …" }
        );
    }
    Ok(())
}

/// The daemon's counters and process, and the machine's load, at one moment.
struct Snapshot {
    metrics: anyhow::Result<HashMap<String, f64>>,
    process: Option<ProcStats>,
    /// The daemon's CPU seconds by thread kind.
    threads: Option<BTreeMap<String, f64>>,
    /// This generator's own CPU seconds: it shares the machine with the daemon.
    generator_cpu_s: Option<f64>,
    loadavg: String,
}

impl Snapshot {
    async fn take(target: &Target, pid: Option<u32>) -> Snapshot {
        Snapshot {
            metrics: daemon::metrics(target).await,
            process: pid.and_then(|p| daemon::proc_stats(p).ok()),
            threads: pid.and_then(|p| daemon::thread_cpu(p).ok()),
            generator_cpu_s: daemon::proc_stats(std::process::id())
                .ok()
                .map(|s| s.cpu_seconds),
            loadavg: Machine::loadavg(),
        }
    }

    /// How much each counter grew from this snapshot to `later`.
    fn counters_until(&self, later: &Snapshot) -> Option<HashMap<String, f64>> {
        match (&self.metrics, &later.metrics) {
            (Ok(b), Ok(a)) => Some(
                a.iter()
                    .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
                    .collect(),
            ),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!(
                    "[load] no /metrics ({e:#}): no fsync numbers, baseline groups = --batch"
                );
                None
            }
        }
    }
}

/// The daemon's group commit over the run, from counter deltas.
fn groups(delta: &HashMap<String, f64>, elapsed_s: f64) -> Groups {
    let appends = delta
        .get("idstitch_log_appends_total")
        .copied()
        .unwrap_or(0.0);
    let fsyncs = delta
        .get("idstitch_log_fsyncs_total")
        .copied()
        .unwrap_or(0.0);
    Groups {
        log_appends: appends as u64,
        fsyncs: fsyncs as u64,
        fsyncs_per_s: fsyncs / elapsed_s,
        avg_group: if fsyncs > 0.0 { appends / fsyncs } else { 0.0 },
    }
}

/// The daemon's capture stages over the run, from the deltas of its stage histogram.
fn stages(delta: &HashMap<String, f64>) -> Vec<Stage> {
    const NAME: &str = "idstitch_capture_stage_seconds";
    ["decode", "route", "durable"]
        .into_iter()
        .filter_map(|stage| {
            let series = |part: &'static str| {
                delta
                    .iter()
                    .filter(move |(k, _)| {
                        k.strip_prefix(NAME)
                            .is_some_and(|rest| rest.starts_with(part) && rest.contains('{'))
                            && daemon::label(k, "kind") == Some(stage)
                    })
                    .map(|(k, v)| (k.as_str(), *v))
            };
            let count = series("_count").map(|(_, v)| v).sum::<f64>();
            let sum = series("_sum").map(|(_, v)| v).sum::<f64>();
            if count < 1.0 {
                return None;
            }
            let mut buckets: Vec<(f64, f64)> = series("_bucket")
                .filter_map(|(k, v)| Some((daemon::label(k, "le")?.parse::<f64>().ok()?, v)))
                .collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let at_most = |q: f64| {
                buckets
                    .iter()
                    .find(|(_, cum)| *cum >= q * count)
                    .map_or(f64::INFINITY, |(le, _)| (le * 100_000.0).round() / 100.0)
            };
            Some(Stage {
                stage: stage.to_string(),
                count: count as u64,
                mean_ms: sum / count * 1000.0,
                p50_at_most_ms: at_most(0.5),
                p99_at_most_ms: at_most(0.99),
            })
        })
        .collect()
}

/// Run the checker; a failure to ask the daemon is reported as a mismatch too.
async fn check(
    target: &Target,
    plans: &[ConnPlan],
    token: &str,
    totals: &Totals,
    sample: usize,
    counters: Option<HashMap<String, f64>>,
    exclusive: bool,
) -> checker::CheckOutcome {
    eprintln!("[load] checking persons");
    let persons: Vec<_> = plans
        .iter()
        .flat_map(|p| p.persons.iter().cloned())
        .collect();
    let personless: Vec<_> = plans
        .iter()
        .flat_map(|p| p.personless_ids.iter().cloned())
        .collect();
    let warnings: Vec<_> = plans
        .iter()
        .flat_map(|p| p.warnings.iter().cloned())
        .collect();
    let exp = checker::Expectations {
        token,
        persons: &persons,
        personless_ids: &personless,
        warnings: &warnings,
        outcomes: totals.outcomes,
        events: totals.events,
        duplicates: totals.duplicates,
        sample,
        counters,
        exclusive,
    };
    checker::check(target, &exp)
        .await
        .unwrap_or_else(|e| checker::CheckOutcome {
            persons_expected: persons.len(),
            mismatches: vec![checker::Mismatch {
                what: "the checker's requests".into(),
                expected: "answers".into(),
                got: format!("{e:#}"),
            }],
            ..checker::CheckOutcome::default()
        })
}

/// SIGTERM the daemon we started: (how it exited, whether cleanly, its average log record).
fn stop(s: &mut Spawned) -> (Option<String>, bool, Option<RecordSize>) {
    let status = s.stop(Duration::from_secs(120));
    let clean = status.as_ref().is_ok_and(|st| st.success());
    let exit = match &status {
        Ok(st) => st.to_string(),
        Err(e) => format!("{e:#}"),
    };
    let mut measured = None;
    if clean {
        match baseline::log_record_size(&s.data_dir) {
            Ok((_, avg)) => {
                measured = Some(RecordSize {
                    bytes: avg,
                    source: "measured in the daemon's log",
                })
            }
            Err(e) => {
                eprintln!("[load] cannot read the daemon's log ({e:#}); using the event size")
            }
        }
    }
    (Some(exit), clean, measured)
}

/// Raw RocksDB: `records` records like the daemon's, in synced batches of `group` (rounded).
fn run_baseline(
    parent: &std::path::Path,
    plans: &[ConnPlan],
    records: u64,
    record: &RecordSize,
    group: f64,
) -> anyhow::Result<baseline::Baseline> {
    let records = records.max(1);
    let group = group.round().max(1.0) as usize;
    let bytes = record.bytes.round() as usize;
    eprintln!(
        "[load] raw RocksDB baseline: {records} records of {bytes} bytes, {group} per synced batch"
    );
    let samples: Vec<Vec<u8>> = plans
        .iter()
        .flat_map(|p| p.samples.iter().cloned())
        .collect();
    baseline::run(parent, records, bytes, group, &samples).context("raw RocksDB baseline")
}

/// Latency percentiles of a histogram in microseconds.
fn latency(h: &Histogram<u64>, open_loop: bool) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        from: if open_loop { "schedule" } else { "send" },
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1000.0,
    }
}

/// Generate every connection's plan, one thread per connection.
fn generate(args: &Args, events: u64, token: &str) -> Vec<ConnPlan> {
    let n = args.connections as u64;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.connections)
            .map(|c| {
                // Spread the budget: the first `events % n` connections take one more.
                let share = events / n + u64::from((c as u64) < events % n);
                scope.spawn(move || {
                    workload::generate_conn(
                        args.seed,
                        c,
                        args.connections,
                        share,
                        args.batch,
                        token,
                        &args.knobs,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("workload generation panicked"))
            .collect()
    })
}

/// The daemon's process numbers, when we know its pid.
fn process_report(
    pid: Option<u32>,
    before: &Snapshot,
    after: &Snapshot,
    end: Option<ProcStats>,
    exit: Option<String>,
) -> Option<Process> {
    let (pid, b, a) = (pid?, before.process?, after.process?);
    let cpu_s_during_load = a.cpu_seconds - b.cpu_seconds;
    let mut by_thread: Vec<ThreadCpu> = match (&before.threads, &after.threads) {
        (Some(b), Some(a)) => a
            .iter()
            .map(|(kind, s)| ThreadCpu {
                thread: kind.clone(),
                cpu_s: s - b.get(kind).copied().unwrap_or(0.0),
            })
            .filter(|t| t.cpu_s > 0.0)
            .collect(),
        _ => Vec::new(),
    };
    by_thread.sort_by(|x, y| y.cpu_s.total_cmp(&x.cpu_s));
    Some(Process {
        pid,
        peak_rss_mib: a.peak_rss_kib as f64 / 1024.0,
        peak_rss_after_checks_mib: end.map(|e| e.peak_rss_kib as f64 / 1024.0),
        cpu_s_during_load,
        cpu_by_thread_during_load: by_thread,
        cpu_s_total: end.map(|e| e.cpu_seconds),
        exit: exit.unwrap_or_else(|| "not stopped by this run".to_string()),
    })
}
