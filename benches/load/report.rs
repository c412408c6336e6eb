//! The report: printed for people, written as JSON for tools.

use std::path::Path;

use serde::Serialize;

use crate::baseline::Baseline;
use crate::checker::CheckOutcome;
use crate::runner::RequestError;

/// Acknowledgement latency percentiles, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Where latency is measured from: `send` (closed loop) or `schedule` (open loop).
    pub from: &'static str,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// What the daemon's process cost (only when this run started it).
#[derive(Clone, Debug, Serialize)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Peak resident set size (`VmHWM`), MiB, read right after the load (ingest only).
    pub peak_rss_mib: f64,
    /// Peak resident set size, MiB, read after the checks (their reads of every person
    /// included).
    pub peak_rss_after_checks_mib: Option<f64>,
    /// CPU seconds (user + system) during the load.
    pub cpu_s_during_load: f64,
    /// CPU seconds during the load by kind of thread (threads that ended during the load are
    /// missing), most first.
    pub cpu_by_thread_during_load: Vec<ThreadCpu>,
    /// CPU seconds (user + system) from its start to the end of the checks.
    pub cpu_s_total: Option<f64>,
    /// How it exited after SIGTERM.
    pub exit: String,
}

/// The CPU time of one kind of the daemon's threads (see `daemon::thread_cpu`).
#[derive(Clone, Debug, Serialize)]
pub struct ThreadCpu {
    /// The threads' name without its number; `main` is the main thread.
    pub thread: String,
    /// CPU seconds (user + system) during the load.
    pub cpu_s: f64,
}

/// The daemon's group commit over the run, from `/metrics`.
#[derive(Clone, Debug, Serialize)]
pub struct Groups {
    /// `idstitch_log_appends_total` over the run.
    pub log_appends: u64,
    /// `idstitch_log_fsyncs_total` over the run.
    pub fsyncs: u64,
    /// Synced group writes per second.
    pub fsyncs_per_s: f64,
    /// Average entries per group.
    pub avg_group: f64,
}

/// One stage of the daemon's capture requests over the run, from the histogram
/// `idstitch_capture_stage_seconds` (bucket bounds double, so a quantile is the bound of the
/// bucket it falls in).
#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    /// `decode`, `route` or `durable`.
    pub stage: String,
    /// Requests timed in this stage.
    pub count: u64,
    /// Mean time, in milliseconds.
    pub mean_ms: f64,
    /// The upper bound of the bucket holding the median, in milliseconds.
    pub p50_at_most_ms: f64,
    /// The upper bound of the bucket holding the 99th percentile, in milliseconds.
    pub p99_at_most_ms: f64,
}

/// Average bytes of one log record, and where that number comes from.
#[derive(Clone, Debug, Serialize)]
pub struct RecordSize {
    /// Average bytes.
    pub bytes: f64,
    /// `measured in the daemon's log` or `average event size in requests`.
    pub source: &'static str,
}

/// The machine the run was on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPUs available to this process.
    pub cpus: usize,
    /// `/proc/loadavg` (1, 5, 15 minutes) just before the load.
    pub loadavg_before: String,
    /// `/proc/loadavg` just after the load.
    pub loadavg_after: String,
}

impl Machine {
    /// The first three fields of `/proc/loadavg`.
    pub fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }
}

/// Everything a run found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The command-line options, resolved.
    pub options: serde_json::Value,
    /// Where the daemon was.
    pub target: String,
    /// The machine.
    pub machine: Machine,
    /// The project token the workload used.
    pub token: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Target rate of an open loop, events per second.
    pub rate: Option<f64>,
    /// Users simulated.
    pub users: u64,
    /// Events sent (duplicates included).
    pub events: u64,
    /// Duplicate deliveries among them.
    pub duplicates: u64,
    /// Requests sent.
    pub requests: u64,
    /// Average bytes of one event in a request.
    pub avg_event_bytes: f64,
    /// Seconds to generate the workload (not part of the run).
    pub generate_s: f64,
    /// Seconds from the first send to the last acknowledgement.
    pub elapsed_s: f64,
    /// Events acknowledged per second (duplicate deliveries included).
    pub events_per_s: f64,
    /// Events accepted (stored, duplicates excluded): the daemon's counter when this run
    /// started it, else the events acknowledged minus the workload's duplicates.
    pub accepted_events: u64,
    /// Accepted events per second: what the ratio to the raw baseline compares.
    pub accepted_events_per_s: f64,
    /// Requests acknowledged per second.
    pub requests_per_s: f64,
    /// Acknowledgement latency of a request.
    pub latency: Latency,
    /// The daemon's process, when this run started it.
    pub process: Option<Process>,
    /// This generator's own CPU seconds (user + system) during the load: on a small machine
    /// it competes with the daemon for the same cores.
    pub generator_cpu_s_during_load: Option<f64>,
    /// The daemon's groups, from `/metrics`.
    pub groups: Option<Groups>,
    /// Where the daemon's time per request went, by stage, from `/metrics`.
    pub stages: Vec<Stage>,
    /// The average log record size the baseline writes.
    pub log_record: RecordSize,
    /// The raw RocksDB baseline.
    pub baseline: Option<Baseline>,
    /// idstitch accepted events per second / baseline records per second (the baseline writes
    /// one record per accepted event).
    pub ratio: Option<f64>,
    /// The correctness checks.
    pub check: Option<CheckOutcome>,
    /// Requests that failed.
    pub request_errors: Vec<RequestError>,
    /// Whether everything checked out.
    pub ok: bool,
}

