//! An event as it arrives, before normalisation: its fields parsed, its `properties` left as
//! the JSON text the client sent.
//!
//! A typical event carries about 40 properties that no rule reads: they are stored and
//! returned, nothing more. Parsing them into a tree of `Value`s and serialising that tree back
//! for the log was most of what the daemon spent per event on its HTTP threads. So the
//! properties stay text, with an index of their top-level entries ([`EventProps`]); the rules
//! parse the few values they read (`$set`, `$anon_distinct_id`, the promoted properties, …).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::json_out;
use super::props::RawProps;
use super::scan::{first_out_of_range, Scanner};
use super::swar;

/// Where one top-level key of an [`EventProps`] is: a span of the text, or (for a key written
/// with escapes) the key unescaped.
#[derive(Clone, Debug, PartialEq)]
enum KeyText {
    Span(u32, u32),
    Unescaped(Box<str>),
}

/// One top-level entry: its key and the span of its value's JSON text.
#[derive(Clone, Debug, PartialEq)]
struct EntrySpan {
    key: KeyText,
    value: (u32, u32),
}

/// The `properties` of an event: the JSON text of an object as the client sent it (valid
/// JSON, checked when it was parsed), and where each top-level entry is in it.
///
/// A key sent twice is kept twice, in order: every reader takes the last, as a parse into a
/// map would.
#[derive(Clone, Debug, PartialEq)]
pub struct EventProps {
    text: RawProps,
    entries: Vec<EntrySpan>,
    /// For each of [`LOOKED_UP`], the index in `entries` of its last entry ([`ABSENT`] if
    /// none): found in one pass when indexed, instead of a scan of every key per lookup.
    looked_up: [u32; LOOKED_UP.len()],
}

/// The properties the rules look up by name, for every event or often.
const LOOKED_UP: [&str; 11] = [
    "$set",
    "$set_once",
    "$unset",
    "$process_person_profile",
    "distinct_id",
    "token",
    "$anon_distinct_id",
    "alias",
    "$device_id",
    "$lib",
    "$ignore_sent_at",
];

const ABSENT: u32 = u32::MAX;

/// The position of `key` in [`LOOKED_UP`].
fn looked_up_slot(key: &str) -> Option<usize> {
    // A match compiles to a switch on the length, then a compare: cheap for the ~40 keys of
    // a typical event, of which none or one is looked up.
    Some(match key {
        "$set" => 0,
        "$set_once" => 1,
        "$unset" => 2,
        "$process_person_profile" => 3,
        "distinct_id" => 4,
        "token" => 5,
        "$anon_distinct_id" => 6,
        "alias" => 7,
        "$device_id" => 8,
        "$lib" => 9,
        // Looked up for every event of a request with a `sent_at` (all the SDKs'): a scan
        // of every key was ~1.2k instructions per event under callgrind.
        "$ignore_sent_at" => 10,
        _ => return None,
    })
}

impl Default for EventProps {
    fn default() -> Self {
        EventProps {
            text: RawProps::empty(),
            entries: Vec::new(),
            looked_up: [ABSENT; LOOKED_UP.len()],
        }
    }
}

/// A key of a JSON object, borrowed from the text when it has no escapes.
#[derive(Debug)]
pub struct Key<'a>(pub Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top-level entries of a JSON object, borrowed from its text.
struct Entries<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Entries<'de>, A::Error> {
                Entries::visit(m)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Entries<'de> {
    fn visit<A: MapAccess<'de>>(mut m: A) -> Result<Entries<'de>, A::Error> {
        let mut entries = Vec::with_capacity(m.size_hint().unwrap_or(16));
        while let Some(key) = m.next_key::<Key<'de>>()? {
            entries.push((key, m.next_value::<&'de RawValue>()?));
        }
        Ok(Entries(entries))
    }
}

