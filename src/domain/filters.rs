//! Person property filters in PostHog's shape (`{"key", "value", "operator", "type": "person"}`),
//! as a project's `test_account_filters` uses them.
//!
//! A project's test-account filters describe the persons to *keep*, as in PostHog: with
//! `filter_test_accounts=true` a query adds them as extra filters, so a person is a test account
//! when it fails any of them. The usual one, `{"key": "email", "operator": "not_icontains",
//! "value": "@ourcompany.com"}`, leaves out everyone whose email is at `ourcompany.com`.
//!
//! These types are stored in the log (inside `Change::ProjectSettingsChanged`): `bincode` encodes
//! enum variants by position, so only ever append variants.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::js::to_js_string;

/// How a filter compares a person property with its value (PostHog's operator names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterOperator {
    /// Equal to the value, or to one of a list of values.
    Exact,
    /// Not `exact` (a missing property passes).
    IsNot,
    /// Contains the value, ignoring case.
    Icontains,
    /// Not `icontains` (a missing property passes).
    NotIcontains,
    /// Matches the regular expression.
    Regex,
    /// Not `regex` (a missing property passes).
    NotRegex,
    /// Present and not null.
    IsSet,
    /// Missing or null.
    IsNotSet,
}

impl FilterOperator {
    /// Every operator with its name, for parsing and error messages.
    pub const ALL: [(&'static str, FilterOperator); 8] = [
        ("exact", Self::Exact),
        ("is_not", Self::IsNot),
        ("icontains", Self::Icontains),
        ("not_icontains", Self::NotIcontains),
        ("regex", Self::Regex),
        ("not_regex", Self::NotRegex),
        ("is_set", Self::IsSet),
        ("is_not_set", Self::IsNotSet),
    ];

    /// Whether the operator compares with a value (all but `is_set` and `is_not_set`).
    pub fn needs_value(self) -> bool {
        !matches!(self, Self::IsSet | Self::IsNotSet)
    }
}

/// What a filter looks at. Only person properties for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterType {
    /// A person property.
    Person,
}

/// A JSON value that `bincode` can store (as compact JSON text), like [`super::Props`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JsonValue(pub Value);

impl Serialize for JsonValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            s.serialize_str(&self.0.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Value::deserialize(d).map(JsonValue)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text)
                .map(JsonValue)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// One filter on a person property.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PropertyFilter {
    /// The property name.
    pub key: String,
    /// The value compared with (null for `is_set`/`is_not_set`; a list for `exact`/`is_not`).
    pub value: JsonValue,
    /// How to compare.
    pub operator: FilterOperator,
    /// What the key names.
    #[serde(rename = "type")]
    pub kind: FilterType,
}

/// A property value as text, the way the filters compare it; `None` for missing or null.
fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::Object(_) => Some(v?.to_string()),
        other => Some(to_js_string(other)),
    }
}

/// The filter's value(s) as text.
fn wanted(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().filter_map(|i| text_of(Some(i))).collect(),
        other => text_of(Some(other)).into_iter().collect(),
    }
}

/// Filters prepared for evaluating many persons (regular expressions compiled once).
pub struct CompiledFilters {
    filters: Vec<(PropertyFilter, Option<regex::Regex>, Vec<String>)>,
    /// Each filter's key as it appears in JSON text that has no escapes (`"key"`).
    quoted_keys: Vec<String>,
}

impl CompiledFilters {
    /// Prepare `filters`. A regular expression that does not compile (it was checked when the
    /// settings were accepted, so only a future regex engine could refuse it) matches nothing.
    pub fn new(filters: &[PropertyFilter]) -> CompiledFilters {
        let filters = filters
            .iter()
            .map(|f| {
                let re = match f.operator {
                    FilterOperator::Regex | FilterOperator::NotRegex => {
                        compile_regex(&text_of(Some(&f.value.0)).unwrap_or_default()).ok()
                    }
                    _ => None,
                };
                let wanted = wanted(&f.value.0)
                    .into_iter()
                    .map(|w| match f.operator {
                        FilterOperator::Icontains | FilterOperator::NotIcontains => {
                            w.to_lowercase()
                        }
                        _ => w,
                    })
                    .collect();
                (f.clone(), re, wanted)
            })
            .collect::<Vec<_>>();
        let quoted_keys = filters
            .iter()
            .map(|(f, _, _)| format!("\"{}\"", f.key))
            .collect();
        CompiledFilters {
            filters,
            quoted_keys,
        }
    }

