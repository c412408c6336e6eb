//! `idstitch ingest FILE|-`: send events to a running daemon in order, with a progress bar.

use std::io::{BufRead, BufReader, Read};
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
    /// NDJSON (one event per line) or JSON (an event, an array, or a `{"batch": [...]}`); `-` is
    /// stdin. NDJSON is sent as it is read, a batch at a time, so a file of any size fits in
    /// memory; a line that is not JSON stops the run after the batches before it were sent.
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

/// Where the events come from: a whole JSON document (an array, a batch envelope, one
/// event), held in memory, or NDJSON, read and sent a batch at a time so that a file of any
/// size needs only one batch in memory.
enum Source {
    Document(std::vec::IntoIter<Value>),
    Lines {
        lines: std::io::Lines<Box<dyn BufRead>>,
        /// The first line, already read to tell the formats apart.
        first: Option<String>,
        line_no: usize,
    },
}

impl Iterator for Source {
    type Item = anyhow::Result<Value>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Source::Document(events) => events.next().map(Ok),
            Source::Lines {
                lines,
                first,
                line_no,
            } => loop {
                let line = match first.take() {
                    Some(l) => l,
                    None => match lines.next()? {
                        Ok(l) => l,
                        Err(e) => return Some(Err(e.into())),
                    },
                };
                *line_no += 1;
                if line.trim().is_empty() {
                    continue;
                }
                return Some(
                    serde_json::from_str(&line)
                        .map_err(|e| Failure::user(format!("line {}: not JSON: {e}", *line_no))),
                );
            },
        }
    }
}

/// Open the input and tell a whole JSON document from NDJSON by its first line: NDJSON when
/// that line alone is a JSON object that is not a batch envelope.
fn open(file: &std::path::Path) -> anyhow::Result<(Source, Option<String>, Option<u64>)> {
    let mut reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| Failure::user(format!("cannot read {}: {e}", file.display())))?;
        Box::new(BufReader::with_capacity(1 << 20, f))
    };
    let mut first = String::new();
    while first.trim().is_empty() {
        first.clear();
        if reader.read_line(&mut first)? == 0 {
            break;
        }
    }
    let ndjson = matches!(
        serde_json::from_str::<Value>(first.trim()),
        Ok(Value::Object(ref o)) if !o.get("batch").is_some_and(Value::is_array)
    );
    if ndjson {
        let lines = count_lines(file).map(|n| n + 1);
        let source = Source::Lines {
            lines: reader.lines(),
            first: Some(first.trim_end_matches(['\n', '\r']).to_string()),
            line_no: 0,
        };
        return Ok((source, None, lines));
    }
    let mut text = first;
    reader.read_to_string(&mut text)?;
    let (events, token) = parse_events(&text)?;
    let n = events.len() as u64;
    Ok((Source::Document(events.into_iter()), token, Some(n)))
}

/// Lines after the first of a file, for the progress bar (`None` for stdin).
fn count_lines(file: &std::path::Path) -> Option<u64> {
    if file.as_os_str() == "-" {
        return None;
    }
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(file).ok()?);
    let mut n = 0u64;
    loop {
        let buf = reader.fill_buf().ok()?;
        if buf.is_empty() {
            break;
        }
        n += buf.iter().filter(|b| **b == b'\n').count() as u64;
        let len = buf.len();
        reader.consume(len);
    }
    Some(n.saturating_sub(1))
}

/// Run the command: exit 0 when every event was accepted, 1 when some were rejected.
pub fn run(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let (events, file_token, total) = open(&args.file)?;
    let token = args.token.or(file_token);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(send(
        &args.socket,
        events,
        total,
        token,
        args.batch_size.max(1),
    ))
}

async fn send(
    socket: &std::path::Path,
    mut events: Source,
    total: Option<u64>,
    token: Option<String>,
    batch: usize,
) -> anyhow::Result<ExitCode> {
    let mut conn = Conn::unix(socket).await?;
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let (mut accepted, mut rejected, mut sent) = (0usize, 0usize, 0usize);
    for n in 0.. {
        let chunk = events
            .by_ref()
            .take(batch)
            .collect::<anyhow::Result<Vec<Value>>>();
        let chunk = chunk.inspect_err(|_| bar.abandon())?;
        if chunk.is_empty() {
            break;
        }
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
                sent,
                resp.status
            )));
        }
        let answer = resp.json();
        let refused = answer.get("rejected").and_then(Value::as_array);
        for item in refused.into_iter().flatten() {
            bar.println(format!(
                "rejected event {}: {}",
                sent + item["index"].as_u64().unwrap_or(0) as usize,
                item["detail"]
            ));
        }
        let r = refused.map_or(0, Vec::len);
        rejected += r;
        accepted += chunk.len() - r;
        sent += chunk.len();
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{accepted} accepted, {rejected} rejected, {sent} events in {secs:.2}s ({:.0} events/s)",
        sent as f64 / secs.max(1e-9)
    );
    Ok(if rejected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
