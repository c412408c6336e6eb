//! The fuzz harnesses, shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`) and by
//! `tests/it/fuzz_corpus.rs`, which replays the committed corpus through this very file without
//! a fuzzer. Each harness takes arbitrary bytes, calls the library the way the daemon does and
//! checks what must always hold: an error is a fine answer, a panic is a bug.

use std::io::Write;

use base64::Engine as _;
use idstitch::api::decode::{
    decode_capture, decode_capture_v1, CaptureBody, DecodeError, DecodeLimits, RawRequest,
};
use idstitch::domain::memstate::MemState;
use idstitch::domain::{
    apply_entry, decide, lookups, normalize, normalize_wire, Ctx, Entry, EventProps, Normalized,
    ProjectId, Seq, WarningLimiter, WireEvent,
};
use idstitch::store::codec::{decode_entry, encode_entry};
use idstitch::store::snapshot::Manifest;
use serde_json::Value;

/// A harness: arbitrary bytes in, a panic only when an invariant breaks.
pub type Harness = fn(&[u8]);

/// Every target by name (its corpus is `fuzz/corpus/<name>/`) with its harness.
pub const TARGETS: [(&str, Harness); 4] = [
    ("capture_decode", capture_decode),
    ("normalize_decide", normalize_decide),
    ("log_entry", log_entry),
    ("snapshot_manifest", snapshot_manifest),
];

/// Limits of the capture harness: small, so that short inputs reach every limit.
pub const LIMITS: DecodeLimits = DecodeLimits {
    max_body_bytes: 1 << 16,
    max_events: 100,
    max_depth: 16,
    max_properties: 64,
};

/// Ingestion time of the normalisation harness (2026-01-01T00:00:00Z).
pub const NOW_MS: i64 = 1_767_225_600_000;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const FORM_TYPE: &str = "application/x-www-form-urlencoded";

/// Capture decoding, every encoding. The input is the body as received, optionally after a
/// first line `>CONTENT-ENCODING|CONTENT-TYPE|QUERY|BEARER` (an empty field is an absent header).
/// Both `decode_capture` and `decode_capture_v1` get it; errors must be 400 or 413 with a code
/// and a sentence; accepted bodies respect the limits; and a plain body that decodes must decode
/// to the same events once gzipped (by header and by magic bytes) or sent as a base64 form.
pub fn capture_decode(data: &[u8]) {
    let (req, bearer) = split_request(data);
    let v0 = decode_capture(&req, &LIMITS);
    check_capture(&v0);
    let v1 = decode_capture_v1(&req, bearer, &LIMITS);
    check_capture(&v1);
    if let Ok(body) = &v1 {
        let token = bearer.map(str::trim).filter(|t| !t.is_empty());
        assert_eq!(body.api_key.as_deref(), token, "v1 takes the bearer token");
    }
    let plain =
        req.content_encoding.is_none() && req.content_type.is_none() && req.query.is_empty();
    let small = req.body.len() <= LIMITS.max_body_bytes / 2;
    if plain && small && v0.is_ok() && !req.body.starts_with(GZIP_MAGIC) {
        for (encoding, content_type, body) in encoded_variants(req.body) {
            let again = RawRequest {
                body: &body,
                content_encoding: encoding,
                content_type,
                query: "",
            };
            let got = decode_capture(&again, &LIMITS);
            assert_eq!(
                got, v0,
                "{encoding:?} {content_type:?} changes the decoding"
            );
        }
    }
}

/// Splits the optional `>` header line off a capture input.
fn split_request(data: &[u8]) -> (RawRequest<'_>, Option<&str>) {
    let mut req = RawRequest {
        body: data,
        content_encoding: None,
        content_type: None,
        query: "",
    };
    let mut bearer = None;
    let Some(rest) = data.strip_prefix(b">") else {
        return (req, bearer);
    };
    let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let Ok(head) = std::str::from_utf8(&rest[..end]) else {
        return (req, bearer);
    };
    let mut fields = head.split('|');
    let mut next = || fields.next().filter(|f| !f.is_empty());
    req.content_encoding = next();
    req.content_type = next();
    req.query = next().unwrap_or("");
    bearer = next();
    req.body = rest.get(end + 1..).unwrap_or_default();
    (req, bearer)
}

