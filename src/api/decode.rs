//! Decoding of capture request bodies, as the PostHog SDKs send them, into a list of events.
//!
//! Steps: size check, `Content-Encoding` (gzip, deflate), gzip by magic bytes or by
//! `?compression=gzip-js`, the `data=<base64>` form, JSON, then the shape (envelope, array or
//! one event) and the limits on event count and nesting. No input makes it panic.

use std::borrow::Cow;
use std::io::Read;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{alphabet, Engine as _};
use flate2::read::{MultiGzDecoder, ZlibDecoder};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::domain::scan::Scanner;
use crate::domain::wire::{parse_value, IndexedEvent, Key, OverLimit, SkimmedEvent, WireEvent};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const FORM_TYPE: &str = "application/x-www-form-urlencoded";
const PADDING: DecodePaddingMode = DecodePaddingMode::Indifferent;
/// Standard base64 that accepts the data with or without its `=` padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(PADDING),
);

/// Limits applied while decoding (all configurable by the daemon).
#[derive(Clone, Debug)]
pub struct DecodeLimits {
    /// Largest body accepted, as received and after decompression (default 20 MiB).
    pub max_body_bytes: usize,
    /// Largest number of events in one request (default 10,000).
    pub max_events: usize,
    /// Deepest JSON nesting of one event, the event object counting as 1 (default 64).
    pub max_depth: usize,
    /// Most properties of one event: its `properties`, `$set` and `$set_once` objects (top
    /// level or nested in `properties`) and `$unset` entries, counted together (default 10,000).
    pub max_properties: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        let max_body_bytes = 20 * 1024 * 1024;
        Self {
            max_body_bytes,
            max_events: 10_000,
            max_depth: 64,
            max_properties: 10_000,
        }
    }
}

/// What the HTTP layer hands over.
#[derive(Clone, Copy, Debug)]
pub struct RawRequest<'a> {
    /// The body exactly as received.
    pub body: &'a [u8],
    /// The `Content-Encoding` header, if any.
    pub content_encoding: Option<&'a str>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// The raw query string, without the leading `?`.
    pub query: &'a str,
}

/// A decoded capture request.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureBody {
    /// The envelope's `api_key` (else `token`) if the body was an envelope; for v1 the bearer token.
    pub api_key: Option<String>,
    /// The events in request order, their properties still JSON text; each is still to be
    /// validated on its own.
    pub events: Vec<WireEvent>,
    /// The envelope's `sent_at` (for v1, else `created_at`) when it is a string.
    pub sent_at: Option<String>,
    /// posthog-js's `_` query parameter: when it sent the request, in ms ([`query_sent_at_ms`]).
    pub query_sent_at_ms: Option<i64>,
    /// Bytes of the JSON text after every layer of compression and encoding was undone:
    /// what the events take in memory, whatever the body took on the wire.
    pub decoded_bytes: usize,
}

/// Why a capture request was refused as a whole; `Display` says what is wrong and what to do.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The body is over `max_body_bytes`, as received or after decompression (413).
    #[error("The request body is over the limit of {limit} bytes (counted after decompression); send smaller batches.")]
    PayloadTooLarge { limit: usize },
    /// A `Content-Encoding` or `compression` query value that is not supported.
    #[error("The encoding `{0:.40}` is not supported; send the body uncompressed, gzip, deflate or as base64 form data.")]
    UnsupportedEncoding(String),
    /// The body claims gzip, deflate or base64 but does not decode as such.
    #[error("The body is declared as {0} but does not decode ({1}); send valid {0} data or no compression.")]
    Undecodable(&'static str, String),
    /// The body is not UTF-8 JSON; the detail names the line and column.
    #[error("The body is not valid JSON ({0}); send UTF-8 JSON.")]
    InvalidJson(String),
    /// Valid JSON of the wrong shape; the detail says what was found.
    #[error(
        "The body {0}; send {{\"batch\": [event, ...]}}, an array of events or one event object."
    )]
    InvalidPayload(String),
    /// Capture v1's body of the wrong shape: it takes only an object with a `batch`.
    #[error("The body {0}; capture v1 takes {{\"batch\": [event, ...]}}, with the project token in `Authorization: Bearer <token>`.")]
    InvalidV1Payload(String),
    /// No events at all.
    #[error("The batch is empty; send at least one event.")]
    EmptyBatch,
    /// More than `max_events` events (413). Counting stops past the limit.
    #[error("The request holds more than {limit} events, the limit (answered with 413); split it into smaller batches.")]
    TooManyEvents { limit: usize },
    /// A body nested deeper than serde_json's 128 levels, which it cannot read (an event
    /// deeper than `max_depth` is refused alone: [`WireEvent::OverLimit`]).
    #[error("The body is nested deeper than {limit} levels; flatten its events' properties.")]
    TooDeep { limit: usize },
}

impl DecodeError {
    /// The HTTP status to answer: 413 for the size and count limits, 400 for the rest.
    pub fn status(&self) -> u16 {
        match self {
            Self::PayloadTooLarge { .. } | Self::TooManyEvents { .. } => 413,
            _ => 400,
        }
    }

    /// The machine-readable code for the `code` field of the error answer.
    pub fn code(&self) -> &'static str {
        match self {
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedEncoding(_) | Self::Undecodable(..) => "invalid_encoding",
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidPayload(_) | Self::InvalidV1Payload(_) => "invalid_payload",
            Self::EmptyBatch => "empty_batch",
            Self::TooManyEvents { .. } => "too_many_events",
            Self::TooDeep { .. } => "too_deep",
        }
    }
}

/// Decodes the body of `/batch/`, `/capture/`, `/e/` and the like into its events.
pub fn decode_capture(
    req: &RawRequest<'_>,
    limits: &DecodeLimits,
) -> Result<CaptureBody, DecodeError> {
    let bytes = decode_bytes(req, limits)?;
    let decoded_bytes = bytes.len();
    let (api_key, events, sent_at) = match parse_top(utf8(&bytes)?, limits.max_events)? {
        Top::Envelope(env) => {
            let api_key = env.string("api_key").or_else(|| env.string("token"));
            let sent_at = env.string("sent_at");
            (api_key, env.events()?, sent_at)
        }
        Top::Events(events) => (None, events, None),
        Top::Event(event) => (None, vec![event], None),
    };
    Ok(CaptureBody {
        api_key,
        events: checked_events(events, limits)?,
        sent_at,
        query_sent_at_ms: query_sent_at_ms(req.query),
        decoded_bytes,
    })
}

impl CaptureBody {
    /// When the client says it sent the request, on its clock: the body's `sent_at` when it
    /// reads as a time, else the `_` query parameter (as PostHog's capture takes them).
    pub fn sent_at_ms(&self) -> Option<i64> {
        let body = self.sent_at.as_deref();
        body.and_then(crate::domain::time::parse_time_ms)
            .or(self.query_sent_at_ms)
    }
}

