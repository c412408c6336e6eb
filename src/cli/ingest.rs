//! `idstitch ingest FILE|-`: send events to a running daemon in order, with a progress bar.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde_json::{json, Value};

use super::client::{Conn, Response};
use super::Failure;

/// Options of `idstitch ingest`.
#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    /// NDJSON (one event per line) or JSON (an event, an array, or a `{"batch": [...]}`); `-` is
    /// stdin. NDJSON is sent as it is read, a batch at a time, so a file of any size fits in
    /// memory; a line that is not JSON stops the run after the batches before it were sent.
    /// NDJSON holds one event object per line; a file whose first line is not one is read as
    /// one JSON document (a `{"batch": [...]}` or an array, which may span lines), whole,
    /// before anything is sent. A line holding a whole envelope is refused, by its line.
    /// An event that is JSON but holds a number out of range (`1e400`) is refused alone, by
    /// its line or place, and the run goes on.
    pub file: PathBuf,
    /// The daemon's socket.
    #[arg(
        long,
        env = "IDSTITCH_SOCKET",
        default_value = "./data/store/idstitch.sock"
    )]
    pub socket: PathBuf,
    /// Project token for events that carry none (no `api_key`, `token` or `properties.token`,
    /// and no `api_key` of a batch envelope): an event's own token still wins.
    #[arg(long)]
    pub token: Option<String>,
    /// Events per request, at least 1 (the daemon's --max-events-per-request is the most).
    #[arg(long, default_value_t = 500, value_parser = at_least_one)]
    pub batch_size: usize,
    /// How many times one request is sent again before the run stops, when the daemon answers
    /// 503 (degraded or stopping: its `Retry-After` is waited, at most 30 s) or the connection
    /// fails mid-run (the daemon restarting: waits of 0.5 s, doubling up to 30 s). Each retry
    /// is one line on stderr. Not retried: any other answer (a 4xx, a 5xx other than 503), and
    /// a daemon not reachable at the start. A resent request is safe: the daemon drops events
    /// it already stored by their `uuid`, and an event sent without one is given a random
    /// `uuid` before its first send (as PostHog's capture does), kept across retries.
    #[arg(long, default_value_t = 8)]
    pub retries: u32,
}

/// A count of at least 1 (`--batch-size 0` would send nothing, or one event at a time).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("0 is not in 1.. (at least one event per request)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A file's events, each with its position, read whole (a JSON document, or NDJSON that
/// does not start with an event object), and the batch token of an envelope.
pub struct Parsed {
    pub items: Vec<(usize, Item)>,
    pub token: Option<String>,
    /// What a position counts: `"event"` (the place in a document, from 1) or `"line"`.
    pub unit: &'static str,
}

/// Parse a file of events: a JSON document, else NDJSON, whose first line is line
/// `skipped + 1` of the file (blank lines before it were read already). A document is read
/// element by element, so that an event serde_json cannot hold (a number out of `f64`'s
/// range) is refused alone, as a line is.
pub fn parse_events(text: &str, skipped: usize) -> anyhow::Result<Parsed> {
    use serde_json::value::RawValue;
    if let Ok(doc) = serde_json::from_str::<&RawValue>(text) {
        // Each element as an item; one that is not JSON is named by its place.
        let elements = |items: Vec<&RawValue>, token| -> anyhow::Result<Parsed> {
            let item = |(n, raw): (usize, &&RawValue)| {
                let item = item_of(raw.get())
                    .map_err(|e| Failure::user(format!("event {}: {e}", n + 1)))?;
                Ok((n + 1, item))
            };
            Ok(Parsed {
                items: items
                    .iter()
                    .enumerate()
                    .map(item)
                    .collect::<anyhow::Result<_>>()?,
                token,
                unit: "event",
            })
        };
        if let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(doc.get()) {
            return elements(items, None);
        }
        if let Some((batch, token)) = envelope(doc.get()) {
            return elements(serde_json::from_str(batch.get())?, token);
        }
        return Ok(Parsed {
            items: vec![(1, item_of(doc.get())?)],
            token: None,
            unit: "event",
        });
    }
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = skipped + n + 1;
        let item = item_of(line).map_err(|e| Failure::user(format!("line {at}: {e}")))?;
        items.push((at, item));
    }
    Ok(Parsed {
        items,
        token: None,
        unit: "line",
    })
}