/// A value to write: JSON text as sent, or a parsed value.
enum Piece<'a> {
    Text(&'a str),
    Value(&'a Value),
}

/// The span of `part` in `whole`, which contains it.
fn span(whole: &str, part: &str) -> (u32, u32) {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    (start as u32, (start + part.len()) as u32)
}

impl EventProps {
    /// The properties in `text`, the JSON text of an object, checked by serde_json: text that
    /// is not an object (or not JSON) is an error.
    pub fn parse(text: &str) -> Result<EventProps, serde_json::Error> {
        let entries = {
            let Entries(found) = serde_json::from_str(text)?;
            found
                .into_iter()
                .map(|(Key(k), v)| EntrySpan {
                    key: match k {
                        Cow::Borrowed(k) => {
                            let (a, b) = span(text, k);
                            KeyText::Span(a, b)
                        }
                        Cow::Owned(k) => KeyText::Unescaped(k.into_boxed_str()),
                    },
                    value: span(text, v.get()),
                })
                .collect()
        };
        Ok(EventProps::indexed(
            RawProps::from_text(text.into()),
            entries,
        ))
    }

    /// The properties in `text`, which must be valid JSON (the text of a value of an event
    /// serde_json has checked): its entries found in one fast pass ([`index_object`]). `None`
    /// when it is not an object. Crate-private: on text that is not JSON it finds nonsense
    /// (never a panic: every span starts and ends at an ASCII byte).
    pub(crate) fn from_valid(text: Box<str>) -> Option<EventProps> {
        EventProps::from_valid_with_depth(text).map(|(props, _)| props)
    }

    /// [`EventProps::from_valid`], and the object's nesting depth ([`json_depth`]), measured
    /// by the same pass.
    fn from_valid_with_depth(text: Box<str>) -> Option<(EventProps, usize)> {
        // Spans are u32: the body limit keeps any event far below 4 GiB.
        if text.len() > u32::MAX as usize {
            return None;
        }
        let (entries, depth) = index_object(&text)?;
        Some((
            EventProps::indexed(RawProps::from_text(text), entries),
            depth,
        ))
    }

    /// The object at the scanner's position (which must be `{`), checked and indexed in one
    /// pass, and its nesting depth: what [`EventProps::from_valid_with_depth`] finds, with
    /// the check serde_json would make. `None` when the scanner leaves it to serde_json.
    fn scan(s: &mut Scanner<'_>) -> Option<(EventProps, usize)> {
        let (text, start) = (s.text(), s.pos());
        // Spans are u32: the body limit keeps any event far below 4 GiB.
        if text.len() > u32::MAX as usize {
            return None;
        }
        let at = |i: usize| (i - start) as u32;
        let mut entries = Vec::with_capacity(48);
        let mut looked_up = [ABSENT; LOOKED_UP.len()];
        let mut depth = 1;
        s.object_spans(|s, (a, b, escaped)| {
            let key = match escaped {
                false => KeyText::Span(at(a), at(b)),
                true => KeyText::Unescaped(s.unescape((a, b, escaped))?.into()),
            };
            // The lookups' index, found here rather than in a second walk of the entries.
            let name = match &key {
                KeyText::Span(..) => &text[a..b],
                KeyText::Unescaped(k) => k,
            };
            if let Some(slot) = looked_up_slot(name) {
                looked_up[slot] = entries.len() as u32;
            }
            let from = s.pos();
            depth = depth.max(1 + s.value()?);
            entries.push(EntrySpan {
                key,
                value: (at(from), at(s.pos())),
            });
            Some(())
        })?;
        let text = RawProps::from_text(text[start..s.pos()].into());
        let props = EventProps {
            text,
            entries,
            looked_up,
        };
        Some((props, depth))
    }

    fn indexed(text: RawProps, entries: Vec<EntrySpan>) -> EventProps {
        let mut props = EventProps {
            text,
            entries,
            looked_up: [ABSENT; LOOKED_UP.len()],
        };
        for (i, e) in props.entries.iter().enumerate() {
            if let Some(slot) = looked_up_slot(props.key(e)) {
                props.looked_up[slot] = i as u32;
            }
        }
        props
    }

    /// The last entry of `key`.
    fn entry(&self, key: &str) -> Option<&EntrySpan> {
        match looked_up_slot(key) {
            Some(slot) => self.entries.get(self.looked_up[slot] as usize),
            None => self.entries.iter().rev().find(|e| self.key(e) == key),
        }
    }

    /// The properties of `map` (its compact JSON text).
    pub fn from_map(map: &Map<String, Value>) -> EventProps {
        let raw = RawProps::from_map(map);
        // The text of a map is an object.
        EventProps::from_valid(raw.as_str().into()).unwrap_or_default()
    }

    /// These properties without the entries of `dropped` keys and with `added` after the rest,
    /// each a key and its value: the text of the kept entries copied as sent, and the index
    /// built while writing, so that nothing is parsed or scanned again. A kept key sent twice
    /// stays twice, as in the original.
    pub fn replacing(&self, dropped: &[&str], added: &[(&str, Value)]) -> EventProps {
        let mut out = Vec::with_capacity(self.text.as_str().len() + 64);
        let mut entries = Vec::with_capacity(self.entries.len() + added.len());
        out.push(b'{');
        let kept = self
            .entries
            .iter()
            .filter(|e| !dropped.contains(&self.key(e)));
        let pieces = kept
            .map(|e| (self.key(e), Piece::Text(self.value_text(e))))
            .chain(added.iter().map(|(k, v)| (*k, Piece::Value(v))));
        for (key, value) in pieces {
            if !entries.is_empty() {
                out.push(b',');
            }
            let before = out.len();
            json_out::write_str(&mut out, key);
            // A key written without escapes is its own text between the quotes.
            let key = match out.len() - before == key.len() + 2 {
                true => KeyText::Span(before as u32 + 1, (out.len() - 1) as u32),
                false => KeyText::Unescaped(key.into()),
            };
            out.push(b':');
            let from = out.len();
            match value {
                Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
                Piece::Value(v) => json_out::write_value(&mut out, v),
            }
            entries.push(EntrySpan {
                key,
                value: (from as u32, out.len() as u32),
            });
        }
        out.push(b'}');
        // Valid UTF-8: copied text, keys and values written from `str`s, ASCII punctuation.
        // Were it not, the text would be indexed again rather than trusted.
        match String::from_utf8(out) {
            Ok(text) => EventProps::indexed(RawProps::from_text(text.into_boxed_str()), entries),
            Err(e) => EventProps::from_valid(String::from_utf8_lossy(e.as_bytes()).into())
                .unwrap_or_default(),
        }
    }

    fn key<'a>(&'a self, e: &'a EntrySpan) -> &'a str {
        match &e.key {
            KeyText::Span(a, b) => &self.text.as_str()[*a as usize..*b as usize],
            KeyText::Unescaped(k) => k,
        }
    }

    fn value_text(&self, e: &EntrySpan) -> &str {
        &self.text.as_str()[e.value.0 as usize..e.value.1 as usize]
    }

    /// Each entry as (key, JSON text of its value), in the order sent, repeats included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries
            .iter()
            .map(|e| (self.key(e), self.value_text(e)))
    }

    /// The JSON text of the value of `key` (the last one, if sent twice).
    pub fn get_text(&self, key: &str) -> Option<&str> {
        self.entry(key).map(|e| self.value_text(e))
    }

    /// The value of `key`, parsed.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.get_text(key).and_then(parse_value)
    }

    /// Whether `key` is there.
    pub fn contains_key(&self, key: &str) -> bool {
        self.entry(key).is_some()
    }

    /// How many entries (a key sent twice counts twice).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The JSON text, as stored with the event.
    pub fn raw(&self) -> &RawProps {
        &self.text
    }

    /// Parsed into a map (the last of a repeated key wins).
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter()
            .filter_map(|(k, v)| Some((k.to_string(), parse_value(v)?)))
            .collect()
    }
}