/// The same body as posthog-node (gzip header), posthog-js (bare gzip; base64 form) send it.
fn encoded_variants(body: &[u8]) -> Vec<(Option<&'static str>, Option<&'static str>, Vec<u8>)> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let gz = gz.write_all(body).and_then(|()| gz.finish());
    let gz = gz.unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD.encode(body);
    let b64 = b64
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let form = format!("ver=1&data={b64}").into_bytes();
    vec![
        (Some("gzip"), None, gz.clone()),
        (None, Some("text/plain"), gz),
        (None, Some(FORM_TYPE), form),
    ]
}

fn check_capture(result: &Result<CaptureBody, DecodeError>) {
    match result {
        Err(e) => {
            assert!(matches!(e.status(), 400 | 413), "{e:?}");
            let text = e.to_string();
            assert!(!e.code().is_empty() && text.ends_with('.'), "{text}");
        }
        Ok(body) => {
            let count = body.events.len();
            assert!((1..=LIMITS.max_events).contains(&count), "{count} events");
            let deepest = body.events.iter().map(|e| depth(&e.to_value()));
            let deepest = deepest.max().unwrap_or(0);
            assert!(deepest <= LIMITS.max_depth, "an event of depth {deepest}");
        }
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Normalisation and the rules: the input is one event as JSON. A normalised event is decided
/// on an empty context, then once more against the persons the first decision made (a redelivery
/// without a uuid); each entry must survive the log codec unchanged and apply without a panic.
pub fn normalize_decide(data: &[u8]) {
    let Ok(event) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // The daemon's path (properties left as text) must mean what the parsed event means.
    let text = std::str::from_utf8(data).expect("serde_json read it as UTF-8");
    let wire = WireEvent::from_json(text).expect("serde_json read it as JSON");
    let by_text = normalize_wire(wire, NOW_MS);
    let by_value = normalize(&event, NOW_MS);
    match (&by_text, &by_value) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.properties.to_map(), b.properties.to_map());
            // Promotions in the order sent, or of the map's keys: the same set.
            let no_text = |n: &Normalized| {
                let mut n = n.clone();
                n.promoted.sort_by_key(|p| p.0);
                Normalized {
                    properties: EventProps::default(),
                    ..n
                }
            };
            assert_eq!(no_text(a), no_text(b));
        }
        _ => assert_eq!(by_text.as_ref().err(), by_value.as_ref().err()),
    }
    let Ok(ev) = by_text else {
        return;
    };
    let project = ProjectId(1);
    let mut state = MemState::default();
    let mut limiter = WarningLimiter::default();
    for seq in 1..=2 {
        let (into, other) = lookups(&ev);
        let into = state.person_of(project, &into).cloned();
        let other = other.and_then(|o| state.person_of(project, &o).cloned());
        let ctx = Ctx {
            project,
            now_ms: NOW_MS,
            merge_limit: None,
            max_ids: None,
            into: into.as_ref(),
            other: other.as_ref(),
            limiter: &mut limiter,
        };
        let entry = Entry {
            project,
            at_ms: NOW_MS,
            cause: ev.uuid.clone(),
            changes: decide(&ev, ctx).changes,
        };
        let decoded = decode_entry(&encode_entry(&entry));
        assert_eq!(
            decoded.ok().as_ref(),
            Some(&entry),
            "the log codec changes it"
        );
        apply_entry(&mut state, Seq(seq), &entry);
    }
}

/// Log records: the input is a record as stored (format byte, then bincode). Whatever decodes
/// must encode and decode again to the same entry.
pub fn log_entry(data: &[u8]) {
    let Ok(entry) = decode_entry(data) else {
        return;
    };
    let again = decode_entry(&encode_entry(&entry));
    assert_eq!(again.ok().as_ref(), Some(&entry), "re-encoding changes it");
}

/// Snapshot manifests: the input is `manifest.json`. Whatever parses must write and parse again
/// to the same manifest.
pub fn snapshot_manifest(data: &[u8]) {
    let Ok(manifest) = serde_json::from_slice::<Manifest>(data) else {
        return;
    };
    let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    let again = serde_json::from_slice::<Manifest>(&text);
    assert_eq!(again.ok().as_ref(), Some(&manifest), "writing changes it");
}
