//! Project settings: name, the conversion buffer (spec §11), test-account filters and the merge
//! limit. They are logged state (`Change::ProjectSettingsChanged` carries the whole settings
//! after a change), so replay, snapshots and restores keep them.
//!
//! Stored with `bincode` inside the log: only append enum variants; adding or changing a field
//! bumps the log format (`store::codec::FORMAT_VERSION`, see `domain::change`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::filters::{compile_regex, FilterOperator, FilterType, JsonValue, PropertyFilter};

/// The conversion buffer of a project (spec §11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionBuffer {
    /// Whether qualifying events are delayed.
    pub enabled: bool,
    /// How long, in seconds.
    pub window_secs: u64,
}

impl Default for ConversionBuffer {
    fn default() -> Self {
        ConversionBuffer {
            enabled: false,
            window_secs: DEFAULT_WINDOW_SECS,
        }
    }
}

/// The seed's window: 60 s.
pub const DEFAULT_WINDOW_SECS: u64 = 60;
/// Longest buffer window: a day.
pub const MAX_WINDOW_SECS: u64 = 86_400;
/// Most test-account filters per project.
pub const MAX_FILTERS: usize = 100;
/// Longest project name, in code points.
pub const MAX_NAME_CHARS: usize = 200;

/// Everything a project can be configured with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectSettings {
    /// Display name.
    pub name: String,
    /// The conversion buffer.
    pub conversion_buffer: ConversionBuffer,
    /// Filters that real (non-test) persons pass; see [`super::filters`].
    pub test_account_filters: Vec<PropertyFilter>,
    /// Refuse merges whose source person has more distinct IDs; `None`: the daemon's
    /// `--merge-limit`.
    pub merge_limit: Option<u64>,
}

impl ProjectSettings {
    /// The settings of a project nobody has configured yet.
    pub fn new(name: &str) -> ProjectSettings {
        ProjectSettings {
            name: name.to_string(),
            conversion_buffer: ConversionBuffer::default(),
            test_account_filters: Vec::new(),
            merge_limit: None,
        }
    }

    /// These settings with `patch` applied.
    pub fn patched(&self, patch: &SettingsPatch) -> ProjectSettings {
        let mut s = self.clone();
        if let Some(n) = &patch.name {
            s.name = n.clone();
        }
        if let Some(e) = patch.buffer_enabled {
            s.conversion_buffer.enabled = e;
        }
        if let Some(w) = patch.buffer_window_secs {
            s.conversion_buffer.window_secs = w;
        }
        if let Some(f) = &patch.test_account_filters {
            s.test_account_filters = f.clone();
        }
        if let Some(m) = patch.merge_limit {
            s.merge_limit = m;
        }
        s
    }
}

/// A validated change to some settings (the body of `PATCH /api/projects/{project}/`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SettingsPatch {
    /// New name.
    pub name: Option<String>,
    /// New `conversion_buffer.enabled`.
    pub buffer_enabled: Option<bool>,
    /// New `conversion_buffer.window_secs`.
    pub buffer_window_secs: Option<u64>,
    /// New filters (replacing the old list).
    pub test_account_filters: Option<Vec<PropertyFilter>>,
    /// New merge limit (`Some(None)`: back to the daemon's).
    pub merge_limit: Option<Option<u64>>,
}