/// posthog-js's `_` query parameter (`Date.now()` when it sent), when it is an integer of
/// milliseconds after 2020: a smaller one is taken for seconds from an old SDK and ignored, as
/// PostHog's capture does.
pub fn query_sent_at_ms(query: &str) -> Option<i64> {
    const YEAR_2021_MS: i64 = 1_609_459_200_000;
    let (_, v) = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "_")?;
    v.trim()
        .parse::<i64>()
        .ok()
        .filter(|ms| *ms >= YEAR_2021_MS)
}

/// Capture v1 (`POST /i/v1/analytics/events`): body `{"batch":[...]}` (maybe gzip), token from
/// `Authorization: Bearer <token>` (passed in), and for each event `options.process_person_profile`
/// (bool) moved into `properties.$process_person_profile`; same limits.
pub fn decode_capture_v1(
    req: &RawRequest<'_>,
    bearer_token: Option<&str>,
    limits: &DecodeLimits,
) -> Result<CaptureBody, DecodeError> {
    // Its own advice for a body of the wrong shape: v0's names shapes v1 does not take.
    let v1 = |e| match e {
        DecodeError::InvalidPayload(d) => DecodeError::InvalidV1Payload(d),
        e => e,
    };
    let bytes = decode_bytes(req, limits).map_err(v1)?;
    let env = match parse_top(utf8(&bytes)?, limits.max_events).map_err(v1)? {
        Top::Envelope(env) => env,
        _ => return Err(v1(invalid("has no `batch` array"))),
    };
    let sent_at = env.string("sent_at").or_else(|| env.string("created_at"));
    let mut events = checked_events(env.events().map_err(v1)?, limits)?;
    events.iter_mut().for_each(move_process_person_profile);
    let api_key = bearer_token.map(str::trim).filter(|t| !t.is_empty());
    Ok(CaptureBody {
        api_key: api_key.map(str::to_owned),
        events,
        sent_at,
        query_sent_at_ms: None,
        decoded_bytes: bytes.len(),
    })
}

/// A body that is an object with a `batch`: its batch, and its other fields as JSON text.
struct Envelope<'a> {
    batch: Batch<'a>,
    fields: Vec<(Key<'a>, &'a str)>,
}

impl<'a> Envelope<'a> {
    /// `field` when it is a string (the last, if repeated).
    fn string(&self, field: &str) -> Option<String> {
        let (_, v) = self.fields.iter().rev().find(|(k, _)| k.0 == field)?;
        match parse_value(v) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    fn events(self) -> Result<Vec<SkimmedEvent<'a>>, DecodeError> {
        match self.batch {
            Batch::Events(events) => Ok(events),
            Batch::Not(found) => Err(invalid(format!(
                "has a `batch` that is {found}, not an array"
            ))),
        }
    }
}

/// An envelope's `batch`: its events, or what it is instead of an array.
enum Batch<'a> {
    Events(Vec<SkimmedEvent<'a>>),
    Not(&'static str),
}

/// The shape of a body, read in one pass of serde_json over it: its events skimmed, not
/// parsed ([`SkimmedEvent`]).
enum Top<'a> {
    Envelope(Envelope<'a>),
    Events(Vec<SkimmedEvent<'a>>),
    Event(SkimmedEvent<'a>),
}

impl<'de> serde::Deserialize<'de> for Top<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, SeqAccess};
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("events")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top<'de>, A::Error> {
                skim_events(seq).map(Top::Events)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Top<'de>, A::Error> {
                let (mut batch, mut fields) = (None, Vec::new());
                while let Some(key) = m.next_key::<Key<'de>>()? {
                    match key.0 == "batch" {
                        true => batch = Some(m.next_value::<Batch<'de>>()?),
                        false => fields.push((key, m.next_value::<&'de RawValue>()?)),
                    }
                }
                Ok(match batch {
                    Some(batch) => {
                        let fields = fields.into_iter().map(|(k, v)| (k, v.get())).collect();
                        Top::Envelope(Envelope { batch, fields })
                    }
                    None => Top::Event(SkimmedEvent::Object(fields)),
                })
            }
        }
        d.deserialize_any(V)
    }
}

thread_local! {
    /// The most events [`skim_events`] takes before it stops the parse ([`parse_top`] sets it:
    /// serde's `Deserialize` has no way to be handed it).
    static MAX_EVENTS: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// How serde_json's error starts when [`skim_events`] stopped at the limit.
const TOO_MANY_EVENTS: &str = "idstitch: too many events";

/// The events of an array, skimmed; the parse stops one event past [`MAX_EVENTS`], so that
/// a small compressed body of millions of tiny events costs nothing like their number.
fn skim_events<'de, A: serde::de::SeqAccess<'de>>(
    mut seq: A,
) -> Result<Vec<SkimmedEvent<'de>>, A::Error> {
    let max = MAX_EVENTS.with(|m| m.get());
    let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(64).min(max));
    while let Some(e) = seq.next_element()? {
        if events.len() == max {
            return Err(serde::de::Error::custom(TOO_MANY_EVENTS));
        }
        events.push(e);
    }
    Ok(events)
}