impl Report {
    /// Print the report for people.
    pub fn print(&self) {
        println!();
        println!("idstitch load: {} loop against {}", self.mode, self.target);
        println!(
            "  machine             {} CPUs, load average {} before the load, {} after",
            self.machine.cpus, self.machine.loadavg_before, self.machine.loadavg_after
        );
        if let Some(rate) = self.rate {
            println!("  target rate         {rate:.0} events/s");
        }
        println!(
            "  workload            {} users, {} events ({} duplicate deliveries), {} requests, {:.0} bytes/event, generated in {:.1} s",
            self.users, self.events, self.duplicates, self.requests, self.avg_event_bytes, self.generate_s
        );
        println!("  elapsed             {:.2} s", self.elapsed_s);
        println!(
            "  throughput          {:.0} events/s acknowledged, {:.0} accepted events/s (duplicates excluded), {:.1} requests/s",
            self.events_per_s, self.accepted_events_per_s, self.requests_per_s
        );
        let l = &self.latency;
        println!(
            "  ack latency (ms)    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}  (from {} time)",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.from
        );
        if let Some(g) = &self.groups {
            println!(
                "  group commit        {} fsyncs, {:.1} fsyncs/s, {:.1} entries/group ({} log appends)",
                g.fsyncs, g.fsyncs_per_s, g.avg_group, g.log_appends
            );
        }
        if !self.stages.is_empty() {
            let parts: Vec<String> = self
                .stages
                .iter()
                .map(|s| {
                    format!(
                        "{} mean {:.2} p50 <= {} p99 <= {}",
                        s.stage, s.mean_ms, s.p50_at_most_ms, s.p99_at_most_ms
                    )
                })
                .collect();
            println!("  daemon stages (ms)  {}", parts.join(" | "));
        }
        // CPU per event, so that runs of different lengths and rates compare.
        let per_event = |s: f64| s * 1e6 / self.events.max(1) as f64;
        if let Some(p) = &self.process {
            let after_checks = p
                .peak_rss_after_checks_mib
                .map_or(String::new(), |m| format!(" ({m:.1} MiB after the checks)"));
            let total = p
                .cpu_s_total
                .map_or(String::new(), |s| format!(" ({s:.2} s total)"));
            println!(
                "  daemon (pid {})  peak RSS {:.1} MiB at the end of the load{after_checks}, CPU {:.2} s during load{total}, exit after SIGTERM: {}",
                p.pid, p.peak_rss_mib, p.cpu_s_during_load, p.exit
            );
            if !p.cpu_by_thread_during_load.is_empty() {
                let parts: Vec<String> = p
                    .cpu_by_thread_during_load
                    .iter()
                    .map(|t| format!("{} {:.2} s ({:.1})", t.thread, t.cpu_s, per_event(t.cpu_s)))
                    .collect();
                println!(
                    "  daemon CPU by thread  {:.1} µs/event in all: {} (s, and µs/event)",
                    per_event(p.cpu_s_during_load),
                    parts.join(", ")
                );
            }
        }
        if let Some(g) = self.generator_cpu_s_during_load {
            println!(
                "  generator CPU       {g:.2} s during the load ({:.1} µs/event)",
                per_event(g)
            );
        }
        if let Some(b) = &self.baseline {
            println!(
                "  raw RocksDB         {} records of {} bytes ({}), {} per synced batch: {:.0} records/s, {:.1} fsyncs/s, {:.2} s",
                b.records, b.record_bytes, self.log_record.source, b.group, b.records_per_s, b.fsyncs_per_s, b.elapsed_s
            );
        }
        if let Some(r) = self.ratio {
            println!("  idstitch / raw      {r:.3} (accepted events/s / raw records/s)");
        }
        if let Some(c) = &self.check {
            println!(
                "  correctness         {} persons expected, {} found, {} compared in full, {} lookups: {} mismatches",
                c.persons_expected,
                c.persons_found,
                c.persons_compared,
                c.lookups,
                c.mismatches.len()
            );
            for m in c.mismatches.iter().take(20) {
                println!(
                    "    MISMATCH {}\n      expected: {}\n      got:      {}",
                    m.what, m.expected, m.got
                );
            }
            if c.mismatches.len() > 20 {
                println!("    … {} more in the JSON report", c.mismatches.len() - 20);
            }
        }
        for e in self.request_errors.iter().take(20) {
            println!(
                "    REQUEST ERROR conn {} request {} (first event: {}): status {:?}: {}",
                e.conn, e.index, e.request, e.status, e.got
            );
        }
        println!(
            "  result              {}",
            if self.ok { "OK" } else { "FAILED" }
        );
    }

    /// Write the report as JSON (mismatches capped at 1,000).
    pub fn write_json(&mut self, path: &Path) -> anyhow::Result<()> {
        if let Some(c) = &mut self.check {
            c.mismatches.truncate(1_000);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}