/// Why settings were refused: the field (a path like `test_account_filters[0].operator`) and
/// what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SettingsError {
    /// The offending field.
    pub field: String,
    /// What is wrong, and what would be right.
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> SettingsError {
    SettingsError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Fields of a project that a client may send back unchanged (they are read-only).
const READ_ONLY: [&str; 4] = ["id", "token", "api_token", "created_at"];

impl SettingsPatch {
    /// Validate a JSON body. Every error names its field.
    pub fn parse(body: &Value) -> Result<SettingsPatch, SettingsError> {
        let obj = body
            .as_object()
            .ok_or_else(|| bad("body", "send a JSON object of settings"))?;
        let mut p = SettingsPatch::default();
        for (k, v) in obj {
            match k.as_str() {
                "name" => p.name = Some(parse_name(v)?),
                "conversion_buffer" => parse_buffer(v, &mut p)?,
                "test_account_filters" => p.test_account_filters = Some(parse_filters(v)?),
                "merge_limit" => p.merge_limit = Some(parse_merge_limit(v)?),
                k if READ_ONLY.contains(&k) => {}
                other => return Err(bad(other, "is not a project setting; the settings are name, conversion_buffer, test_account_filters and merge_limit")),
            }
        }
        Ok(p)
    }

    /// Whether the patch changes nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == SettingsPatch::default()
    }
}