/// The `batch` array and `api_key` of a batch envelope (`{"batch": [...]}`), if `text` is one.
fn envelope(text: &str) -> Option<(&serde_json::value::RawValue, Option<String>)> {
    use serde_json::value::RawValue;
    let fields: std::collections::HashMap<String, &RawValue> = serde_json::from_str(text).ok()?;
    let batch = *fields.get("batch").filter(|b| b.get().starts_with('['))?;
    let token = fields
        .get("api_key")
        .and_then(|t| serde_json::from_str::<String>(t.get()).ok());
    Some((batch, token))
}

/// One event's JSON text as an [`Item`]: the event, or why it is refused when it is JSON
/// that serde_json cannot hold; an error when it is not JSON.
fn item_of(text: &str) -> anyhow::Result<Item> {
    // A lone UTF-16 surrogate escape, which the daemon reads as U+FFFD, is no reason to stop.
    let mut bytes = std::borrow::Cow::Borrowed(text.as_bytes());
    crate::api::decode::replace_lone_surrogates(&mut bytes);
    // Only a line with a replacement is a new text (ASCII replaced ASCII: still UTF-8).
    let replaced;
    let text = match bytes {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(b) => {
            replaced = String::from_utf8(b).unwrap_or_else(|_| text.to_string());
            replaced.as_str()
        }
    };
    match serde_json::from_str::<Value>(text) {
        // The daemon would read it as an event without a name: say what it is instead.
        Ok(v) if v.get("batch").is_some_and(Value::is_array) && v.get("event").is_none() => {
            Ok(Item::Refused(
                "a {\"batch\": [...]} envelope, not an event: ingest reads one event per line, \
                 or one whole JSON document (one envelope, or an array of events)"
                    .into(),
            ))
        }
        Ok(v) => Ok(Item::Event(v)),
        Err(e) => match refusal(text) {
            Some(why) => Ok(Item::Refused(why)),
            None => Err(Failure::user(format!("not JSON: {e}"))),
        },
    }
}

/// Where the events come from: a whole JSON document (an array, a batch envelope, one
/// event), held in memory, or NDJSON, read and sent a batch at a time so that a file of any
/// size needs only one batch in memory. NDJSON whose first line is not an event object (an
/// array, an envelope) is read whole too, and its positions are still lines.
enum Source {
    /// Read whole ([`parse_events`]).
    Document {
        items: std::vec::IntoIter<(usize, Item)>,
        unit: &'static str,
    },
    Lines {
        lines: std::io::Lines<Box<dyn BufRead>>,
        /// The first line, already read to tell the formats apart.
        first: Option<String>,
        /// The number of the line read last.
        line_no: usize,
    },
}

impl Source {
    /// What a position of [`Iterator::next`] counts: lines of NDJSON, events of a document.
    fn unit(&self) -> &'static str {
        match self {
            Source::Document { unit, .. } => unit,
            Source::Lines { .. } => "line",
        }
    }
}

/// What one position of the input holds.
pub enum Item {
    /// An event to send.
    Event(Value),
    /// A line that is JSON but cannot be sent: what is wrong with it. The daemon would refuse
    /// it alone, so it is refused here alone, and the run goes on.
    Refused(String),
}

/// Why a line that serde_json cannot read as a value is still JSON, if it is: a number out of
/// `f64`'s range (`1e400`), which the daemon refuses as one event's problem, not the run's.
fn refusal(line: &str) -> Option<String> {
    let number = crate::domain::scan::out_of_range_in_json(line)?;
    Some(format!(
        "a number is out of range ({number}): {}",
        crate::domain::normalize::FINITE_NUMBERS
    ))
}