/// The text of a value that was checked as JSON when its event was parsed.
pub fn parse_value(text: &str) -> Option<Value> {
    // Most values the rules read are strings without escapes (browser, OS, URLs): valid JSON
    // text of such a string is its characters between two quotes.
    let inner = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
    match inner {
        Some(s) if !s.contains('\\') => Some(Value::String(s.to_string())),
        // The next most common: a small non-negative integer (screen sizes), which serde_json
        // reads as a u64, at ~200 instructions for its set-up alone.
        _ if (1..=19).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text.len() == 1 || !text.starts_with('0')) =>
        {
            text.parse::<u64>().ok().map(Value::from)
        }
        _ => serde_json::from_str(text).ok(),
    }
}

/// The index just past the string whose opening quote is at `open`, in valid JSON text:
/// jumps from quote or backslash to the next (strings are most of an event's bytes).
fn string_end(b: &[u8], open: usize) -> Option<usize> {
    string_end_escaped(b, open).map(|(end, _)| end)
}

/// [`string_end`], and whether the string holds a backslash escape. The bytes are looked at
/// eight at a time (SWAR: a word holds a quote or a backslash when a byte of it XOR that byte
/// is zero): most strings are a few dozen bytes, too short to repay a vector search's setup.
fn string_end_escaped(b: &[u8], open: usize) -> Option<(usize, bool)> {
    let (mut i, mut escaped) = (open + 1, false);
    loop {
        while let Some(chunk) = b.get(i..i + 8) {
            let found = swar::quotes_or_backslashes(u64::from_le_bytes(chunk.try_into().ok()?));
            if found != 0 {
                i += swar::first(found);
                break;
            }
            i += 8;
        }
        match *b.get(i)? {
            b'"' => return Some((i + 1, escaped)),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
}

/// The index just past the value that starts at `start` (no whitespace before it) in valid
/// JSON text, and its nesting depth.
fn value_end(b: &[u8], start: usize) -> Option<(usize, usize)> {
    let (mut i, mut depth, mut deepest) = (start, 0usize, 0usize);
    loop {
        match *b.get(i)? {
            b'"' => i = string_end(b, i)?,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
                i += 1;
            }
            b'}' | b']' if depth > 0 => {
                depth -= 1;
                i += 1;
            }
            // The end of an enclosing container, or a separator.
            b'}' | b']' | b',' | b':' if depth == 0 => return Some((i, deepest)),
            c if depth == 0 && c.is_ascii_whitespace() => return Some((i, deepest)),
            _ => i += 1,
        }
        if depth == 0 && matches!(b.get(i - 1), Some(b'"' | b'}' | b']')) {
            return Some((i, deepest));
        }
    }
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Nesting depth of valid JSON text: 0 for a scalar, 1 + the deepest child for an array or
/// object. Counts brackets outside strings, without recursion, so any depth is safe to
/// measure.
pub fn json_depth(text: &str) -> usize {
    let b = text.as_bytes();
    let start = skip_space(b, 0);
    // A scalar (most values: strings, numbers) has depth 0 without a scan to its end.
    if !matches!(b.get(start), Some(b'{' | b'[')) {
        return 0;
    }
    value_end(b, start).map_or(0, |(_, d)| d)
}

/// The top-level entries of `text`, the valid JSON text of an object, found in one pass
/// (see [`string_end`]). `None` when `text` is not an object (or, were it not valid JSON, on
/// anything unexpected).
fn index_object(text: &str) -> Option<(Vec<EntrySpan>, usize)> {
    let b = text.as_bytes();
    let mut i = skip_space(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut entries = Vec::with_capacity(32);
    // The object's nesting depth ([`json_depth`]): 1 + its deepest value's.
    let mut depth = 1;
    i = skip_space(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some((entries, depth));
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let (key_end, escaped) = string_end_escaped(b, i)?;
        let key = match escaped {
            false => KeyText::Span(i as u32 + 1, key_end as u32 - 1),
            true => {
                let quoted = &text[i..key_end];
                KeyText::Unescaped(serde_json::from_str::<String>(quoted).ok()?.into())
            }
        };
        i = skip_space(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_space(b, i + 1);
        let (end, deepest) = value_end(b, start)?;
        depth = depth.max(1 + deepest);
        entries.push(EntrySpan {
            key,
            value: (start as u32, end as u32),
        });
        i = skip_space(b, end);
        match b.get(i) {
            Some(b',') => i = skip_space(b, i + 1),
            Some(b'}') => return Some((entries, depth)),
            _ => return None,
        }
    }
}

/// One event of a request body after serde_json's skim of the body (which checks that it is
/// JSON, without recursion): an object's entries as JSON text, or the nesting depth of
/// anything else. Measured ([`SkimmedEvent::index`]) before anything in it is parsed.
#[derive(Debug)]
pub enum SkimmedEvent<'a> {
    /// An object: its entries in order, each value as JSON text.
    Object(Vec<(Key<'a>, &'a RawValue)>),
    /// Not an object; its nesting depth.
    Other(usize),
    /// An object checked and indexed in one pass ([`IndexedEvent::scan`]).
    Indexed(IndexedEvent<'a>),
}

/// A number in an event that no `f64` holds (`1e400`, an integer of 400 digits), the first in
/// the event's text: JSON allows it, but serde_json refuses to read it into a value, so an
/// event stored with it would read back without its properties. Normalisation rejects the
/// event ([`super::normalize::Rejection::NumberOutOfRange`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfRange {
    /// The top-level field that holds it (`properties`, `$set`, `timestamp`, …), its first
    /// 64 characters.
    pub field: Box<str>,
    /// The number as sent, cut to its first 16 characters when longer than 24.
    pub number: Box<str>,
}

impl OutOfRange {
    fn new(field: &str, number: &str) -> OutOfRange {
        let number = match number.len() > 24 {
            // A number's text is ASCII: any byte is a character boundary.
            true => format!("{}… ({} characters)", &number[..16], number.len()),
            false => number.to_string(),
        };
        OutOfRange {
            field: field.chars().take(64).collect::<String>().into(),
            number: number.into(),
        }
    }
}

/// A skimmed event with its `properties` indexed and its nesting depth measured, its other
/// fields still JSON text: the depth limit can be checked before any of them is parsed
/// ([`WireEvent::from_indexed`]).
#[derive(Debug)]
pub struct IndexedEvent<'a> {
    /// Nesting depth: 0 for a scalar, 1 + the deepest child for an array or object.
    pub depth: usize,
    /// The fields but `properties`, each value as JSON text; `None` when the event is not
    /// an object.
    fields: Option<Vec<(Key<'a>, &'a str)>>,
    properties: Option<EventProps>,
    other_properties: Option<Box<str>>,
    /// The first number out of `f64`'s range in any of its entries (a dropped `properties`
    /// too): its fields holding one are not parsed.
    out_of_range: Option<OutOfRange>,
}

impl<'a> SkimmedEvent<'a> {
    /// Index the event's `properties` and measure its depth. The properties are most of an
    /// event's bytes: the pass that indexes them also measures them, instead of a pass of
    /// its own. The last `properties` of an object wins, as any repeated field does.
    pub fn index(self) -> IndexedEvent<'a> {
        let entries = match self {
            SkimmedEvent::Object(entries) => entries,
            SkimmedEvent::Other(depth) => {
                return IndexedEvent {
                    depth,
                    fields: None,
                    properties: None,
                    other_properties: None,
                    out_of_range: None,
                }
            }
            SkimmedEvent::Indexed(indexed) => return indexed,
        };
        let mut deepest = 0;
        let mut props: Option<&RawValue> = None;
        let mut fields = Vec::with_capacity(entries.len());
        let mut out_of_range = None;
        for (key, value) in entries {
            // The scan notes such a number as it checks the text; here the text was checked
            // by serde_json's skim, so it takes a pass of its own (this is the fallback path).
            if out_of_range.is_none() {
                out_of_range = first_out_of_range(value.get()).map(|n| OutOfRange::new(&key.0, n));
            }
            if key.0 == "properties" {
                // One sent earlier is dropped, but its depth still counts.
                if let Some(earlier) = props.replace(value) {
                    deepest = deepest.max(json_depth(earlier.get()));
                }
            } else {
                deepest = deepest.max(json_depth(value.get()));
                fields.push((key, value.get()));
            }
        }
        let (mut properties, mut other_properties) = (None, None);
        if let Some(text) = props.map(|p| p.get().trim()) {
            let indexed = match text.starts_with('{') {
                true => EventProps::from_valid_with_depth(text.into()),
                false => None,
            };
            match indexed {
                Some((p, depth)) => {
                    deepest = deepest.max(depth);
                    properties = Some(p);
                }
                None => {
                    deepest = deepest.max(json_depth(text));
                    if !text.starts_with('{') {
                        other_properties = Some(text.into());
                    }
                }
            }
        }
        IndexedEvent {
            depth: 1 + deepest,
            fields: Some(fields),
            properties,
            other_properties,
            out_of_range,
        }
    }
}

impl<'a> IndexedEvent<'a> {
    /// The object at the scanner's position (which must be `{`), checked and indexed in one
    /// pass: what serde_json's skim and [`SkimmedEvent::index`] make of the same text, in
    /// about half the work. `None` when the scanner leaves the text to serde_json (it is not
    /// JSON, or see [`super::scan`]).
    pub fn scan(s: &mut Scanner<'a>) -> Option<IndexedEvent<'a>> {
        let mut deepest = 0;
        let mut fields = Vec::with_capacity(8);
        let (mut properties, mut other_properties) = (None, None);
        // One noted before the event (in an envelope's field) is not the event's.
        s.take_out_of_range();
        let mut out_of_range = None;
        s.object(|s, key| {
            if key != "properties" {
                let (text, depth) = s.value_text()?;
                deepest = deepest.max(depth);
                if let Some(number) = s.take_out_of_range() {
                    out_of_range.get_or_insert_with(|| OutOfRange::new(&key, number));
                }
                fields.push((Key(key), text));
                return Some(());
            }
            // The last `properties` wins; an earlier one's depth still counts.
            if s.peek()? == b'{' {
                let (p, depth) = EventProps::scan(s)?;
                deepest = deepest.max(depth);
                (properties, other_properties) = (Some(p), None);
            } else {
                let (text, depth) = s.value_text()?;
                deepest = deepest.max(depth);
                (properties, other_properties) = (None, Some(text.into()));
            }
            if let Some(number) = s.take_out_of_range() {
                out_of_range.get_or_insert_with(|| OutOfRange::new(&key, number));
            }
            Some(())
        })?;
        Some(IndexedEvent {
            depth: 1 + deepest,
            fields: Some(fields),
            properties,
            other_properties,
            out_of_range,
        })
    }
}

impl<'de> Deserialize<'de> for SkimmedEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SkimmedEvent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event")
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
                Entries::visit(m).map(|Entries(e)| SkimmedEvent::Object(e))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut deepest = 0;
                while let Some(item) = seq.next_element::<&'de RawValue>()? {
                    deepest = deepest.max(json_depth(item.get()));
                }
                Ok(SkimmedEvent::Other(1 + deepest))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(SkimmedEvent::Other(0))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(SkimmedEvent::Other(0))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(SkimmedEvent::Other(0))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(SkimmedEvent::Other(0))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(SkimmedEvent::Other(0))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(SkimmedEvent::Other(0))
            }
        }
        d.deserialize_any(V)
    }
}