fn parse_name(v: &Value) -> Result<String, SettingsError> {
    let s = v
        .as_str()
        .ok_or_else(|| bad("name", "must be a string"))?
        .trim();
    if s.is_empty() {
        return Err(bad("name", "must not be empty"));
    }
    if s.chars().count() > MAX_NAME_CHARS {
        return Err(bad(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(s.to_string())
}

fn parse_buffer(v: &Value, p: &mut SettingsPatch) -> Result<(), SettingsError> {
    let obj = v.as_object().ok_or_else(|| {
        bad(
            "conversion_buffer",
            "must be an object like {\"enabled\": true, \"window_secs\": 60}",
        )
    })?;
    for (k, v) in obj {
        match k.as_str() {
            "enabled" => {
                p.buffer_enabled = Some(
                    v.as_bool()
                        .ok_or_else(|| bad("conversion_buffer.enabled", "must be true or false"))?,
                )
            }
            "window_secs" => {
                let w = v.as_u64().filter(|w| (1..=MAX_WINDOW_SECS).contains(w));
                p.buffer_window_secs = Some(w.ok_or_else(|| {
                    bad(
                        "conversion_buffer.window_secs",
                        format!("must be a whole number of seconds from 1 to {MAX_WINDOW_SECS}"),
                    )
                })?);
            }
            other => {
                return Err(bad(
                    format!("conversion_buffer.{other}"),
                    "is not a buffer setting; they are enabled and window_secs",
                ))
            }
        }
    }
    Ok(())
}

fn parse_merge_limit(v: &Value) -> Result<Option<u64>, SettingsError> {
    match v {
        Value::Null => Ok(None),
        v => v.as_u64().map(Some).ok_or_else(|| {
            bad(
                "merge_limit",
                "must be a whole number of distinct IDs, or null for the daemon's --merge-limit",
            )
        }),
    }
}

fn parse_filters(v: &Value) -> Result<Vec<PropertyFilter>, SettingsError> {
    let items = v.as_array().ok_or_else(|| {
        bad(
            "test_account_filters",
            "must be a list of {\"key\", \"value\", \"operator\", \"type\": \"person\"}",
        )
    })?;
    if items.len() > MAX_FILTERS {
        return Err(bad(
            "test_account_filters",
            format!("at most {MAX_FILTERS} filters"),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, f)| parse_filter(&format!("test_account_filters[{i}]"), f))
        .collect()
}

fn parse_filter(at: &str, v: &Value) -> Result<PropertyFilter, SettingsError> {
    let obj = v.as_object().ok_or_else(|| bad(at, "must be an object"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["key", "value", "operator", "type"].contains(&k.as_str()))
    {
        return Err(bad(
            format!("{at}.{k}"),
            "is not a filter field; they are key, value, operator and type",
        ));
    }
    let key = obj
        .get("key")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad(format!("{at}.key"), "must be a non-empty property name"))?;
    let operator = parse_operator(at, obj)?;
    match obj.get("type") {
        None => {}
        Some(Value::String(t)) if t == "person" => {}
        Some(_) => {
            return Err(bad(
                format!("{at}.type"),
                "must be \"person\" (only person properties can be filtered)",
            ))
        }
    }
    let value = obj.get("value").cloned().unwrap_or(Value::Null);
    check_value(at, operator, &value)?;
    Ok(PropertyFilter {
        key: key.to_string(),
        value: JsonValue(value),
        operator,
        kind: FilterType::Person,
    })
}

fn parse_operator(at: &str, obj: &Map<String, Value>) -> Result<FilterOperator, SettingsError> {
    let Some(op) = obj.get("operator") else {
        return Ok(FilterOperator::Exact);
    };
    let names: Vec<&str> = FilterOperator::ALL.iter().map(|(n, _)| *n).collect();
    op.as_str()
        .and_then(|s| FilterOperator::ALL.iter().find(|(n, _)| *n == s))
        .map(|(_, o)| *o)
        .ok_or_else(|| {
            bad(
                format!("{at}.operator"),
                format!("must be one of {}", names.join(", ")),
            )
        })
}

fn check_value(at: &str, op: FilterOperator, value: &Value) -> Result<(), SettingsError> {
    let field = format!("{at}.value");
    let scalar = |v: &Value| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_));
    if !op.needs_value() {
        return Ok(());
    }
    match (op, value) {
        (FilterOperator::Exact | FilterOperator::IsNot, Value::Array(items))
            if !items.is_empty() && items.iter().all(scalar) =>
        {
            Ok(())
        }
        (FilterOperator::Regex | FilterOperator::NotRegex, Value::String(s)) => compile_regex(s)
            .map(|_| ())
            .map_err(|e| bad(field, format!("is not a valid regular expression: {e}"))),
        (FilterOperator::Regex | FilterOperator::NotRegex, _) => {
            Err(bad(field, "must be a regular expression (a string)"))
        }
        (_, v) if scalar(v) => Ok(()),
        _ => Err(bad(
            field,
            "must be a string, number or boolean (exact and is_not also take a list of them)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(body: Value) -> String {
        match SettingsPatch::parse(&body) {
            Err(e) => e.field,
            Ok(p) => panic!("accepted {p:?}"),
        }
    }

    #[test]
    fn every_refusal_names_its_field() {
        assert_eq!(field_of(json!({"name": ""})), "name");
        assert_eq!(
            field_of(json!({"conversion_buffer": {"window_secs": 0}})),
            "conversion_buffer.window_secs"
        );
        assert_eq!(
            field_of(json!({"conversion_buffer": {"enabled": "yes"}})),
            "conversion_buffer.enabled"
        );
        assert_eq!(field_of(json!({"merge_limit": -1})), "merge_limit");
        assert_eq!(
            field_of(
                json!({"test_account_filters": [{"key": "email", "operator": "like", "value": "x"}]})
            ),
            "test_account_filters[0].operator"
        );
        assert_eq!(
            field_of(
                json!({"test_account_filters": [{"key": "a", "value": "x"}, {"key": "h", "operator": "regex", "value": "("}]})
            ),
            "test_account_filters[1].value"
        );
        assert_eq!(
            field_of(
                json!({"test_account_filters": [{"key": "e", "value": "x", "type": "event"}]})
            ),
            "test_account_filters[0].type"
        );
        assert_eq!(field_of(json!({"colour": "red"})), "colour");
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let before = ProjectSettings::new("Shop");
        let p = SettingsPatch::parse(&json!({"conversion_buffer": {"enabled": true}, "id": 1}))
            .unwrap();
        let after = before.patched(&p);
        assert!(after.conversion_buffer.enabled);
        assert_eq!(after.conversion_buffer.window_secs, 60);
        assert_eq!(after.name, "Shop");
        let p = SettingsPatch::parse(&json!({"merge_limit": 5})).unwrap();
        assert_eq!(after.patched(&p).merge_limit, Some(5));
        let p = SettingsPatch::parse(&json!({"merge_limit": null})).unwrap();
        assert_eq!(after.patched(&p).merge_limit, None);
        assert!(SettingsPatch::parse(&json!({"token": "x"}))
            .unwrap()
            .is_empty());
    }
}
