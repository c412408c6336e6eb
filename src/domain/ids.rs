//! Identifiers as newtypes, the illegal-ID rules (spec §4) and person UUIDs (spec §6).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A project (tenant) number; never changes once assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProjectId(pub u32);

/// A person's UUID (v5 of the distinct ID it was created for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PersonUuid(pub Uuid);

/// A position in the log; strictly increasing, starting at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Seq(pub u64);

impl std::fmt::Display for ProjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for PersonUuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The namespace PostHog uses for person UUIDs (spec §6).
pub const PERSON_UUID_NAMESPACE: Uuid = uuid::uuid!("932979b4-65c3-4424-8467-0b66ec27bc22");

/// The deterministic UUID of the person created for `distinct_id` in `project`.
pub fn person_uuid(project: ProjectId, distinct_id: &str) -> PersonUuid {
    let name = format!("{}:{}", project.0, distinct_id);
    PersonUuid(Uuid::new_v5(&PERSON_UUID_NAMESPACE, name.as_bytes()))
}

/// Longest distinct ID that may take part in a merge, in code points.
pub const MAX_MERGE_ID_CHARS: usize = 400;

const ILLEGAL_ANY_CASE: [&str; 10] = [
    "anonymous",
    "guest",
    "distinctid",
    "distinct_id",
    "id",
    "not_authenticated",
    "email",
    "undefined",
    "true",
    "false",
];

const ILLEGAL_EXACT: [&str; 7] = [
    "[object Object]",
    "NaN",
    "None",
    "none",
    "null",
    "0",
    "undefined",
];

/// JavaScript's `String.prototype.trim` whitespace (spec §4; note: not U+0085).
pub fn is_js_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{0009}'
            | '\u{000A}'
            | '\u{000B}'
            | '\u{000C}'
            | '\u{000D}'
            | '\u{0020}'
            | '\u{00A0}'
            | '\u{1680}'
            | '\u{2000}'
            ..='\u{200A}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202F}'
                | '\u{205F}'
                | '\u{3000}'
                | '\u{FEFF}'
    )
}

/// `id` is `word`, `'word'` or `"word"`.
fn is_word_or_quoted(id: &str, word: &str) -> bool {
    if id == word {
        return true;
    }
    let n = id.len();
    n == word.len() + 2
        && ((id.starts_with('\'') && id.ends_with('\''))
            || (id.starts_with('"') && id.ends_with('"')))
        && &id[1..n - 1] == word
}

/// Whether a distinct ID may not take part in a merge (spec §4, "Illegal distinct IDs").
pub fn is_illegal_distinct_id(id: &str) -> bool {
    if id.trim_matches(is_js_whitespace).is_empty() {
        return true;
    }
    if id.chars().count() > MAX_MERGE_ID_CHARS {
        return true;
    }
    if ILLEGAL_EXACT.iter().any(|w| is_word_or_quoted(id, w)) {
        return true;
    }
    let lower = id.to_lowercase();
    ILLEGAL_ANY_CASE
        .iter()
        .any(|w| is_word_or_quoted(&lower, w))
}