impl Iterator for Source {
    /// An event and where it is: its line (NDJSON) or its place in the document, from 1.
    type Item = anyhow::Result<(usize, Item)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Source::Document { items, .. } => items.next().map(Ok),
            Source::Lines {
                lines,
                first,
                line_no,
            } => loop {
                let line = match first.take() {
                    Some(l) => l,
                    None => match lines.next()? {
                        Ok(l) => l,
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                            return Some(Err(Failure::user(format!(
                                "line {}: not UTF-8 text",
                                *line_no + 1
                            ))))
                        }
                        Err(e) => return Some(Err(e.into())),
                    },
                };
                *line_no += 1;
                if line.trim().is_empty() {
                    continue;
                }
                let at = *line_no;
                return Some(
                    item_of(&line)
                        .map(|item| (at, item))
                        .map_err(|e| Failure::user(format!("line {at}: {e}"))),
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
        // A directory opens, and only its first read fails ("Is a directory", naming nothing).
        if f.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(Failure::user(format!(
                "{} is a directory: give a file of events (NDJSON or JSON), or - for stdin",
                file.display()
            )));
        }
        Box::new(BufReader::with_capacity(1 << 20, f))
    };
    let mut first = String::new();
    let mut blank = 0usize;
    while first.trim().is_empty() {
        first.clear();
        let read = reader.read_line(&mut first).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                Failure::user(format!("line {}: not UTF-8 text", blank + 1))
            }
            _ => anyhow::anyhow!("cannot read {}: {e}", file.display()),
        })?;
        if read == 0 {
            break;
        }
        blank += 1;
    }
    // A byte-order mark (some editors write one) is not part of the JSON.
    if let Some(rest) = first.strip_prefix('\u{feff}') {
        first = rest.to_string();
    }
    // Read as raw text so that a first line holding a number out of range is still NDJSON.
    let first_line = first.trim();
    let ndjson = first_line.starts_with('{')
        && serde_json::from_str::<&serde_json::value::RawValue>(first_line).is_ok()
        && envelope(first_line).is_none();
    if ndjson {
        let lines = count_lines(file).map(|n| n + 1);
        let source = Source::Lines {
            lines: reader.lines(),
            first: Some(first.trim_end_matches(['\n', '\r']).to_string()),
            // The blank lines before the first, which is read next.
            line_no: blank.saturating_sub(1),
        };
        return Ok((source, None, lines));
    }
    let mut text = first;
    reader
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                Failure::user(format!("{}: not UTF-8 text", file.display()))
            }
            _ => e.into(),
        })?;
    let parsed = parse_events(&text, blank.saturating_sub(1))?;
    let n = parsed.items.len() as u64;
    let source = Source::Document {
        items: parsed.items.into_iter(),
        unit: parsed.unit,
    };
    Ok((source, parsed.token, Some(n)))
}

/// Lines after the first of a regular file, for the progress bar. `None` for anything else:
/// stdin, a pipe (`<(zcat f.gz)`, `/dev/stdin`) or a FIFO, which a second reader would drain
/// of the events the first has not read yet.
fn count_lines(file: &std::path::Path) -> Option<u64> {
    if file.as_os_str() == "-" || !std::fs::metadata(file).ok()?.is_file() {
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tokens = Tokens {
        batch: file_token,
        default: args.token,
    };
    rt.block_on(send(
        &args.socket,
        events,
        total,
        tokens,
        args.batch_size,
        args.retries,
    ))
}

/// The longest wait before a retry, whatever `Retry-After` asks.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// The wait before retry `n` (from 1) after a connection failure: 0.5 s, doubling, capped.
fn backoff(n: u32) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(MAX_RETRY_WAIT)
}

/// The wait a 503 asks for in `Retry-After`, capped: seconds, or an HTTP date (RFC 9110's
/// IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`). A date already past asks for none: the
/// backoff is waited then, so that retries do not follow each other at once.
fn retry_after(resp: &Response) -> Option<Duration> {
    let value = resp
        .headers
        .iter()
        .find(|(k, _)| k == "retry-after")?
        .1
        .trim();
    retry_wait(value, chrono::Utc::now()).map(|wait| wait.min(MAX_RETRY_WAIT))
}

/// The wait one `Retry-After` value asks for at `now`, uncapped.
fn retry_wait(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - now).to_std().ok()
}

/// One line on stderr for each rejected event, `(position, why)`, in the order of the input:
/// those refused here and those the daemon refused, once the request that held them is
/// answered (a request that fails says where to resend from, and they are said then).
fn say_rejections(bar: &ProgressBar, unit: &str, mut rejections: Vec<(usize, String)>) {
    rejections.sort_by_key(|(at, _)| *at);
    for (at, why) in rejections {
        let line = format!("rejected {unit} {at}: {why}");
        // Printed through the bar, which may be hidden (stderr not a terminal).
        bar.suspend(|| eprintln!("{line}"));
    }
}