impl<'de> serde::Deserialize<'de> for Batch<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess};
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Batch<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Batch<'de>, A::Error> {
                skim_events(seq).map(Batch::Events)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Batch<'de>, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Batch::Not("an object"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Batch<'de>, E> {
                Ok(Batch::Not("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Batch<'de>, E> {
                Ok(Batch::Not("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Batch<'de>, E> {
                Ok(Batch::Not("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Batch<'de>, E> {
                Ok(Batch::Not("a number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Batch<'de>, E> {
                Ok(Batch::Not("a string"))
            }
            fn visit_unit<E>(self) -> Result<Batch<'de>, E> {
                Ok(Batch::Not("null"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Undoes every layer of compression and encoding: the JSON bytes.
fn decode_bytes<'a>(
    req: &RawRequest<'a>,
    limits: &DecodeLimits,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    let max = limits.max_body_bytes;
    if req.body.len() > max {
        return Err(DecodeError::PayloadTooLarge { limit: max });
    }
    let mut query = form_urlencoded::parse(req.query.as_bytes());
    let compression = query.find(|(k, _)| k == "compression").map(|(_, v)| v);
    let compression = compression
        .as_deref()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (gzip_js, base64_form) = match compression.as_str() {
        "" | "none" => (false, false),
        "gzip-js" | "gzip" => (true, false),
        "base64" => (false, true),
        other => {
            return Err(DecodeError::UnsupportedEncoding(format!(
                "compression={other}"
            )))
        }
    };
    let mut codings = Vec::new();
    for token in req.content_encoding.unwrap_or("").split(',').map(str::trim) {
        match token.to_ascii_lowercase().as_str() {
            "" | "identity" => {}
            "gzip" | "x-gzip" => codings.push("gzip"),
            "deflate" => codings.push("deflate"),
            _ => return Err(DecodeError::UnsupportedEncoding(token.to_owned())),
        }
    }
    if codings.is_empty() && (gzip_js || req.body.starts_with(&GZIP_MAGIC)) {
        codings.push("gzip");
    }
    let mut bytes = Cow::Borrowed(req.body);
    for coding in codings.into_iter().rev() {
        bytes = Cow::Owned(inflate(&bytes, coding, max)?);
    }
    let content_type = req
        .content_type
        .unwrap_or("")
        .trim_start()
        .to_ascii_lowercase();
    // A form type on a body that is JSON (curl's `-d` sends that type; a gzip body carries
    // it through some proxies) reads it as the JSON it is: no form starts with `{` or `[`.
    if base64_form || (content_type.starts_with(FORM_TYPE) && !is_json_text(&bytes)) {
        bytes = Cow::Owned(form_data(&bytes, max)?);
    }
    replace_lone_surrogates(&mut bytes);
    Ok(bytes)
}

/// Each escape of a lone UTF-16 surrogate (`\ud83d` without its pair: JavaScript writes one
/// for a string cut inside an emoji, as posthog-js's `.slice()` can) replaced, in place, by
/// `\ufffd`, as a NUL is (spec §1.2). JSON's grammar allows it, but it is no Unicode: serde_json
/// refuses it (a whole request lost for one character), and stored properties holding it
/// could not be read back. The same length, so nothing else moves. Copies the body only when
/// it has one.
pub fn replace_lone_surrogates(bytes: &mut Cow<'_, [u8]>) {
    let surrogate = |b: &[u8], at: usize| -> Option<u16> {
        let hex = b.get(at..at + 6)?;
        (hex[0] == b'\\' && hex[1] == b'u').then_some(())?;
        let code = u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()?;
        (0xD800..=0xDFFF).contains(&code).then_some(code)
    };
    let mut i = 0;
    while let Some(found) = memchr::memchr(b'\\', bytes.get(i..).unwrap_or_default()) {
        let at = i + found;
        let Some(code) = surrogate(bytes, at) else {
            // Any other escape is two bytes long at least (`\\` among them): skip both.
            i = at + 2;
            continue;
        };
        let paired = code <= 0xDBFF
            && surrogate(bytes, at + 6).is_some_and(|low| (0xDC00..=0xDFFF).contains(&low));
        if paired {
            i = at + 12;
        } else {
            bytes.to_mut()[at..at + 6].copy_from_slice(b"\\ufffd");
            i = at + 6;
        }
    }
}

/// The JSON text of `bytes`, a BOM removed.
fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("is empty"));
    }
    std::str::from_utf8(bytes)
        .map_err(|e| DecodeError::InvalidJson(format!("not UTF-8 from byte {}", e.valid_up_to())))
}

fn json_error(e: serde_json::Error, max_events: usize) -> DecodeError {
    match e.to_string() {
        m if m.starts_with(TOO_MANY_EVENTS) => DecodeError::TooManyEvents { limit: max_events },
        // Past serde_json's own limit of 128 levels (only when `max_depth` is set above it).
        m if m.starts_with("recursion limit exceeded") => DecodeError::TooDeep { limit: 128 },
        m => DecodeError::InvalidJson(m),
    }
}

/// The shape of the body's JSON, in one pass: the scan of the SDKs' shapes ([`scan_top`]),
/// else serde_json's, in which events are only skimmed (serde_json checks them without
/// recursion, so no depth overflows the stack), each then measured and parsed on its own.
/// More than `max_events` events stop either parse at once: the body is refused (413).
fn parse_top(text: &str, max_events: usize) -> Result<Top<'_>, DecodeError> {
    let mut over = false;
    if let Some(top) = scan_top(text, max_events, &mut over) {
        return Ok(top);
    }
    if over {
        return Err(DecodeError::TooManyEvents { limit: max_events });
    }
    let error = |e| json_error(e, max_events);
    match text.trim_start().as_bytes().first() {
        Some(b'[' | b'{') => {
            MAX_EVENTS.with(|m| m.set(max_events));
            let top = serde_json::from_str(text).map_err(error);
            MAX_EVENTS.with(|m| m.set(usize::MAX));
            top
        }
        _ => {
            let other: &RawValue = serde_json::from_str(text).map_err(error)?;
            Err(invalid(format!("is {}, not events", kind(other.get()))))
        }
    }
}

/// The shape of the body as the SDKs send it (an array of event objects, or an envelope
/// whose `batch` is one) checked and indexed in one pass ([`Scanner`]): the same [`Top`] that
/// serde_json's skim and the events' indexing give, in about half the work. `None` for
/// anything else, which [`parse_top`] leaves to serde_json: text that is not JSON (serde_json
/// names the error), a single event, a `batch` that is not an array or is sent twice, an
/// item that is not an object, and what the scanner leaves to serde_json. Sets `over` (and
/// gives `None`) when an array holds more than `max_events` events: the scan stops there.
fn scan_top<'a>(text: &'a str, max_events: usize, over: &mut bool) -> Option<Top<'a>> {
    let mut s = Scanner::new(text);
    s.ws();
    let top = match s.peek()? {
        b'[' => Top::Events(scan_events(&mut s, max_events, over)?),
        b'{' => {
            let (mut batch, mut fields) = (None, Vec::new());
            s.object(|s, key| {
                if key != "batch" {
                    fields.push((Key(key), s.value_text()?.0));
                } else if batch.is_none() && s.peek()? == b'[' {
                    batch = Some(scan_events(s, max_events, over)?);
                } else {
                    return None;
                }
                Some(())
            })?;
            let batch = Batch::Events(batch?);
            Top::Envelope(Envelope { batch, fields })
        }
        _ => return None,
    };
    s.at_end().then_some(top)
}

/// The events of the array at the scanner's position, each an object, checked and indexed;
/// `None`, with `over` set, at the event past `max_events`.
fn scan_events<'a>(
    s: &mut Scanner<'a>,
    max_events: usize,
    over: &mut bool,
) -> Option<Vec<SkimmedEvent<'a>>> {
    let mut events = Vec::with_capacity(128);
    s.array(|s| {
        if events.len() == max_events {
            *over = true;
            return None;
        }
        (s.peek()? == b'{').then_some(())?;
        events.push(SkimmedEvent::Indexed(IndexedEvent::scan(s)?));
        Some(())
    })?;
    Some(events)
}

/// Whether `bytes` start as a JSON object or array does, past white space and a byte order mark.
fn is_json_text(bytes: &[u8]) -> bool {
    let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    matches!(first, Some(b'{' | b'['))
}

/// The JSON inside a `data=<base64>` form; old SDKs put the URL-encoded JSON itself there.
fn form_data(body: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    let mut form = form_urlencoded::parse(body);
    let Some((_, data)) = form.find(|(k, _)| k == "data") else {
        return Err(invalid(format!(
            "is a form ({FORM_TYPE}) without a `data` field"
        )));
    };
    if data.trim_start().starts_with(['{', '[']) {
        return Ok(data.into_owned().into_bytes());
    }
    // Form decoding turned base64's '+' into ' '; also accept URL-safe base64 and line breaks.
    let data = data
        .bytes()
        .filter(|b| *b == b' ' || !b.is_ascii_whitespace());
    let data = data.map(|b| match b {
        b' ' | b'-' => b'+',
        b'_' => b'/',
        b => b,
    });
    let decoded = BASE64.decode(data.collect::<Vec<u8>>());
    let decoded = decoded.map_err(|e| DecodeError::Undecodable("base64", e.to_string()))?;
    match decoded.starts_with(&GZIP_MAGIC) {
        true => inflate(&decoded, "gzip", max),
        false => Ok(decoded),
    }
}

/// Inflates `bytes` through `take(max + 1)`, so a bomb never costs more than `max + 1` bytes.
fn inflate(bytes: &[u8], coding: &'static str, max: usize) -> Result<Vec<u8>, DecodeError> {
    let reader: Box<dyn Read + '_> = match coding {
        "gzip" if !bytes.starts_with(&GZIP_MAGIC) => {
            let detail = "it does not start with the gzip magic bytes 1f 8b".into();
            return Err(DecodeError::Undecodable(coding, detail));
        }
        "gzip" => Box::new(MultiGzDecoder::new(bytes)),
        // HTTP's deflate is zlib-wrapped (first byte 0x78), but some clients send raw deflate.
        _ if bytes.first() == Some(&0x78) => Box::new(ZlibDecoder::new(bytes)),
        _ => Box::new(flate2::read::DeflateDecoder::new(bytes)),
    };
    let mut out = Vec::new();
    let mut limited = reader.take((max as u64).saturating_add(1));
    let read = limited.read_to_end(&mut out);
    read.map_err(|e| DecodeError::Undecodable(coding, e.to_string()))?;
    match out.len() > max {
        true => Err(DecodeError::PayloadTooLarge { limit: max }),
        false => Ok(out),
    }
}

