//! Compact JSON text of property maps, byte for byte what `serde_json::to_writer` writes, only
//! faster: strings are copied in runs found eight bytes at a time instead of looked at one
//! byte at a time.
//!
//! The writer encodes every changed person's properties into the log and the persons column
//! family, and `verify` every replayed person; serde_json's byte-by-byte escaping loop was the
//! largest part of that. The output must stay identical to serde_json's: stored persons are
//! compared byte for byte (`verify`), and the property test below holds the two together.

use serde_json::{Map, Value};

use super::swar;

/// Append the compact JSON text of `map` to `out`, exactly as `serde_json::to_writer` would.
pub fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    out.push(b'{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        write_value(out, v);
    }
    out.push(b'}');
}

/// Append the compact JSON text of `v` to `out`.
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Numbers are short and few: serde_json's own formatting (itoa, ryu) keeps them exact.
        Value::Number(n) => {
            // Writing into a Vec cannot fail, and a number always serialises.
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

/// Append `s` as a JSON string: quoted, with `"`, `\` and the control characters escaped as
/// serde_json escapes them (`\n`-style where JSON has a short form, else `\u00xx`).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    while let Some(at) = next_escape(b, start) {
        out.extend_from_slice(&b[start..at]);
        escape(out, b[at]);
        start = at + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// The index of the first byte at or after `from` that must be escaped: below 0x20, `"` or
/// `\`, found eight bytes at a time ([`swar`]).
fn next_escape(b: &[u8], from: usize) -> Option<usize> {
    let flagged = |word: [u8; 8]| {
        let w = u64::from_le_bytes(word);
        swar::control_bytes(w) | swar::quotes_or_backslashes(w)
    };
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let found = flagged(word);
        if found != 0 {
            return Some(i + swar::first(found));
        }
        i += 8;
    }
    // The last few bytes, in a word padded with spaces (which need no escape).
    let rest = &b[i..];
    let mut word = [b' '; 8];
    word[..rest.len()].copy_from_slice(rest);
    match flagged(word) {
        0 => None,
        found => Some(i + swar::first(found)),
    }
}

/// serde_json's escape of one byte that needs it.
fn escape(out: &mut Vec<u8>, c: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match c {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0C => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xF)],
            ]);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ours(map: &Map<String, Value>) -> String {
        let mut out = Vec::new();
        write_object(&mut out, map);
        String::from_utf8(out).expect("UTF-8")
    }

    /// Strings weighted towards what needs escaping, at every offset within an 8-byte word.
    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                4 => any::<char>(),
                2 => prop::sample::select(vec!['"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{0}', '\u{1f}', '\u{7f}', '/', 'é', '€', '😀']),
                4 => prop::char::range('a', 'z'),
                1 => prop::char::range('\u{0}', '\u{1f}'),
            ],
            0..40,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((text(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn the_text_is_serde_jsons(kv in prop::collection::vec((text(), value()), 0..12)) {
            let map: Map<String, Value> = kv.into_iter().collect();
            prop_assert_eq!(ours(&map), serde_json::to_string(&map).unwrap());
        }
    }

    #[test]
    fn every_byte_escapes_as_serde_json_escapes_it_at_every_offset() {
        for c in 0u8..0x80 {
            for offset in 0..10 {
                let s = format!("{}{}tail", "x".repeat(offset), char::from(c));
                let map: Map<String, Value> = [(s.clone(), Value::String(s))].into_iter().collect();
                assert_eq!(
                    ours(&map),
                    serde_json::to_string(&map).unwrap(),
                    "byte {c:#x} at {offset}"
                );
            }
        }
    }
}
