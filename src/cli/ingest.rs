//! `idstitch ingest FILE|-`: send events to a running daemon in order, with a progress bar.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::client::Conn;
use super::Failure;

/// Options of `idstitch ingest`.
#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// NDJSON (one event per line) or JSON (an event, an array, or a `{"batch": [...]}`); `-` is stdin.
    pub file: PathBuf,
    /// The daemon's socket.
    #[arg(
        long,
        env = "IDSTITCH_SOCKET",
        default_value = "./data/store/idstitch.sock"
    )]
    pub socket: PathBuf,
    /// Project token for events that carry none.
    #[arg(long)]
    pub token: Option<String>,
    /// Events per request.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
}

/// Parse a file of events: a JSON document, else NDJSON. Returns events and a batch token.
pub fn parse_events(text: &str) -> anyhow::Result<(Vec<Value>, Option<String>)> {
    if let Ok(doc) = serde_json::from_str::<Value>(text) {
        return Ok(match doc {
            Value::Array(items) => (items, None),
            Value::Object(ref o) if o.get("batch").is_some_and(Value::is_array) => {
                let token = o.get("api_key").and_then(Value::as_str).map(str::to_string);
                (o["batch"].as_array().cloned().unwrap_or_default(), token)
            }
            other => (vec![other], None),
        });
    }
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line)
            .map_err(|e| Failure::user(format!("line {}: not JSON: {e}", n + 1)))?;
        events.push(v);
    }
    Ok((events, None))
}

/// Run the command.
pub fn run(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let mut text = String::new();
    if args.file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(&args.file)
            .map_err(|e| Failure::user(format!("cannot read {}: {e}", args.file.display())))?;
    }
    let (events, file_token) = parse_events(&text)?;
    let token = args.token.or(file_token);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(send(&args.socket, events, token, args.batch_size.max(1)))
}

async fn send(
    socket: &std::path::Path,
    events: Vec<Value>,
    token: Option<String>,
    batch: usize,
) -> anyhow::Result<ExitCode> {
    let mut conn = Conn::unix(socket).await?;
    let bar = ProgressBar::new(events.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let (mut accepted, mut rejected) = (0usize, 0usize);
    for (n, chunk) in events.chunks(batch).enumerate() {
        let mut body = json!({ "batch": chunk });
        if let Some(t) = &token {
            body["api_key"] = Value::String(t.clone());
        }
        let resp = conn.post_json("/batch/", &body).await?;
        if resp.status != 200 {
            bar.abandon();
            let detail = resp.json().get("detail").cloned().unwrap_or(Value::Null);
            return Err(Failure::user(format!(
                "request {} (events {}..) was refused with {}: {detail}",
                n + 1,
                n * batch,
                resp.status
            )));
        }
        let r = resp
            .json()
            .get("rejected")
            .and_then(Value::as_array)
            .map(|a| a.len())
            .unwrap_or(0);
        for item in resp
            .json()
            .get("rejected")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            bar.println(format!(
                "rejected event {}: {}",
                n * batch + item["index"].as_u64().unwrap_or(0) as usize,
                item["detail"]
            ));
        }
        rejected += r;
        accepted += chunk.len() - r;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{accepted} accepted, {rejected} rejected, {} events in {secs:.2}s ({:.0} events/s)",
        events.len(),
        events.len() as f64 / secs.max(1e-9)
    );
    Ok(if rejected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
