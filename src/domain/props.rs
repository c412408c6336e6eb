//! Person property operations (spec §5) and the size limit (spec §9).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::json_out;

/// A JSON object of properties.
///
/// Serialised as a JSON object for humans and as one compact JSON string for bincode, which
/// cannot encode `serde_json::Value` directly (it has no self-describing `deserialize_any`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Props(pub Map<String, Value>);

impl Serialize for Props {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            // The JSON text goes through a buffer kept by the thread: the writer encodes a
            // person at every change of it, and verify every replayed person, so a fresh
            // `String` grown from 128 bytes each time was an allocation and a few copies per
            // record. (A nested call, which our types never make, gets a buffer of its own.)
            thread_local!(static TEXT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });
            TEXT.with(|cell| match cell.try_borrow_mut() {
                Ok(mut text) => {
                    text.clear();
                    let done = serialize_text(&mut text, &self.0, s);
                    if text.capacity() > KEPT_TEXT {
                        *text = Vec::new();
                    }
                    done
                }
                Err(_) => serialize_text(&mut Vec::new(), &self.0, s),
            })
        }
    }
}

/// The largest buffer a thread keeps for [`Props`]' JSON text (persons are at most 512 KiB).
const KEPT_TEXT: usize = 1 << 20;

/// `props` as one JSON string, through `text`.
fn serialize_text<S: Serializer>(
    text: &mut Vec<u8>,
    props: &Map<String, Value>,
    s: S,
) -> Result<S::Ok, S::Error> {
    json_out::write_object(text, props);
    // The text is UTF-8: it is `props`' strings, ASCII punctuation and serde_json's numbers.
    let text = simdutf8::basic::from_utf8(text).map_err(serde::ser::Error::custom)?;
    s.serialize_str(text)
}

impl<'de> Deserialize<'de> for Props {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Map::deserialize(d).map(Props)
        } else {
            d.deserialize_str(JsonText(|text: &str| serde_json::from_str(text).map(Props)))
        }
    }
}

/// A visitor of one string holding JSON text: parses a borrowed string in place instead of
/// copying it into a `String` first.
struct JsonText<F>(F);

impl<T, F: FnOnce(&str) -> Result<T, serde_json::Error>> serde::de::Visitor<'_> for JsonText<F> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string of JSON text")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
        (self.0)(text).map_err(E::custom)
    }
}

/// The properties of a stored event, kept as the JSON text of an object: as the client sent
/// it, or compact when normalisation had to change it.
///
/// An event's properties are written once and read rarely (the events API), while replay,
/// verify, snapshots and the log writer handle every one of them: as text they cost a copy
/// there instead of a parse into a map and a serialisation back. Encoded exactly like
/// [`Props`] (one JSON string in bincode), so the log format is unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct RawProps(Box<str>);

impl RawProps {
    /// The JSON text of `props`.
    pub fn from_map(props: &Map<String, Value>) -> RawProps {
        // Into a buffer of about the final size: grown from serde_json's 128 bytes, ~1 KiB of
        // properties was copied five times over.
        let mut text = Vec::with_capacity(map_size(props, ESTIMATE));
        json_out::write_object(&mut text, props);
        match String::from_utf8(text) {
            Ok(text) => RawProps(text.into_boxed_str()),
            Err(_) => RawProps::empty(),
        }
    }

    /// `text`, which must be the JSON text of an object.
    pub(crate) fn from_text(text: Box<str>) -> RawProps {
        RawProps(text)
    }

    /// No properties (a redacted event).
    pub fn empty() -> RawProps {
        RawProps("{}".into())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parsed. Text that is not a JSON object (only a damaged log holds such) gives an error.
    /// A number out of `f64`'s range (`1e400`, which events stored before such events were
    /// refused may hold) reads as `null`, as PostHog's JavaScript ingestion would store it,
    /// instead of losing every property beside it.
    pub fn to_map(&self) -> Result<Map<String, Value>, serde_json::Error> {
        serde_json::from_str(&self.0).or_else(|e| {
            let text = super::scan::out_of_range_in_json(&self.0)
                .and_then(|_| super::scan::out_of_range_as_null(&self.0));
            match text {
                Some(text) => serde_json::from_str(&text),
                None => Err(e),
            }
        })
    }
}

impl Default for RawProps {
    fn default() -> Self {
        RawProps::empty()
    }
}

impl Serialize for RawProps {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.to_map()
                .map_err(serde::ser::Error::custom)?
                .serialize(s)
        } else {
            s.serialize_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for RawProps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Map::deserialize(d).map(|m| RawProps::from_map(&m))
        } else {
            Box::<str>::deserialize(d).map(RawProps)
        }
    }
}

impl Props {
    /// No properties.
    pub fn new() -> Self {
        Props(Map::new())
    }