/// One event as sent: an object's fields parsed (all but `properties`), its `properties` as
/// text; or something other than an object, which normalisation refuses.
#[derive(Clone, Debug, PartialEq)]
pub enum WireEvent {
    /// A JSON object.
    Object {
        /// Every field except `properties` (but those holding a number out of range).
        fields: Map<String, Value>,
        /// `properties` when it is an object.
        properties: Option<EventProps>,
        /// The JSON text of `properties` when it is there but not an object.
        other_properties: Option<Box<str>>,
        /// The first number in the event that no `f64` holds: normalisation rejects it.
        out_of_range: Option<OutOfRange>,
    },
    /// Not an object.
    NotAnObject,
    /// Over one of the request decoder's limits (depth, properties): refused on its own, its
    /// fields never parsed or not kept, while the rest of its batch goes on.
    OverLimit(OverLimit),
}

/// Why the request decoder refused one event of a batch: a limit that protects the daemon,
/// applied to that event alone ([`WireEvent::OverLimit`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OverLimit {
    /// Nested deeper than `--max-depth`.
    #[error("event is nested deeper than {limit} levels (--max-depth): flatten its properties")]
    TooDeep { limit: usize },
    /// More properties than `--max-properties`.
    #[error("event has {count} properties, over the limit of {limit} (--max-properties): send fewer properties per event")]
    TooManyProperties { count: usize, limit: usize },
}