/// The events, checked against the limits and parsed. Too many events refuse the request; an
/// event too deep or with too many properties is refused alone ([`WireEvent::OverLimit`]), so
/// that its neighbours in the batch still count.
fn checked_events(
    events: Vec<SkimmedEvent<'_>>,
    limits: &DecodeLimits,
) -> Result<Vec<WireEvent>, DecodeError> {
    let (count, limit) = (events.len(), limits.max_events);
    if count == 0 {
        return Err(DecodeError::EmptyBatch);
    } else if count > limit {
        return Err(DecodeError::TooManyEvents { limit });
    }
    // The pass that indexes an event's properties measures its depth: a deep event's fields
    // are never parsed.
    let mut parsed = Vec::with_capacity(events.len());
    for e in events {
        let e = e.index();
        if e.depth > limits.max_depth {
            let limit = limits.max_depth;
            parsed.push(WireEvent::OverLimit(OverLimit::TooDeep { limit }));
            continue;
        }
        let event = WireEvent::from_indexed(e).map_err(|e| json_error(e, limits.max_events))?;
        let (count, limit) = (property_count(&event), limits.max_properties);
        parsed.push(match count > limit {
            true => WireEvent::OverLimit(OverLimit::TooManyProperties { count, limit }),
            false => event,
        });
    }
    Ok(parsed)
}