/// Give an event that the daemon would store without a uuid (none, `null` or `""`) a random
/// one, so that a resend of its request is deduplicated like any other. A uuid of another
/// type is left for the daemon to refuse, with its reason.
fn ensure_uuid(event: &mut Value) {
    if let Some(fields) = event.as_object_mut() {
        // The daemon's own rule: `Ok(None)` is no uuid, an `Err` a uuid it refuses.
        if matches!(crate::domain::normalize::uuid_of(fields), Ok(None)) {
            fields.insert(
                "uuid".into(),
                Value::String(uuid::Uuid::new_v4().to_string()),
            );
        }
    }
}

/// The project tokens of a run.
struct Tokens {
    /// The `api_key` of the file's batch envelope: every event's (spec §1.3).
    batch: Option<String>,
    /// `--token`: for each event that carries none.
    default: Option<String>,
}

/// Whether an event names its project itself (spec §1.3: a non-empty `api_key`, `token` or
/// `properties.token`).
fn carries_token(event: &Value) -> bool {
    let named = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    named(event.get("api_key"))
        || named(event.get("token"))
        || named(event.get("properties").and_then(|p| p.get("token")))
}

/// One request of a run, for what its errors say.
struct Request {
    /// Its number in the run, from 1.
    n: u64,
    /// The positions it holds (`lines 1-100`).
    what: String,
    /// What was acknowledged before it, and where to resend from.
    stopped: String,
}

/// Send one batch, retrying a 503 (after its `Retry-After`) and a lost connection up to
/// `retries` times; the daemon's answer to a 200. Any other status is an error saying what was
/// acknowledged before this request.
async fn post_batch(
    conn: &mut Option<Conn>,
    socket: &std::path::Path,
    body: &Value,
    retries: u32,
    bar: &ProgressBar,
    request: Request,
) -> anyhow::Result<Value> {
    let Request { n, what, stopped } = request;
    let mut attempt = 0;
    let outcome = loop {
        let outcome = match conn.as_mut() {
            Some(c) => c.post_json("/batch/", body).await,
            None => match Conn::unix(socket).await {
                Ok(c) => conn.insert(c).post_json("/batch/", body).await,
                Err(e) => Err(e),
            },
        };
        let (wait, why) = match &outcome {
            Ok(r) if r.status == 503 => (
                retry_after(r).unwrap_or_else(|| backoff(attempt + 1)),
                format!("503: {}", r.detail()),
            ),
            Ok(_) => break outcome,
            Err(e) => {
                *conn = None;
                (
                    backoff(attempt + 1),
                    format!("the connection to the daemon failed ({e})"),
                )
            }
        };
        if attempt == retries {
            break outcome;
        }
        attempt += 1;
        let line = format!(
            "request {n} ({what}): {why}; retry {attempt} of {retries} in {:.1}s",
            wait.as_secs_f64()
        );
        bar.suspend(|| eprintln!("{line}"));
        tokio::time::sleep(wait).await;
    };
    let tried = match attempt {
        0 => String::new(),
        a => format!(" after {a} retries"),
    };
    let resp = outcome.map_err(|e| {
        Failure::runtime(format!(
            "{e}: the daemon went away during request {n}{tried} ({stopped})"
        ))
    })?;
    if resp.status != 200 {
        let detail = resp.detail();
        // What this command can do about the two refusals its own options decide.
        let hint = match resp.json()["code"].as_str() {
            Some("no_token") => "Pass --token for events that carry none.",
            Some("too_many_events") => "Pass a smaller --batch-size.",
            _ => "",
        };
        let hint = match (hint, detail.trim_end().ends_with('.')) {
            ("", _) => String::new(),
            (h, true) => format!(" {h}"),
            (h, false) => format!(". {h}"),
        };
        let message = format!(
            "request {n} ({what}) was refused with {}{tried}: {detail}{hint} ({stopped})",
            resp.status
        );
        return Err(match resp.status {
            500.. => Failure::runtime(message),
            _ => Failure::user(message),
        });
    }
    Ok(resp.json())
}