impl WireEvent {
    /// Parse one event from its JSON text: checked and indexed in one pass when it is an
    /// object ([`IndexedEvent::scan`]), otherwise (or when that pass leaves it to serde_json)
    /// skimmed by serde_json, which names the error of text that is not JSON.
    pub fn from_json(text: &str) -> Result<WireEvent, serde_json::Error> {
        let mut s = Scanner::new(text);
        s.ws();
        if s.peek() == Some(b'{') {
            if let Some(event) = IndexedEvent::scan(&mut s).filter(|_| s.at_end()) {
                return WireEvent::from_indexed(event);
            }
        }
        WireEvent::from_skimmed(serde_json::from_str(text)?)
    }

    /// Parse a skimmed event's fields (all but `properties`, which are indexed).
    pub fn from_skimmed(event: SkimmedEvent<'_>) -> Result<WireEvent, serde_json::Error> {
        WireEvent::from_indexed(event.index())
    }

    /// Parse an indexed event's fields (all but `properties`, indexed already).
    pub fn from_indexed(event: IndexedEvent<'_>) -> Result<WireEvent, serde_json::Error> {
        let Some(entries) = event.fields else {
            return Ok(WireEvent::NotAnObject);
        };
        let mut fields = Map::new();
        for (Key(k), v) in entries {
            // Most fields are strings without escapes (`event`, `distinct_id`, `uuid`,
            // `timestamp`): taken as they are rather than through serde_json's parser.
            let value = match parse_value(v) {
                Some(value) => value,
                // A field holding a number out of range does not parse; its event is
                // rejected, but its other fields still name its project.
                None if event.out_of_range.is_some() => match serde_json::from_str(v) {
                    Ok(value) => value,
                    Err(_) => continue,
                },
                None => serde_json::from_str(v)?,
            };
            fields.insert(k.into_owned(), value);
        }
        Ok(WireEvent::Object {
            fields,
            properties: event.properties,
            other_properties: event.other_properties,
            out_of_range: event.out_of_range,
        })
    }