/// The entries of an object or the items of an array; 0 for anything else.
fn size(v: Option<&Value>) -> usize {
    match v {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

/// The properties an event carries: the entries of `properties` and of the `$set`,
/// `$set_once` and `$unset` found at the top level or inside `properties`.
fn property_count(event: &WireEvent) -> usize {
    const OPS: [&str; 3] = ["$set", "$set_once", "$unset"];
    let top = event
        .fields()
        .map_or(0, |f| OPS.iter().map(|k| size(f.get(*k))).sum::<usize>());
    let inside = event.properties().map_or(0, |p| {
        let op = |k| p.get_text(k).and_then(parse_value);
        p.len() + OPS.iter().map(|k| size(op(k).as_ref())).sum::<usize>()
    });
    let other = event.other_properties().and_then(parse_value);
    top + inside + size(other.as_ref())
}

fn move_process_person_profile(event: &mut WireEvent) {
    if event.other_properties().is_some() {
        return;
    }
    let Some(fields) = event.fields_mut() else {
        return;
    };
    let options = fields.get_mut("options").and_then(Value::as_object_mut);
    let Some(options) = options.filter(|o| {
        o.get("process_person_profile")
            .is_some_and(Value::is_boolean)
    }) else {
        return;
    };
    let flag = options
        .remove("process_person_profile")
        .unwrap_or(Value::Null);
    event.set_property("$process_person_profile", flag);
}

fn invalid(detail: impl Into<String>) -> DecodeError {
    DecodeError::InvalidPayload(detail.into())
}

/// What kind of JSON value `text` is, from its first byte (it is valid JSON).
fn kind(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'n') | None => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        Some(_) => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::scan::testing::{edited, edits, json_value};
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use flate2::{write::GzEncoder, write::ZlibEncoder, Compression};
    use serde_json::json;
    use std::io::Write;

    const BATCH: &[u8] = br#"{"api_key":"k","batch":[{"event":"a"},{"event":"b"}],"sent_at":"s"}"#;
    type Decoded = Result<CaptureBody, DecodeError>;

    fn raw<'a>(body: &'a [u8], enc: Option<&'a str>, ctype: Option<&'a str>) -> RawRequest<'a> {
        let (content_encoding, content_type) = (enc, ctype);
        RawRequest {
            body,
            content_encoding,
            content_type,
            query: "",
        }
    }

    fn dec(body: &[u8], enc: Option<&str>, ctype: Option<&str>, query: &str) -> Decoded {
        decode_capture(
            &RawRequest {
                query,
                ..raw(body, enc, ctype)
            },
            &DecodeLimits::default(),
        )
    }

    fn values(body: &CaptureBody) -> Vec<Value> {
        body.events.iter().map(WireEvent::to_value).collect()
    }

    fn plain(body: &[u8]) -> Decoded {
        dec(body, None, Some("application/json"), "")
    }

    #[track_caller]
    fn refused(result: Decoded, status: u16, code: &str) {
        let e = result.expect_err("the request should be refused");
        assert_eq!((e.status(), e.code()), (status, code), "{e}");
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn form(bytes: &[u8]) -> String {
        let data = STANDARD.encode(bytes).replace('+', "%2B");
        format!(
            "ver=1&data={}",
            data.replace('/', "%2F").replace('=', "%3D")
        )
    }

    #[test]
    fn an_envelope_gives_its_api_key_events_and_sent_at() {
        let body = plain(BATCH).unwrap();
        assert_eq!(
            (body.api_key.as_deref(), body.sent_at.as_deref()),
            (Some("k"), Some("s"))
        );
        assert_eq!(
            values(&body),
            [json!({"event": "a"}), json!({"event": "b"})]
        );
    }

    #[test]
    fn sent_at_is_the_bodys_else_posthog_js_query_parameter_in_ms() {
        let at = |body: &[u8], query: &str| dec(body, None, None, query).unwrap().sent_at_ms();
        let envelope = br#"{"api_key":"k","batch":[{}],"sent_at":"2026-12-03T10:00:00.000Z"}"#;
        assert_eq!(at(envelope, "_=1764756000000"), Some(1_796_292_000_000));
        let array = br#"[{"event":"a"}]"#;
        assert_eq!(
            at(array, "ver=1.2&_=1764756000123"),
            Some(1_764_756_000_123)
        );
        // Seconds (an old SDK), not a number, or nothing: none.
        for query in ["_=1764756000", "_=abc", ""] {
            assert_eq!(at(array, query), None, "{query}");
        }
        // A body's sent_at that is not a time gives way to the query's.
        assert_eq!(at(BATCH, "_=1764756000000"), Some(1_764_756_000_000));
    }

    #[test]
    fn an_envelope_with_a_token_or_a_non_string_api_key_uses_the_token() {
        let body = plain(br#"{"api_key":7,"token":"t","batch":[{}],"sent_at":1}"#).unwrap();
        assert_eq!((body.api_key.as_deref(), body.sent_at), (Some("t"), None));
    }

    #[test]
    fn an_array_and_a_single_object_are_events_without_a_batch_key() {
        let body = plain(br#"[{"event":"a","token":"t"},{"event":"b"}]"#).unwrap();
        assert_eq!((body.api_key, body.events.len()), (None, 2));
        let body = plain(br#" {"event":"a","api_key":"t"} "#).unwrap();
        assert_eq!(values(&body), [json!({"event": "a", "api_key": "t"})]);
        assert_eq!((body.api_key, body.sent_at), (None, None));
    }

    #[test]
    fn gzip_is_inflated_by_header_by_magic_bytes_and_by_the_gzip_js_query() {
        let (expected, gz) = (plain(BATCH), gzip(BATCH));
        for enc in ["gzip", " GZIP ", "identity, gzip", "x-gzip"] {
            assert_eq!(dec(&gz, Some(enc), None, ""), expected);
        }
        assert_eq!(dec(&gz, None, Some("text/plain"), ""), expected);
        let query = "ip=1&_=1700000000&compression=gzip-js&ver=1.2";
        assert_eq!(dec(&gz, None, Some("text/plain"), query), expected);
        refused(dec(BATCH, None, None, query), 400, "invalid_encoding");
    }

    #[test]
    fn json_sent_with_a_form_type_is_read_as_json_plain_or_gzip() {
        // curl's `-d` labels a body a form; a gzip body may come labelled so too.
        let expected = plain(BATCH);
        let with_bom = [b"\xef\xbb\xbf \n".as_slice(), BATCH].concat();
        for ctype in [
            FORM_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        ] {
            assert_eq!(dec(BATCH, None, Some(ctype), ""), expected);
            assert_eq!(dec(&gzip(BATCH), None, Some(ctype), ""), expected);
            assert_eq!(dec(&gzip(BATCH), Some("gzip"), Some(ctype), ""), expected);
            let array = dec(br#" [{"event":"a"}]"#, None, Some(ctype), "").unwrap();
            assert_eq!(values(&array), [json!({"event": "a"})]);
            assert!(dec(&with_bom, None, Some(ctype), "").is_ok());
        }
    }

    #[test]
    fn deflate_is_inflated_whether_zlib_wrapped_or_raw() {
        let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
        zlib.write_all(BATCH).unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
        raw.write_all(BATCH).unwrap();
        for body in [zlib.finish().unwrap(), raw.finish().unwrap()] {
            assert_eq!(dec(&body, Some("Deflate"), None, ""), plain(BATCH));
        }
    }

    #[test]
    fn a_base64_form_decodes_percent_escapes_spaces_url_safe_and_missing_padding() {
        // Standard base64 of this event holds '+', '/' and '=' padding.
        let json = br#"{"event":">>>?","p":"???~~"}"#;
        let (expected, std) = (plain(json), STANDARD.encode(json));
        assert!(std.contains('+') && std.contains('/') && std.ends_with('='));
        let (unescaped, spaced) = (
            format!("data={std}"),
            format!("data={}", std.replace('+', " ")),
        );
        let url_safe = format!("data={}", URL_SAFE_NO_PAD.encode(json));
        let wrapped = format!("data={}%0D%0A{}", &std[..8], form(json).split_at(19).1);
        let ctype = Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8");
        let as_json = format!(
            "data={}",
            form_urlencoded::byte_serialize(json).collect::<String>()
        );
        for body in [form(json), unescaped, spaced, url_safe, wrapped, as_json] {
            assert_eq!(dec(body.as_bytes(), None, ctype, ""), expected);
        }
        let by_query = dec(form(json).as_bytes(), None, None, "compression=base64");
        assert_eq!(by_query, expected);
    }

    #[test]
    fn a_base64_form_with_gzip_inside_is_inflated() {
        let body = form(&gzip(BATCH));
        assert_eq!(
            dec(body.as_bytes(), None, Some(FORM_TYPE), ""),
            plain(BATCH)
        );
    }

    #[test]
    fn bad_encodings_and_forms_are_400_with_their_codes() {
        let gz = gzip(BATCH);
        refused(dec(b"{}", Some("br"), None, ""), 400, "invalid_encoding");
        refused(
            dec(b"{}", None, None, "compression=lz64"),
            400,
            "invalid_encoding",
        );
        refused(dec(BATCH, Some("gzip"), None, ""), 400, "invalid_encoding");
        refused(plain(&gz[..gz.len() / 2]), 400, "invalid_encoding");
        let e = plain(b"\x1f\x8bnot gzip at all").unwrap_err().to_string();
        assert!(
            e.starts_with("The body is declared as gzip but does not decode"),
            "{e}"
        );
        refused(
            dec(b"event=a", None, Some(FORM_TYPE), ""),
            400,
            "invalid_payload",
        );
        refused(
            dec(b"data=%21%21%21", None, Some(FORM_TYPE), ""),
            400,
            "invalid_encoding",
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped_plain_or_compressed() {
        let with_bom = [b"\xef\xbb\xbf".as_slice(), BATCH].concat();
        // The same events; the decoded text is the mark's three bytes longer.
        let sized = |d: Decoded, by: usize| {
            d.map(|b| CaptureBody {
                decoded_bytes: b.decoded_bytes - by,
                ..b
            })
        };
        assert_eq!(sized(plain(&with_bom), 3), plain(BATCH));
        let gz = dec(&gzip(&with_bom), Some("gzip"), None, "");
        assert_eq!(sized(gz, 3), plain(BATCH));
    }

    #[test]
    fn bad_json_and_wrong_shapes_are_400_with_their_codes() {
        let e = plain(b"{\n  \"batch\": [,]\n}").unwrap_err();
        assert_eq!((e.status(), e.code()), (400, "invalid_json"));
        assert!(e.to_string().contains("line 2 column 13"), "{e}");
        refused(plain(b"[{\"event\":\"\xff\"}]"), 400, "invalid_json");
        for body in [
            "42",
            "\"text\"",
            "null",
            " \n",
            r#"{"batch":{"event":"a"}}"#,
        ] {
            refused(plain(body.as_bytes()), 400, "invalid_payload");
        }
        refused(plain(br#"{"api_key":"k","batch":[]}"#), 400, "empty_batch");
        refused(plain(b"[]"), 400, "empty_batch");
    }

    /// A lone surrogate's escape becomes U+FFFD's, in the events' properties, their `$set` and
    /// their names alike; a pair (an emoji), an escaped backslash before `u`, and other escapes
    /// stay as sent.
    #[test]
    fn lone_surrogates_become_the_replacement_character() {
        let fixed = |text: &str| {
            let mut bytes = Cow::Borrowed(text.as_bytes());
            replace_lone_surrogates(&mut bytes);
            String::from_utf8(bytes.into_owned()).unwrap()
        };
        assert_eq!(fixed(r#"["\ud83d"]"#), r#"["\ufffd"]"#);
        assert_eq!(fixed(r#"["a\ud83d\u0041"]"#), r#"["a\ufffd\u0041"]"#);
        assert_eq!(fixed(r#"["\udc00\ud83d"]"#), r#"["\ufffd\ufffd"]"#);
        assert_eq!(fixed(r#"["\uD83D\uDE00"]"#), r#"["\uD83D\uDE00"]"#);
        assert_eq!(
            fixed(r#"["\\ud83d", "\n\ud8"]"#),
            r#"["\\ud83d", "\n\ud8"]"#
        );
        assert_eq!(
            fixed(r#"["\ud83d\ud83d\ude00"]"#),
            r#"["\ufffd\ud83d\ude00"]"#
        );
        let limits = DecodeLimits::default();
        let body = r#"{"api_key":"k","batch":[
            {"event":"\ud800","distinct_id":"a","properties":{"x":"\ud83d","$set":{"name":"\udfff"}}},
            {"event":"e","distinct_id":"b"}]}"#;
        let decoded = decode_capture(&raw(body.as_bytes(), None, None), &limits).unwrap();
        assert_eq!(decoded.events.len(), 2);
        let first = crate::domain::normalize_wire(decoded.events[0].clone(), 0).unwrap();
        assert_eq!(first.name, "\u{fffd}");
        assert_eq!(first.properties.to_map()["x"], "\u{fffd}");
        assert_eq!(first.updates.set["name"], "\u{fffd}");
    }

    /// Where a number can be in an event (`N` stands for it): properties, nested in arrays
    /// and objects, `$set`/`$set_once` inside or at the top level, the top-level fields; and
    /// the top-level field that holds it.
    const NUMBER_PLACES: [(&str, &str); 12] = [
        (
            "properties",
            r#"{"event":"e","distinct_id":"a","properties":{"x":N}}"#,
        ),
        (
            "properties",
            r#"{"event":"e","distinct_id":"a","properties":{"x":[1,{"y":[true,N]}]}}"#,
        ),
        (
            "properties",
            r#"{"event":"e","distinct_id":"a","properties":{"$set":{"x":N}}}"#,
        ),
        (
            "properties",
            r#"{"event":"e","distinct_id":"a","properties":{"$set_once":{"x":{"y":N}}}}"#,
        ),
        (
            "$set",
            r#"{"event":"e","distinct_id":"a","$set":{"x":N},"properties":{}}"#,
        ),
        (
            "$set_once",
            r#"{"event":"e","distinct_id":"a","$set_once":{"x":N}}"#,
        ),
        (
            "timestamp",
            r#"{"event":"e","distinct_id":"a","timestamp":N}"#,
        ),
        ("distinct_id", r#"{"event":"e","distinct_id":N}"#),
        (
            "properties",
            r#"{"event":"e","distinct_id":"a","properties":{"distinct_id":N}}"#,
        ),
        ("uuid", r#"{"event":"e","distinct_id":"a","uuid":N}"#),
        ("event", r#"{"event":N,"distinct_id":"a"}"#),
        ("other", r#"{"event":"e","distinct_id":"a","other":[N]}"#),
    ];

    /// The events of `[ok, event, ok]` decoded (by the one-pass scan) and of `event` alone (by
    /// serde_json's skim), each normalised: the middle one's result, the neighbours'
    /// properties read back.
    fn decode_number_event(event: &str) -> Vec<Result<Value, String>> {
        let ok = r#"{"event":"e","distinct_id":"ok","properties":{"k":2.5e-3}}"#;
        let batch = format!(r#"{{"api_key":"k","batch":[{ok},{event},{ok}]}}"#);
        let mut out = Vec::new();
        for (body, at) in [(batch.as_str(), 1), (event, 0)] {
            let decoded = plain(body.as_bytes());
            let decoded = decoded.unwrap_or_else(|e| panic!("{body}: refused whole: {e}"));
            for (i, e) in decoded.events.into_iter().enumerate() {
                let normalized = crate::domain::normalize_wire(e, 0).map_err(|r| r.to_string());
                // What reading the stored event back parses.
                let read_back = normalized.map(|n| {
                    let props = n.properties.raw().as_str();
                    serde_json::from_str::<Value>(props).unwrap_or_else(|e| {
                        panic!("{body}: stored {props} does not read back: {e}")
                    })
                });
                match i == at {
                    true => out.push(read_back),
                    false => assert_eq!(read_back.unwrap()["k"], 2.5e-3, "{body}"),
                }
            }
        }
        out
    }

    /// A number that no f64 holds (serde_json refuses to read it back) rejects its event
    /// alone, in both decodes, wherever it is; the finite edges are stored and read back.
    #[test]
    fn a_number_out_of_f64s_range_rejects_its_event_alone() {
        let digits = |n: usize| format!("1{}", "0".repeat(n - 1));
        let out = [
            "1e400".to_string(),
            "-1e400".into(),
            "1E+999".into(),
            "2e308".into(),
            "1.8e308".into(),
            "-0.2e310".into(),
            "1e0400".into(),
            "1e99999999999999999999".into(),
            digits(400),
            format!("-{}", digits(400)),
            format!("{}.5", digits(310)),
            format!("{}e99", digits(250)),
        ];
        for number in &out {
            for (field, place) in NUMBER_PLACES {
                let event = place.replace('N', number);
                for got in decode_number_event(&event) {
                    let detail = got.expect_err(&event);
                    let named = format!("a number in its `{field}` is out of range");
                    assert!(
                        detail.starts_with(&named) && detail.contains("send finite numbers"),
                        "{event}: {detail}"
                    );
                    let shown = &number[..number.len().min(16)];
                    assert!(detail.contains(shown), "{event}: {detail}");
                }
            }
        }
        let finite = [
            "1.7976931348623157e308",
            "-1.7976931348623157e308",
            "1e308",
            "1e-400",
            "0e999",
            "-0.0e+99999",
            "12.5E-7",
        ];
        let finite = finite
            .map(String::from)
            .into_iter()
            .chain([digits(300), digits(308)]);
        for number in finite {
            for (_, place) in NUMBER_PLACES {
                let event = place.replace('N', &number);
                for got in decode_number_event(&event) {
                    // Some places reject a number for what it is (an event name, a
                    // distinct ID of 1e308 characters), never for its range.
                    if let Err(detail) = got {
                        assert!(!detail.contains("out of range"), "{event}: {detail}");
                    }
                }
            }
        }
    }

    /// Both parses stop one event past the limit: what follows is never read, so that a small
    /// compressed body of millions of tiny events is refused before it costs their number.
    /// (Were the rest read, the garbage after the fourth event would make these 400s.)
    #[test]
    fn counting_events_stops_past_the_limit() {
        let limits = DecodeLimits {
            max_events: 3,
            ..DecodeLimits::default()
        };
        let run = |body: &str| decode_capture(&raw(body.as_bytes(), None, None), &limits);
        for body in [
            "[{},{},{},{}, garbage",
            r#"{"api_key":"k","batch":[{},{},{},{}, garbage"#,
            // Not objects: left to serde_json's skim, which stops there too.
            "[1,2,3,4, garbage",
            r#"{"api_key":"k","batch":[1,2,3,4, garbage"#,
        ] {
            let e = run(body).unwrap_err();
            assert_eq!(
                (e.status(), e.code()),
                (413, "too_many_events"),
                "{body}: {e}"
            );
            assert!(e.to_string().contains("more than 3 events"), "{e}");
        }
        if let Err(e) = run("[{},{},{}]") {
            assert_ne!(e.code(), "too_many_events", "at the limit");
        }
    }

    #[test]
    fn an_event_with_more_than_max_properties_is_refused_alone() {
        let limits = DecodeLimits {
            max_properties: 3,
            ..DecodeLimits::default()
        };
        let run = |body: &str| decode_capture(&raw(body.as_bytes(), None, None), &limits);
        // properties 1 + $set 1 + top-level $set_once 1 = 3: at the limit.
        let at = run(
            r#"[{"event":"e","distinct_id":"a","properties":{"$set":{"x":1}},"$set_once":{"y":2}}]"#,
        );
        assert!(at.unwrap().events[0].fields().is_some());
        let body = run(r#"[{"event":"e","distinct_id":"a"},{"event":"e","distinct_id":"b","properties":{"a":1,"b":2},"$unset":["c","d"]},{"event":"e","distinct_id":"c"}]"#)
            .expect("the batch is taken");
        let over = OverLimit::TooManyProperties { count: 4, limit: 3 };
        assert_eq!(body.events[1], WireEvent::OverLimit(over.clone()));
        assert_eq!(values(&body)[2]["distinct_id"], "c");
        let rejection = crate::domain::normalize_wire(body.events[1].clone(), 0).unwrap_err();
        assert_eq!(rejection, crate::domain::Rejection::OverLimit(over));
        assert_eq!(
            rejection.to_string(),
            "event has 4 properties, over the limit of 3 (--max-properties): send fewer properties per event"
        );
    }

    #[test]
    fn too_many_events_and_oversized_bodies_are_413() {
        let limits = DecodeLimits {
            max_events: 3,
            max_body_bytes: 64,
            max_depth: 8,
            max_properties: 100,
        };
        let run = |body: &[u8]| decode_capture(&raw(body, None, None), &limits);
        refused(run(b"[{},{},{},{}]"), 413, "too_many_events");
        assert!(run(b"[{},{},{},{}]")
            .unwrap_err()
            .to_string()
            .contains("413"));
        assert!(run(b"[{},{},{}]").is_ok());
        refused(run(&[b' '; 65]), 413, "payload_too_large");
        refused(run(&gzip(&[b' '; 100])), 413, "payload_too_large");
    }

    #[test]
    fn a_gzip_bomb_of_30_mib_is_refused_with_the_default_20_mib_limit() {
        // Inflating goes through `take(limit + 1)`: at most 20 MiB + 1 byte is ever allocated.
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        (0..30).for_each(|_| enc.write_all(&[0; 1 << 20]).unwrap());
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        let too_large = || Err(DecodeError::PayloadTooLarge { limit: 20 << 20 });
        assert_eq!(dec(&bomb, None, Some("text/plain"), ""), too_large());
        let as_form = dec(form(&bomb).as_bytes(), None, None, "compression=base64");
        assert_eq!(as_form, too_large());
    }

    #[test]
    fn an_event_nested_too_deep_is_refused_alone_and_never_overflows_the_stack() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let too_deep = WireEvent::OverLimit(OverLimit::TooDeep { limit: 64 });
        let body = format!(
            r#"{{"batch":[{{"e":1}},{{"p":{}}},{{"e":2}}]}}"#,
            nested(70)
        );
        let body = plain(body.as_bytes()).expect("the batch is taken");
        assert_eq!(body.events[1], too_deep);
        assert_eq!(values(&body)[2], json!({"e": 2}));
        let rejection = crate::domain::normalize_wire(body.events[1].clone(), 0).unwrap_err();
        assert!(rejection
            .to_string()
            .starts_with("event is nested deeper than 64 levels (--max-depth)"));
        let body = plain(format!(r#"[{{"p":{}}}]"#, nested(63)).as_bytes());
        assert!(body.unwrap().events[0].fields().is_some());
        for n in [200, 100_000] {
            let events = plain(nested(n).as_bytes()).unwrap().events;
            assert_eq!(events, std::slice::from_ref(&too_deep));
        }
        // Above serde_json's 128 levels when the limit allows more: the body cannot be read
        // at all, and is refused whole; no panic.
        let lax = DecodeLimits {
            max_depth: 1_000,
            ..DecodeLimits::default()
        };
        let body = format!(r#"[{{"p":{}}}]"#, nested(200));
        let e = decode_capture(&raw(body.as_bytes(), None, None), &lax).unwrap_err();
        assert_eq!(e, DecodeError::TooDeep { limit: 128 });
        assert_eq!((e.status(), e.code()), (400, "too_deep"));
    }

    #[test]
    fn capture_v1_moves_options_process_person_profile_into_properties() {
        let body = gzip(
            br#"{"created_at":"c","batch":[
            {"event":"a","options":{"process_person_profile":false,"x":1},"properties":{"y":2}},
            {"event":"b","options":{"process_person_profile":true}},{"event":"c","options":{}}]}"#,
        );
        let r = raw(&body, Some("gzip"), None);
        let got = decode_capture_v1(&r, Some("phc_v1"), &DecodeLimits::default()).unwrap();
        assert_eq!(
            (got.api_key.as_deref(), got.sent_at.as_deref()),
            (Some("phc_v1"), Some("c"))
        );
        let props = json!({"y": 2, "$process_person_profile": false});
        let a = json!({"event": "a", "options": {"x": 1}, "properties": props});
        let props = json!({"$process_person_profile": true});
        let b = json!({"event": "b", "options": {}, "properties": props});
        assert_eq!(values(&got), [a, b, json!({"event": "c", "options": {}})]);
    }

    #[test]
    fn capture_v1_without_a_bearer_token_has_no_api_key_and_needs_a_batch() {
        let v1 = |body: &[u8], token| {
            decode_capture_v1(&raw(body, None, None), token, &DecodeLimits::default())
        };
        let body = br#"{"api_key":"ignored","batch":[{"event":"a"}]}"#;
        assert_eq!(v1(body, None).unwrap().api_key, None);
        assert_eq!(v1(body, Some("  ")).unwrap().api_key, None);
        refused(v1(br#"[{"event":"a"}]"#, None), 400, "invalid_payload");
        refused(v1(br#"{"event":"a"}"#, None), 400, "invalid_payload");
        refused(v1(br#"{"batch":[]}"#, None), 400, "empty_batch");
        // Its advice names v1's one shape, not v0's array or single event.
        for body in [&br#"[{"event":"a"}]"#[..], br#"{"batch":"a"}"#] {
            let e = v1(body, None).unwrap_err().to_string();
            assert!(e.contains("capture v1 takes {\"batch\""), "{e}");
            assert!(!e.contains("an array of events"), "{e}");
        }
    }

    #[test]
    fn the_sdk_fixtures_decode() {
        let python = include_bytes!("../../tests/fixtures/capture/posthog_python_batch.json");
        assert_eq!(
            plain(python).unwrap().api_key.as_deref(),
            Some("phc_fixture")
        );
        let js = include_bytes!("../../tests/fixtures/capture/posthog_js_base64_form.txt");
        let js = dec(js, None, Some(FORM_TYPE), "compression=base64").unwrap();
        assert_eq!(values(&js)[0]["properties"]["token"], "phc_fixture");
    }

    #[test]
    fn random_bytes_and_mutations_never_panic_and_only_give_400_or_413() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as usize
        };
        let (gz, form) = (gzip(BATCH), form(&gzip(BATCH)));
        let many = format!("[{}{{}}]", "{},".repeat(5));
        let v1 = br#"{"batch":[{"options":{"process_person_profile":true},"a":[{"b":"\u00e9"}]}]}"#;
        let seeds = [
            raw(BATCH, None, None),
            raw(&gz, Some("gzip"), None),
            raw(form.as_bytes(), None, Some(FORM_TYPE)),
            raw(v1, None, None),
            raw(many.as_bytes(), None, None),
        ];
        let limits = DecodeLimits {
            max_body_bytes: 4096,
            max_events: 4,
            max_depth: 3,
            max_properties: 8,
        };
        for round in 0..6000 {
            let mut r = seeds[next() % 5];
            let mut body = r.body.to_vec();
            if round % 3 == 0 {
                body = (0..next() % 300).map(|_| next() as u8).collect();
            }
            if next() % 4 == 0 {
                r.content_encoding = [None, Some("gzip"), Some("deflate")][next() % 3];
                r.content_type = [None, Some(FORM_TYPE)][next() % 2];
                r.query = ["", "compression=gzip-js", "compression=base64"][next() % 3];
            }
            for _ in 0..next() % 3 {
                let at = next() % body.len().max(1);
                match next() % 4 {
                    0 if !body.is_empty() => body[at] = next() as u8,
                    1 => body.insert(at, b"{[\"]}:,0\x1f\x8b="[next() % 11]),
                    2 => body.truncate(at),
                    _ => body.extend(std::iter::repeat_n(b' ', next() % 5000)),
                }
            }
            r.body = &body;
            let v1 = decode_capture_v1(&r, Some("t"), &limits);
            for e in [decode_capture(&r, &limits), v1]
                .into_iter()
                .filter_map(Result::err)
            {
                assert!(matches!(e.status(), 400 | 413), "{e:?}");
                assert!(!e.code().is_empty() && e.to_string().ends_with('.'), "{e}");
            }
        }
    }

    /// What a body decodes to through a [`Top`]: the envelope's other fields (key and JSON
    /// text) and the checked events, or the error's text.
    type Settled = (Vec<(String, String)>, Result<Vec<WireEvent>, String>);

    fn settled(top: Top<'_>, limits: &DecodeLimits) -> Settled {
        let (fields, events) = match top {
            Top::Envelope(env) => {
                let fields = env
                    .fields
                    .iter()
                    .map(|(k, v)| (k.0.to_string(), v.to_string()));
                (fields.collect(), env.events())
            }
            Top::Events(events) => (Vec::new(), Ok(events)),
            Top::Event(event) => (Vec::new(), Ok(vec![event])),
        };
        let events = events.and_then(|e| checked_events(e, limits));
        (fields, events.map_err(|e| e.to_string()))
    }

    /// Numbers out of f64's range and the edges of it (`D`: 320 digits).
    const NUMBERS: [&str; 9] = [
        "1e400",
        "-1E+999",
        "2e308",
        "D",
        "-D.5",
        "1.7976931348623157e308",
        "1e308",
        "1e-400",
        "0e999",
    ];

    /// An event object: a few of the fields the rules read, and others, with any values.
    fn event_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let value = json_value("[a-c\"\\\\$ ]{0,3}|\\$set|\\$set_once", 4);
        let key = "event|distinct_id|uuid|properties|\\$set|timestamp|[a-c\"\\\\ ]{0,3}";
        prop::collection::vec((key, value), 0..6)
            .prop_map(|e| Value::Object(e.into_iter().collect()))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        /// The one-pass scan of a body is serde_json's skim and the indexing of each event:
        /// what it accepts serde_json accepts, and decodes to the same key and events (or
        /// the same error: depth, properties, count); and it takes the SDKs' shapes.
        #[test]
        fn the_one_pass_scan_decodes_as_serde_json_and_the_index_do(
            events in proptest::collection::vec(event_json(), 0..4),
            envelope: bool,
            pretty: bool,
            number in proptest::option::of(proptest::sample::select(&NUMBERS[..])),
            edits in edits(),
        ) {
            let body = match envelope {
                true => json!({"api_key": "k\"é", "batch": events, "sent_at": 1}),
                false => Value::Array(events),
            };
            let mut text = match pretty {
                true => serde_json::to_string_pretty(&body).unwrap(),
                false => body.to_string(),
            };
            // Numbers a `Value` cannot hold, and the edges, in place of one of the strings.
            if let Some(number) = number {
                text = text.replace("\"$direct\"", &number.replace('D', &"9".repeat(320)));
            }
            proptest::prop_assert!(scan_top(&text, usize::MAX, &mut false).is_some(), "not scanned: {}", text);
            let limits = DecodeLimits { max_depth: 4, max_properties: 6, max_events: 3, ..DecodeLimits::default() };
            let bytes = edited(text.into_bytes(), edits);
            let Ok(text) = std::str::from_utf8(&bytes) else { return Ok(()) };
            let slow = serde_json::from_str::<Top>(text);
            if let Some(fast) = scan_top(text, usize::MAX, &mut false) {
                let slow = slow.expect("scanned what serde_json refuses");
                let fast = settled(fast, &limits);
                proptest::prop_assert_eq!(&fast, &settled(slow, &limits), "{}", text);
                // Properties that would not read back (a number out of f64's range) reject
                // their event.
                for event in fast.1.unwrap_or_default() {
                    let props = event.properties().map(|p| p.raw().as_str());
                    let props = props.or(event.other_properties()).map(str::to_owned);
                    let unreadable = props.is_some_and(|p| serde_json::from_str::<Value>(&p).is_err());
                    let rejected = crate::domain::normalize_wire(event, 0)
                        .is_err_and(|r| r.to_string().contains("out of range"));
                    proptest::prop_assert!(!unreadable || rejected, "{}: stored as is", text);
                }
            }
        }
    }
}