    /// Whether there are no properties.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Largest serialised size of a person's properties, in bytes (spec §9).
pub const MAX_PERSON_PROPERTIES_BYTES: usize = 524_288;

/// Size of `props` as compact UTF-8 JSON.
pub fn serialized_size(props: &Map<String, Value>) -> usize {
    let mut text = Vec::with_capacity(map_size(props, ESTIMATE));
    json_out::write_object(&mut text, props);
    text.len()
}

/// Longest compact JSON text of a number without `arbitrary_precision` (an `f64` such as
/// `-1.7976931348623157e308` is 24 bytes; an `i64` or `u64` at most 20).
const MAX_NUMBER_JSON: usize = 32;

/// How [`map_size`] counts the compact JSON text of a map, from lengths alone: bytes per byte
/// of a string or key, and per number.
#[derive(Clone, Copy)]
struct Sizing {
    per_byte: usize,
    number: usize,
}

/// An upper bound: escaped, a string is at most six bytes per byte (`\u001f`).
const BOUND: Sizing = Sizing {
    per_byte: 6,
    number: MAX_NUMBER_JSON,
};

/// About the size without escapes (a guess for numbers), to size a buffer: within a factor of
/// two for typical properties, so that the text needs no growing or shrinking.
const ESTIMATE: Sizing = Sizing {
    per_byte: 1,
    number: 8,
};

fn value_size(v: &Value, s: Sizing) -> usize {
    match v {
        Value::Null => 4,
        Value::Bool(_) => 5,
        Value::Number(_) => s.number,
        Value::String(text) => 2 + s.per_byte * text.len(),
        Value::Array(items) => 2 + items.iter().map(|i| value_size(i, s) + 1).sum::<usize>(),
        Value::Object(m) => map_size(m, s),
    }
}

/// Braces, and per entry its quoted key, colon, value and a comma.
fn map_size(m: &Map<String, Value>, s: Sizing) -> usize {
    2 + m
        .iter()
        .map(|(k, v)| 2 + s.per_byte * k.len() + 1 + value_size(v, s) + 1)
        .sum::<usize>()
}

/// An upper bound of [`serialized_size`].
fn map_size_bound(m: &Map<String, Value>) -> usize {
    map_size(m, BOUND)
}

/// Whether `props` serialise to more than `limit` bytes. Exact, but serialises only when a
/// bound from lengths alone does not already settle it (a typical person's bound is a few
/// KiB against the 512 KiB limit).
pub fn exceeds(props: &Map<String, Value>, limit: usize) -> bool {
    map_size_bound(props) > limit && serialized_size(props) > limit
}

/// Whether `current` with `set` written and then `unset` removed would serialise to more than
/// `limit` bytes, copying `current` only when a bound does not settle it: every entry of the
/// result is an entry of `current` or of `set`, so the sum of their bounds bounds it.
pub fn update_exceeds(
    current: &Map<String, Value>,
    set: &Map<String, Value>,
    unset: &[String],
    limit: usize,
) -> bool {
    if map_size_bound(current) + map_size_bound(set) <= limit {
        return false;
    }
    let mut after = current.clone();
    apply_diff(&mut after, set, unset);
    serialized_size(&after) > limit
}

/// The changes one event asks of a person's properties.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PropertyUpdates {
    /// `$set`: always overwrite.
    pub set: Map<String, Value>,
    /// `$set_once`: only when the key is absent.
    pub set_once: Map<String, Value>,
    /// `$unset`: remove these keys.
    pub unset: Vec<String>,
}

impl PropertyUpdates {
    /// Whether the event asks for no property change at all.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.set_once.is_empty() && self.unset.is_empty()
    }
}

/// The effective change of one event on one person: set these, then remove those.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PropertyDiff {
    /// Keys to write, with their new values.
    pub set: Map<String, Value>,
    /// Keys to remove, applied after `set`.
    pub unset: Vec<String>,
}

impl PropertyDiff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.unset.is_empty()
    }
}

/// Apply a diff: set first, then unset (spec §5 step 5).
pub fn apply_diff(props: &mut Map<String, Value>, set: &Map<String, Value>, unset: &[String]) {
    for (k, v) in set {
        props.insert(k.clone(), v.clone());
    }
    for k in unset {
        props.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Stored text holding numbers out of `f64`'s range reads with `null` in their places
    /// only: the entries beside them, a string that looks like one, and other numbers stay.
    #[test]
    fn stored_numbers_out_of_range_read_as_null_and_the_rest_stays() {
        let raw = RawProps::from_text(
            r#"{"a": 1e400, "s": "1e400", "n": [-2E+999, 1.5, {"deep": 1e309}], "k": 7}"#.into(),
        );
        assert_eq!(
            Value::Object(raw.to_map().unwrap()),
            serde_json::json!({"a": null, "s": "1e400", "n": [null, 1.5, {"deep": null}], "k": 7})
        );
        // Text that is not JSON at all is still an error.
        assert!(RawProps::from_text(r#"{"a": 1e400"#.into())
            .to_map()
            .is_err());
        assert!(RawProps::from_text("[1e400]".into()).to_map().is_err());
    }

    /// Person properties, diffs and the log's JSON text rely on `serde_json::Map` iterating in
    /// key order (it would not with serde_json's `preserve_order` feature, which any crate in
    /// the build could turn on): the same input gives the same bytes.
    #[test]
    fn json_maps_iterate_in_key_order() {
        let m: Map<String, Value> = ["b", "$a", "a", "ab", "B"]
            .iter()
            .map(|k| (k.to_string(), Value::Null))
            .collect();
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(keys, ["$a", "B", "a", "ab", "b"]);
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            // Quotes, backslashes, control characters and non-ASCII text.
            "[a\"\\\u{0}-\u{1f}é😀]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-c\"\u{1}]{0,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn props() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[a-d\"\u{7}]{1,3}", value(), 0..6)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        /// The bound is a bound, and the limit checks answer exactly what serialising answers,
        /// whichever side of the limit (and of the bound) the properties fall.
        #[test]
        fn size_checks_agree_with_serialising(
            current in props(),
            set in props(),
            unset in prop::collection::vec("[a-d\"\u{7}]{1,3}", 0..3),
            limit in 0usize..600,
        ) {
            prop_assert!(map_size_bound(&current) >= serialized_size(&current));
            prop_assert_eq!(exceeds(&current, limit), serialized_size(&current) > limit);
            let mut after = current.clone();
            apply_diff(&mut after, &set, &unset);
            prop_assert_eq!(
                update_exceeds(&current, &set, &unset, limit),
                serialized_size(&after) > limit
            );
        }
    }
}