    /// An event already parsed (tests, files, the admin tools): its properties serialised.
    pub fn from_value(v: Value) -> WireEvent {
        let Value::Object(mut fields) = v else {
            return WireEvent::NotAnObject;
        };
        let props = fields.remove("properties");
        let text = props.map(|p| p.to_string());
        Self::with_properties(fields, text.as_deref())
    }

    fn with_properties(fields: Map<String, Value>, props: Option<&str>) -> WireEvent {
        let is_object = props.is_some_and(|p| p.trim_start().starts_with('{'));
        let (properties, other_properties) = match props {
            Some(p) if is_object => (EventProps::from_valid(p.trim().into()), None),
            Some(p) => (None, Some(p.trim().into())),
            None => (None, None),
        };
        WireEvent::Object {
            fields,
            properties,
            other_properties,
            // A `Value` holds no such number.
            out_of_range: None,
        }
    }

    /// The event's top-level fields, when it is an object.
    pub fn fields(&self) -> Option<&Map<String, Value>> {
        match self {
            WireEvent::Object { fields, .. } => Some(fields),
            WireEvent::NotAnObject | WireEvent::OverLimit(_) => None,
        }
    }

    /// Its `properties`, when they are an object.
    pub fn properties(&self) -> Option<&EventProps> {
        match self {
            WireEvent::Object { properties, .. } => properties.as_ref(),
            WireEvent::NotAnObject | WireEvent::OverLimit(_) => None,
        }
    }

    /// Its `properties` when they are there but not an object, as JSON text.
    pub fn other_properties(&self) -> Option<&str> {
        match self {
            WireEvent::Object {
                other_properties, ..
            } => other_properties.as_deref(),
            WireEvent::NotAnObject | WireEvent::OverLimit(_) => None,
        }
    }

