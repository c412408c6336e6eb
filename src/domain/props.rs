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

    /// Properties of a person created by this event (spec §5, creation): `$unset` is ignored.
    pub fn initial(&self) -> Map<String, Value> {
        let mut props = self.set_once.clone();
        for (k, v) in &self.set {
            props.insert(k.clone(), v.clone());
        }
        props
    }

    /// What actually changes on a person whose properties are `current` (spec §5, update).
    pub fn diff(&self, current: &Map<String, Value>) -> PropertyDiff {
        let mut set = Map::new();
        // `current[k]` for each key of `updates`, in the updates' order: found by walking
        // `current` alongside (both iterate in key order) when that is cheaper than one search
        // of `current` per key.
        let walk = current.len() <= 8 * self.set.len().max(self.set_once.len());
        let lookup = |updates: &Map<String, Value>| -> Vec<Option<&Value>> {
            if !walk {
                return updates.keys().map(|k| current.get(k)).collect();
            }
            let mut cur = current.iter().peekable();
            updates
                .keys()
                .map(|k| {
                    while cur.next_if(|(ck, _)| *ck < k).is_some() {}
                    cur.peek().filter(|(ck, _)| *ck == k).map(|(_, v)| *v)
                })
                .collect()
        };
        for ((k, v), now) in self.set_once.iter().zip(lookup(&self.set_once)) {
            if now.is_none() {
                set.insert(k.clone(), v.clone());
            }
        }
        for ((k, v), now) in self.set.iter().zip(lookup(&self.set)) {
            if now != Some(v) {
                set.insert(k.clone(), v.clone());
            }
        }
        let mut unset: Vec<String> = Vec::new();
        for k in &self.unset {
            if current.contains_key(k) && !unset.contains(k) {
                unset.push(k.clone());
            }
        }
        PropertyDiff { set, unset }
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

    /// `diff` walks maps side by side, which is right only while `serde_json::Map` iterates in
    /// key order (it would not with serde_json's `preserve_order` feature, which any crate in
    /// the build could turn on).
    #[test]
    fn json_maps_iterate_in_key_order() {
        let m: Map<String, Value> = ["b", "$a", "a", "ab", "B"]
            .iter()
            .map(|k| (k.to_string(), Value::Null))
            .collect();
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(keys, ["$a", "B", "a", "ab", "b"]);
    }

    fn map(entries: Vec<(String, u8)>) -> Map<String, Value> {
        entries
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect()
    }

    proptest! {
        /// The diff equals its definition (spec §5): `$set_once` keys absent from the person,
        /// then `$set` keys whose value differs, whichever way `current` is searched.
        #[test]
        fn diff_matches_its_definition(
            current in prop::collection::vec(("[a-e]{1,2}", 0u8..3), 0..40),
            set in prop::collection::vec(("[a-e]{1,2}", 0u8..3), 0..6),
            set_once in prop::collection::vec(("[a-e]{1,2}", 0u8..3), 0..6),
        ) {
            let (current, set, set_once) = (map(current), map(set), map(set_once));
            let updates = PropertyUpdates { set: set.clone(), set_once: set_once.clone(), unset: vec![] };
            let mut want = Map::new();
            for (k, v) in &set_once {
                if !current.contains_key(k) {
                    want.insert(k.clone(), v.clone());
                }
            }
            for (k, v) in &set {
                if current.get(k) != Some(v) {
                    want.insert(k.clone(), v.clone());
                }
            }
            prop_assert_eq!(updates.diff(&current).set, want);
        }
    }
}