    /// Whether there are no filters (then nobody is a test account).
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Whether a person with these properties is a test account: it fails any filter.
    pub fn is_test_account(&self, props: &Map<String, Value>) -> bool {
        !self
            .filters
            .iter()
            .all(|(f, re, wanted)| passes(f, re.as_ref(), wanted, props))
    }

    /// [`Self::is_test_account`] of properties given as JSON text (a person record's stored
    /// form), reading only the keys the filters name: the other values are skipped, not built.
    /// Same answer as parsing the whole map (a repeated key keeps its last value there too).
    pub fn is_test_account_json(&self, json: &str) -> Result<bool, serde_json::Error> {
        // Text without a backslash writes every key as itself between quotes, so when no
        // filter's key appears so, the person has none of them (most persons of a project
        // with an `email` filter never gave one) and the rest need not be parsed. That rest is
        // then not validated: the text comes from a record that decoded, written by serde_json.
        if !json.contains('\\')
            && json.trim_start().starts_with('{')
            && !self.quoted_keys.iter().any(|k| json.contains(k.as_str()))
        {
            return Ok(self.is_test_account(&Map::new()));
        }
        let picked = serde::Deserializer::deserialize_map(
            &mut serde_json::Deserializer::from_str(json),
            Pick { filters: self },
        )?;
        Ok(self.is_test_account(&picked))
    }
}

/// Deserialises a JSON object into the map of only the keys some filter names.
struct Pick<'f> {
    filters: &'f CompiledFilters,
}

impl<'de> serde::de::Visitor<'de> for Pick<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object of properties")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = m.next_key_seed(KeyOf {
            filters: self.filters,
        })? {
            match key {
                Some(k) => {
                    out.insert(k, m.next_value::<Value>()?);
                }
                None => {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// A map key: `Some` when a filter names it, without allocating for the keys no filter names.
struct KeyOf<'f> {
    filters: &'f CompiledFilters,
}

impl<'de> serde::de::DeserializeSeed<'de> for KeyOf<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyOf<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a property name")
    }

    fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<Self::Value, E> {
        Ok(self
            .filters
            .filters
            .iter()
            .any(|(f, _, _)| f.key == k)
            .then(|| k.to_string()))
    }
}

/// Whether `props` passes one filter (PostHog's semantics: a missing property passes the
/// negative operators and fails the positive ones).
fn passes(
    f: &PropertyFilter,
    re: Option<&regex::Regex>,
    wanted: &[String],
    props: &Map<String, Value>,
) -> bool {
    let have = text_of(props.get(&f.key));
    let exact = || have.as_ref().is_some_and(|h| wanted.iter().any(|w| w == h));
    let contains = || {
        have.as_ref().is_some_and(|h| {
            let h = h.to_lowercase();
            wanted.iter().any(|w| h.contains(w.as_str()))
        })
    };
    let matches = || match (&have, re) {
        (Some(h), Some(re)) => re.is_match(h),
        _ => false,
    };
    match f.operator {
        FilterOperator::Exact => exact(),
        FilterOperator::IsNot => !exact(),
        FilterOperator::Icontains => contains(),
        FilterOperator::NotIcontains => !contains(),
        FilterOperator::Regex => matches(),
        FilterOperator::NotRegex => !matches(),
        FilterOperator::IsSet => have.is_some(),
        FilterOperator::IsNotSet => have.is_none(),
    }
}