    /// Set `properties[key]` (parses and rewrites the properties: for rare edits only).
    pub fn set_property(&mut self, key: &str, value: Value) {
        if let WireEvent::Object {
            properties,
            other_properties,
            ..
        } = self
        {
            let mut map = properties
                .as_ref()
                .map(EventProps::to_map)
                .unwrap_or_default();
            map.insert(key.to_string(), value);
            *properties = Some(EventProps::from_map(&map));
            *other_properties = None;
        }
    }

    /// The event as one JSON value (`null` when it is not an object).
    pub fn to_value(&self) -> Value {
        let WireEvent::Object { fields, .. } = self else {
            return Value::Null;
        };
        let mut v = fields.clone();
        if let Some(p) = self.properties() {
            v.insert("properties".into(), Value::Object(p.to_map()));
        } else if let Some(p) = self.other_properties().and_then(parse_value) {
            v.insert("properties".into(), p);
        }
        Value::Object(v)
    }

    /// Its fields, to change (none when it is not an object).
    pub fn fields_mut(&mut self) -> Option<&mut Map<String, Value>> {
        match self {
            WireEvent::Object { fields, .. } => Some(fields),
            WireEvent::NotAnObject | WireEvent::OverLimit(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn entries_keep_their_text_and_the_last_of_a_repeated_key_wins() {
        let text = r#"{"a": 1, "b\u0022q": "x\"y", "a": [1, {"c": 2}], "s": "é"}"#;
        let p = EventProps::parse(text).unwrap();
        assert_eq!(EventProps::from_valid(text.into()), Some(p.clone()));
        let got: Vec<_> = p.iter().collect();
        assert_eq!(
            got,
            vec![
                ("a", "1"),
                ("b\"q", r#""x\"y""#),
                ("a", r#"[1, {"c": 2}]"#),
                ("s", r#""é""#)
            ]
        );
        assert_eq!(p.get("a"), Some(json!([1, {"c": 2}])));
        assert_eq!(p.get("b\"q"), Some(json!("x\"y")));
        assert_eq!(p.get("missing"), None);
        assert_eq!(p.len(), 4);
        assert_eq!(
            Value::Object(p.to_map()),
            json!({"a": [1, {"c": 2}], "b\"q": "x\"y", "s": "é"})
        );
    }

    #[test]
    fn text_that_is_not_an_object_is_an_error() {
        for bad in ["[1]", "1", "\"s\"", "{", "{\"a\":}", ""] {
            assert!(EventProps::parse(bad).is_err(), "{bad}");
        }
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            prop::sample::select(vec!["", "a\"b", "\\", "}]", "é\u{1}", "\\\""])
                .prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            Just(Value::from(-1.5e300)),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-c\"\\\\ ]{0,3}", inner), 0..4)
                    .prop_map(|e| Value::Object(e.into_iter().collect())),
            ]
        })
    }

    /// The depth by the definition: 0 for a scalar, 1 + the deepest child for a container.
    fn depth_of(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
            Value::Object(m) => 1 + m.values().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    proptest! {
        /// The fast paths of [`parse_value`] read what serde_json reads (numbers of every
        /// shape, leading zeros and too many digits among them, and plain strings), and
        /// refuse what it refuses.
        #[test]
        fn parse_value_reads_as_serde_json(
            text in "-?[0-9]{1,21}(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?|0[0-9]{1,3}|\"[a-z ]{0,4}\"|[0-9]{1,25}"
        ) {
            prop_assert_eq!(parse_value(&text), serde_json::from_str::<Value>(&text).ok(), "{}", text);
        }
    }

    proptest! {
        /// On text that is not JSON the fast index and the depth scan find nonsense, but they
        /// never panic, and every lookup on what they found is safe.
        #[test]
        fn the_fast_index_never_panics_on_text_that_is_not_json(
            text in "\\{[\"{}\\[\\]:,\\\\ aé1]{0,40}",
        ) {
            let _ = json_depth(&text);
            if let Some(p) = EventProps::from_valid(text.as_str().into()) {
                for (k, v) in p.iter() {
                    let _ = (p.get_text(k), parse_value(v));
                }
                let _ = (p.get("$set"), p.to_map());
            }
        }

        /// The one-pass index finds what serde_json finds, compact or pretty, and the depth
        /// scan agrees with the definition.
        #[test]
        fn the_fast_index_and_depth_agree_with_serde_json(
            entries in prop::collection::vec(("[a-c\"\\\\$ ]{0,3}", json()), 0..6),
            pretty: bool,
        ) {
            let object = Value::Object(entries.into_iter().collect());
            let text = if pretty {
                serde_json::to_string_pretty(&object).unwrap()
            } else {
                object.to_string()
            };
            prop_assert_eq!(EventProps::from_valid(text.clone().into()), Some(EventProps::parse(&text).unwrap()));
            prop_assert_eq!(json_depth(&text), depth_of(&object));
            for v in object.as_object().unwrap().values() {
                prop_assert_eq!(json_depth(&serde_json::to_string_pretty(v).unwrap()), depth_of(v));
                prop_assert_eq!(EventProps::from_valid(v.to_string().into()).is_some(), v.is_object());
            }
        }
    }

    proptest! {
        /// An event indexed in one pass has the depth of the definition, and holds what
        /// serde_json parses from the same text, whatever its `properties` are (an object, a
        /// scalar, an array, absent, sent twice).
        #[test]
        fn an_indexed_event_has_its_depth_and_is_the_event_serde_json_parses(
            fields in prop::collection::vec(("[a-c\"\\$ ]{0,3}", json()), 0..4),
            properties in prop::collection::vec(json(), 0..3),
            pretty: bool,
        ) {
            let mut text = String::from("{");
            let mut object = Map::new();
            let props = properties.iter().map(|p| ("properties".to_string(), p.clone()));
            for (k, v) in fields.into_iter().chain(props) {
                let (k, v) = (Value::from(k), v.clone());
                let v_text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
                if text.len() > 1 {
                    text.push(',');
                }
                text.push_str(&format!("{k}: {v_text}"));
                // Every entry counts for depth, a repeated key's last value is the field.
                object.insert(k.as_str().unwrap().to_string(), v);
            }
            text.push('}');
            let skimmed: SkimmedEvent = serde_json::from_str(&text).unwrap();
            // Depth by the definition, over every entry sent (a dropped `properties` too).
            let sent: Vec<(String, Value)> = match serde_json::from_str::<SkimmedEvent>(&text).unwrap() {
                SkimmedEvent::Object(entries) => entries
                    .into_iter()
                    .map(|(Key(k), v)| (k.into_owned(), serde_json::from_str(v.get()).unwrap()))
                    .collect(),
                SkimmedEvent::Other(_) | SkimmedEvent::Indexed(_) => unreachable!("an object"),
            };
            let want_depth = 1 + sent.iter().map(|(_, v)| depth_of(v)).max().unwrap_or(0);
            let indexed = skimmed.index();
            prop_assert_eq!(indexed.depth, want_depth);
            // The one-pass scan finds the same depth and the same event, the properties'
            // text and index included.
            let scanned = IndexedEvent::scan(&mut Scanner::new(&text)).expect("scanned");
            prop_assert_eq!(scanned.depth, want_depth);
            let scanned = WireEvent::from_indexed(scanned).unwrap();
            // The same fields and properties (the properties keep the text as sent, so they
            // are compared as values).
            let got = WireEvent::from_indexed(indexed).unwrap();
            prop_assert_eq!(&scanned, &got);
            prop_assert_eq!(got.to_value(), Value::Object(object));
        }
    }

    #[test]
    fn every_looked_up_key_has_its_slot_and_lookups_take_the_last_entry() {
        for (i, k) in LOOKED_UP.iter().enumerate() {
            assert_eq!(looked_up_slot(k), Some(i));
            let text = format!(r#"{{"{k}": 1, "x": 2, "{k}": 3}}"#);
            for p in [
                EventProps::parse(&text).unwrap(),
                EventProps::from_valid(text.into()).unwrap(),
            ] {
                assert_eq!((p.get(k), p.contains_key(k)), (Some(json!(3)), true));
                assert_eq!(p.get("x"), Some(json!(2)));
            }
        }
        assert_eq!(EventProps::default().get("$set"), None);
    }

    #[test]
    fn values_parse_as_serde_json_parses_them() {
        for text in [
            r#""""#,
            r#""abc é""#,
            r#""a\"b""#,
            r#""\u00e9""#,
            "12",
            "-1.5",
            "null",
            "[]",
        ] {
            assert_eq!(parse_value(text), serde_json::from_str(text).ok(), "{text}");
        }
    }

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#""[{""#), 0);
        assert_eq!(json_depth(r#"{"a": [1, {"b": "]]\"[["}], "c": {}}"#), 3);
        assert_eq!(
            json_depth(&format!("{}{}", "[".repeat(500), "]".repeat(500))),
            500
        );
    }

    #[test]
    fn an_event_from_text_equals_the_same_event_from_a_value() {
        let v = json!({"event": "e", "distinct_id": 5, "properties": {"$os": "Linux", "n": 1}});
        let from_text = WireEvent::from_json(&v.to_string()).unwrap();
        assert_eq!(from_text, WireEvent::from_value(v));
        assert_eq!(
            WireEvent::from_json("[1,2]").unwrap(),
            WireEvent::NotAnObject
        );
        assert!(WireEvent::from_json("{\"a\":").is_err());
        let odd = WireEvent::from_json(r#"{"event": "e", "properties": [1, 2]}"#).unwrap();
        assert_eq!(odd.properties(), None);
        assert_eq!(odd.other_properties(), Some("[1, 2]"));
    }
}
