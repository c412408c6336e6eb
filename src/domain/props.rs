//! Person property operations (spec §5) and the size limit (spec §9).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

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
            let text = serde_json::to_string(&self.0).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&text)
        }
    }
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

/// The properties of a stored event, kept as the compact JSON text of an object.
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
        // Serialising a map of JSON values cannot fail (string keys, finite numbers).
        RawProps(
            serde_json::to_string(props)
                .unwrap_or_else(|_| "{}".into())
                .into(),
        )
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
    pub fn to_map(&self) -> Result<Map<String, Value>, serde_json::Error> {
        serde_json::from_str(&self.0)
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
    serde_json::to_vec(props)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
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
}