async fn send(
    socket: &std::path::Path,
    mut events: Source,
    total: Option<u64>,
    tokens: Tokens,
    batch: usize,
    retries: u32,
) -> anyhow::Result<ExitCode> {
    // Not retried: a daemon not there at the start is most likely the wrong --socket.
    let mut conn = Some(Conn::unix(socket).await?);
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    bar.set_style(super::progress_style(
        "{bar:40} {pos}/{len} events  {rate}  eta {eta}",
    ));
    let started = Instant::now();
    let unit = events.unit();
    let (mut accepted, mut rejected, mut sent) = (0usize, 0usize, 0usize);
    // The position of the last event acknowledged.
    let mut done = 0;
    // Where a run stopped, and how to go on.
    // `sent` events were answered, `accepted` of them stored: the rest were refused (by this
    // command or the daemon), and resending them would not help.
    let stopped = |sent: usize, accepted: usize, done: usize| {
        match sent {
        0 => "no event was acknowledged".to_string(),
        _ => format!(
            "the {sent} events up to {unit} {done} were answered, {accepted} of them stored and {} refused; resend from {unit} {}",
            sent - accepted,
            done + 1
        ),
    }
    };
    // Requests sent so far (a chunk of refused lines only sends none).
    let mut n = 0u64;
    loop {
        let chunk = events
            .by_ref()
            .take(batch)
            .collect::<anyhow::Result<Vec<(usize, Item)>>>();
        let chunk = chunk.map_err(|e| {
            bar.abandon();
            Failure::user(format!("{e} ({})", stopped(sent, accepted, done)))
        })?;
        let Some(&(last, _)) = chunk.last() else {
            break;
        };
        let mut positions = Vec::with_capacity(chunk.len());
        let mut refused_here = Vec::new();
        let mut chunk: Vec<Value> = chunk
            .into_iter()
            .filter_map(|(at, item)| match item {
                Item::Event(v) => {
                    positions.push(at);
                    Some(v)
                }
                Item::Refused(why) => {
                    refused_here.push((at, why));
                    None
                }
            })
            .collect();
        let here = refused_here.len();
        let count = chunk.len();
        // The daemon's rejections, by position; a chunk of refused lines only sends nothing.
        let by_daemon = if chunk.is_empty() {
            Vec::new()
        } else {
            if let (None, Some(t)) = (&tokens.batch, &tokens.default) {
                for event in chunk.iter_mut().filter(|e| !carries_token(e)) {
                    if let Some(fields) = event.as_object_mut() {
                        fields.insert("api_key".into(), Value::String(t.clone()));
                    }
                }
            }
            chunk.iter_mut().for_each(ensure_uuid);
            let mut body = json!({ "batch": chunk });
            if let Some(t) = &tokens.batch {
                body["api_key"] = Value::String(t.clone());
            }
            n += 1;
            let request = Request {
                n,
                what: format!("{unit}s {}-{last}", positions[0]),
                stopped: stopped(sent, accepted, done),
            };
            let answer = post_batch(&mut conn, socket, &body, retries, &bar, request)
                .await
                .inspect_err(|_| bar.abandon())?;
            let refused = answer.get("rejected").and_then(Value::as_array);
            refused
                .into_iter()
                .flatten()
                .map(|item| {
                    let at = item["index"].as_u64().unwrap_or(0) as usize;
                    let detail = match &item["detail"] {
                        Value::String(d) => d.clone(),
                        other => other.to_string(),
                    };
                    (positions.get(at).copied().unwrap_or(0), detail)
                })
                .collect()
        };
        let r = by_daemon.len();
        say_rejections(
            &bar,
            unit,
            refused_here.into_iter().chain(by_daemon).collect(),
        );
        done = last;
        rejected += r + here;
        accepted += count - r;
        sent += count + here;
        bar.inc((count + here) as u64);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        let now = chrono::DateTime::parse_from_rfc3339("1994-11-06T08:49:30Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(retry_wait("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_wait("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        // A date already past, and what is neither, ask for no particular wait.
        assert_eq!(retry_wait("Sun, 06 Nov 1994 08:00:00 GMT", now), None);
        assert_eq!(retry_wait("soon", now), None);
        assert_eq!(retry_wait("-1", now), None);
    }
}