/// Compile a filter's regular expression, bounded in size so a hostile pattern cannot take the
/// daemon's memory.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(super) fn filter(key: &str, op: FilterOperator, value: Value) -> PropertyFilter {
        PropertyFilter {
            key: key.into(),
            value: JsonValue(value),
            operator: op,
            kind: FilterType::Person,
        }
    }

    fn test_account(f: PropertyFilter, props: Value) -> bool {
        let props = props.as_object().cloned().unwrap_or_default();
        CompiledFilters::new(&[f]).is_test_account(&props)
    }

    #[test]
    fn not_icontains_marks_internal_emails_as_test_accounts() {
        let f = || {
            filter(
                "email",
                FilterOperator::NotIcontains,
                json!("@OurCompany.com"),
            )
        };
        assert!(test_account(f(), json!({"email": "max@ourcompany.com"})));
        assert!(!test_account(f(), json!({"email": "max@hedgehogmail.com"})));
        assert!(!test_account(f(), json!({})), "a missing email passes");
    }

    #[test]
    fn positive_operators_fail_on_a_missing_property() {
        for op in [
            FilterOperator::Exact,
            FilterOperator::Icontains,
            FilterOperator::Regex,
            FilterOperator::IsSet,
        ] {
            assert!(test_account(
                filter("k", op, json!("x")),
                json!({"k": null})
            ));
        }
        for op in [
            FilterOperator::IsNot,
            FilterOperator::NotIcontains,
            FilterOperator::NotRegex,
            FilterOperator::IsNotSet,
        ] {
            assert!(!test_account(filter("k", op, json!("x")), json!({})));
        }
    }

    #[test]
    fn exact_takes_a_list_and_compares_numbers_as_javascript_prints_them() {
        let f = || filter("plan", FilterOperator::Exact, json!(["free", 1]));
        assert!(!test_account(f(), json!({"plan": "free"})));
        assert!(!test_account(f(), json!({"plan": 1.0})));
        assert!(test_account(f(), json!({"plan": "Free"})));
        let f = filter(
            "host",
            FilterOperator::NotRegex,
            json!("^localhost(:\\d+)?$"),
        );
        assert!(test_account(f.clone(), json!({"host": "localhost:8000"})));
        assert!(!test_account(f, json!({"host": "app.example.com"})));
    }
}

#[cfg(test)]
mod json_tests {
    use super::tests::filter;
    use super::*;
    use serde_json::json;

    #[test]
    fn reading_only_the_filtered_keys_gives_the_same_verdict_as_the_whole_map() {
        let sets = [
            vec![filter(
                "email",
                FilterOperator::NotIcontains,
                json!("@ourcompany.com"),
            )],
            vec![
                filter("email", FilterOperator::IsSet, Value::Null),
                filter("plan", FilterOperator::Exact, json!(["free", 1])),
            ],
            vec![filter("na\"me\u{e9}", FilterOperator::Regex, json!("^x"))],
            vec![filter("obj", FilterOperator::Icontains, json!("\"a\":1"))],
        ];
        let people = [
            json!({}),
            json!({"email": "max@OurCompany.com", "other": {"deep": [1, 2, {"x": null}]}}),
            json!({"email": "max@hedgehogmail.com", "plan": 1.0}),
            json!({"email": null, "plan": "free"}),
            json!({"plan": "free", "email": "e", "na\"me\u{e9}": "xyz"}),
            json!({"obj": {"a": 1}, "na\"me\u{e9}": "yx"}),
        ];
        for filters in &sets {
            let c = CompiledFilters::new(filters);
            for p in &people {
                let text = serde_json::to_string(p).unwrap();
                let map = p.as_object().unwrap();
                assert_eq!(
                    c.is_test_account_json(&text).unwrap(),
                    c.is_test_account(map),
                    "{filters:?} {p}"
                );
            }
        }
        // A repeated key keeps its last value, as a parsed map does.
        let c = CompiledFilters::new(&sets[0]);
        let text = r#"{"email":"a@ourcompany.com","email":"a@hedgehogmail.com"}"#;
        let map: Map<String, Value> = serde_json::from_str(text).unwrap();
        assert_eq!(
            c.is_test_account_json(text).unwrap(),
            c.is_test_account(&map)
        );
        assert!(c.is_test_account_json("[1]").is_err());
    }
}
