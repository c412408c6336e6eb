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

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use daemon::{ProcStats, Spawned, Target};
use report::{Groups, Latency, Process, Report};
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

/// The whole run; `Ok(false)` when a request failed or a check found a mismatch.
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
    let total = |f: fn(&ConnPlan) -> u64| plans.iter().map(f).sum::<u64>();
    let (users, sent_events, duplicates) = (
        total(|p| p.users),
        total(|p| p.events),
        total(|p| p.duplicates),
    );
    let illegal = total(|p| p.illegal_identifies);
    let avg_event_bytes = total(|p| p.event_bytes) as f64 / sent_events.max(1) as f64;
    let requests: Vec<_> = plans
        .iter_mut()
        .map(|p| std::mem::take(&mut p.requests))
        .collect();
    let request_count: usize = requests.iter().map(Vec::len).sum();
    eprintln!("[load] {users} users, {sent_events} events in {request_count} requests, {avg_event_bytes:.0} bytes/event, in {generate_s:.1} s");

    // 2. The daemon: given, or started here.
    let parent = args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("idstitch-load-")
        .tempdir_in(&parent)?;
    let mut spawned = None;
    let target = match (&args.socket, &args.tcp) {
        (Some(socket), _) => Target::Unix(socket.clone()),
        (None, Some(addr)) => Target::Tcp {
            addr: addr.clone(),
            admin_key: args.admin_key.clone(),
        },
        (None, None) => {
            let s = Spawned::start(&args.bin, dir.path(), &args.daemon_args)?;
            eprintln!(
                "[load] started {} (pid {}) on {}",
                args.bin.display(),
                s.pid,
                s.data_dir.display()
            );
            let target = Target::Unix(s.socket.clone());
            spawned = Some(s);
            target
        }
    };
    let ready = daemon::wait_healthy(
        &target,
        spawned.as_mut(),
        Duration::from_secs_f64(args.startup_timeout),
    )
    .await?;
    eprintln!("[load] daemon healthy after {:.2} s", ready.as_secs_f64());
    let pid = spawned.as_ref().map(|s| s.pid).or(args.pid);

    // 3. The load.
    let mut admin = target.connect().await?;
    let before = daemon::metrics(&target, &mut admin).await.ok();
    let proc_before = pid.map(daemon::proc_stats).transpose()?;
    let pace = match args.rate {
        Some(events_per_sec) => Pace::Open { events_per_sec },
        None => Pace::Closed,
    };
    let progress = (args.progress > 0.0).then(|| Duration::from_secs_f64(args.progress));
    eprintln!(
        "[load] sending ({})",
        args.rate.map_or("closed loop".to_string(), |r| format!(
            "open loop at {r} events/s"
        ))
    );
    let outcome = runner::run(&target, requests, pace, progress).await?;
    let after = daemon::metrics(&target, &mut admin).await.ok();
    let proc_after = pid.map(daemon::proc_stats).transpose()?;
    let elapsed_s = outcome.elapsed.as_secs_f64();
    let delta: Option<HashMap<String, f64>> = match (&before, &after) {
        (Some(b), Some(a)) => Some(
            a.iter()
                .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
                .collect(),
        ),
        _ => None,
    };
    let groups = delta.as_ref().map(|d| {
        let appends = d.get("idstitch_log_appends_total").copied().unwrap_or(0.0);
        let fsyncs = d.get("idstitch_log_fsyncs_total").copied().unwrap_or(0.0);
        Groups {
            log_appends: appends as u64,
            fsyncs: fsyncs as u64,
            fsyncs_per_s: fsyncs / elapsed_s,
            avg_group: if fsyncs > 0.0 { appends / fsyncs } else { 0.0 },
        }
    });

    // 4. Correctness.
    let check = if args.no_check {
        None
    } else {
        eprintln!("[load] checking persons");
        let persons: Vec<_> = plans
            .iter()
            .flat_map(|p| p.persons.iter().cloned())
            .collect();
        let personless: Vec<_> = plans
            .iter()
            .flat_map(|p| p.personless_ids.iter().cloned())
            .collect();
        let exp = checker::Expectations {
            token: &token,
            persons: &persons,
            personless_ids: &personless,
            illegal_identifies: illegal,
            events: sent_events,
            duplicates,
            sample: args.check_sample,
            // Counters only mean something when nothing else fed the daemon.
            counters: spawned.as_ref().and(delta.clone()),
        };
        Some(checker::check(&target, &exp).await?)
    };
    let proc_end = pid.map(daemon::proc_stats).transpose()?;
    drop(admin);

    // 5. Stop the daemon we started, then measure its real log records.
    let mut exit = None;
    let mut daemon_ok = true;
    let mut log_record_bytes = None;
    if let Some(s) = spawned.as_mut() {
        let status = s.stop(Duration::from_secs(120));
        daemon_ok = status.as_ref().is_ok_and(|st| st.success());
        exit = Some(match &status {
            Ok(st) => st.to_string(),
            Err(e) => format!("{e:#}"),
        });
        if daemon_ok {
            match baseline::log_record_size(&s.data_dir) {
                Ok((_, avg)) => {
                    log_record_bytes = Some((avg, "measured in the daemon's log".to_string()))
                }
                Err(e) => {
                    eprintln!("[load] cannot read the daemon's log ({e:#}); using the event size")
                }
            }
        }
    }
    let log_record_bytes = log_record_bytes.unwrap_or((
        avg_event_bytes,
        "average event size in requests".to_string(),
    ));

    // 6. The raw RocksDB baseline, with the daemon stopped.
    let events_per_s = outcome.events as f64 / elapsed_s;
    let baseline = if args.no_baseline {
        None
    } else {
        let records = groups
            .as_ref()
            .map_or(sent_events - duplicates, |g| g.log_appends)
            .max(1);
        let group = groups
            .as_ref()
            .map_or(args.batch as f64, |g| g.avg_group)
            .round()
            .max(1.0) as usize;
        eprintln!("[load] raw RocksDB baseline: {records} records of {:.0} bytes, {group} per synced batch", log_record_bytes.0);
        let samples: Vec<Vec<u8>> = plans
            .iter()
            .flat_map(|p| p.samples.iter().cloned())
            .collect();
        Some(
            baseline::run(
                &parent,
                records,
                log_record_bytes.0.round() as usize,
                group,
                &samples,
            )
            .context("raw RocksDB baseline")?,
        )
    };

    // 7. The report.
    let process = match (pid, proc_before, proc_after, proc_end) {
        (Some(pid), Some(b), Some(a), Some(e)) => Some(process_report(pid, b, a, e, exit.clone())),
        _ => None,
    };
    let h = &outcome.latency_us;
    let ms = |us: u64| us as f64 / 1000.0;
    let ok = outcome.errors.is_empty()
        && check.as_ref().is_none_or(|c| c.mismatches.is_empty())
        && daemon_ok;
    let mut report = Report {
        options: serde_json::to_value(&args)?,
        target: target.describe(),
        token,
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        rate: args.rate,
        users,
        events: sent_events,
        duplicates,
        requests: outcome.requests,
        avg_event_bytes,
        generate_s,
        elapsed_s,
        events_per_s,
        requests_per_s: outcome.requests as f64 / elapsed_s,
        latency: Latency {
            from: if args.rate.is_some() {
                "schedule"
            } else {
                "send"
            },
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        },
        process,
        groups,
        log_record_bytes: Some(log_record_bytes),
        ratio: baseline.as_ref().map(|b| events_per_s / b.records_per_s),
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

/// Generate every connection's plan, one thread per connection.
fn generate(args: &Args, events: u64, token: &str) -> Vec<ConnPlan> {
    let n = args.connections as u64;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.connections)
            .map(|c| {
                // Spread the budget: the first `events % n` connections take one more.
                let share = events / n + u64::from((c as u64) < events % n);
                scope.spawn(move || {
                    workload::generate_conn(args.seed, c, share, args.batch, token, &args.knobs)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("workload generation panicked"))
            .collect()
    })
}

/// The daemon's process numbers.
fn process_report(
    pid: u32,
    before: ProcStats,
    after: ProcStats,
    end: ProcStats,
    exit: Option<String>,
) -> Process {
    Process {
        pid,
        peak_rss_mib: end.peak_rss_kib as f64 / 1024.0,
        cpu_s_during_load: after.cpu_seconds - before.cpu_seconds,
        cpu_s_total: end.cpu_seconds,
        exit: exit.unwrap_or_else(|| "not stopped by this run".to_string()),
    }
}
