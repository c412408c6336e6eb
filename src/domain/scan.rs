//! One validating pass over JSON text: the capture path's fast way to check a body and find
//! its parts at once.
//!
//! serde_json's skim of a body checks it and hands back each value's text; the properties
//! were then walked a second time to index them ([`super::wire`]). This scanner checks the
//! grammar of RFC 8259 exactly as strictly as serde_json does (strings: no control
//! characters, only its escapes, any four hex digits after `\u`; numbers: no leading zero, a
//! digit after `-`, `.` and the exponent; whitespace: space, tab, LF, CR) while the callers
//! index what they need in the same pass.
//!
//! It is a fast path, not the judge: every `None` means "not here", and the caller goes back
//! to serde_json, which either accepts the text (something this scanner leaves to it: a key
//! whose escapes do not decode, nesting deeper than [`MAX_DEPTH`], an unusual shape) or names
//! the error. So this scanner must never accept text serde_json refuses; refusing text
//! serde_json accepts only costs time. The tests hold it to that.

use std::borrow::Cow;

use super::swar;

/// Deeper nesting is left to serde_json (the depth is counted in a 64-bit stack).
pub const MAX_DEPTH: usize = 64;

/// A position in JSON text, moving forward as values are checked.
///
/// It also notes the first number it passes that no `f64` holds (`1e400`, an integer of 400
/// digits): valid JSON, but serde_json refuses to read it into a value, so text holding one
/// can be checked and stored but never read back. The callers take it
/// ([`Scanner::take_out_of_range`]) and reject what holds it.
#[derive(Clone, Debug)]
pub struct Scanner<'a> {
    text: &'a str,
    i: usize,
    /// The span of the first number out of range since the last take.
    out_of_range: Option<(usize, usize)>,
}

/// Whether the JSON number `token` is out of `f64`'s range: serde_json (the parser that reads
/// stored text back) refuses it. Its judgement, not a second one that might round otherwise
/// at the edge (`1.7976931348623158e308` is `f64::MAX`, `1.7976931348623159e308` is not).
pub fn out_of_range(token: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(token).is_err()
}

/// The first number out of `f64`'s range in `text`, valid JSON: what a [`Scanner`] notes
/// while it checks the same text, found at any depth. For text that was checked already
/// (serde_json's skim).
pub fn first_out_of_range(text: &str) -> Option<&str> {
    numbers_out_of_range(text).next()
}

/// The first number out of `f64`'s range in `text`, if `text` is JSON (serde_json checks it
/// first): why serde_json cannot read as a value text that is still JSON.
pub fn out_of_range_in_json(text: &str) -> Option<&str> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
    first_out_of_range(text)
}

/// Every number out of `f64`'s range in `text`, valid JSON, in order (see
/// [`first_out_of_range`]).
pub fn numbers_out_of_range(text: &str) -> impl Iterator<Item = &str> + '_ {
    let mut s = Scanner::new(text);
    std::iter::from_fn(move || loop {
        match s.peek()? {
            b'"' => {
                s.string()?;
            }
            b'-' | b'0'..=b'9' => {
                s.number()?;
                if let Some(number) = s.take_out_of_range() {
                    return Some(number);
                }
            }
            // Brackets, separators, whitespace, the letters of `true`, `false` and `null`.
            _ => s.i += 1,
        }
    })
}

/// `text`, valid JSON, with each number out of `f64`'s range written `null`, as JavaScript's
/// `JSON.stringify` writes the `Infinity` that `JSON.parse` reads for one; `None` when it
/// holds none.
pub fn out_of_range_as_null(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut from = None;
    for number in numbers_out_of_range(text) {
        // `number` is a slice of `text`.
        let at = number.as_ptr() as usize - text.as_ptr() as usize;
        out.push_str(&text[from.unwrap_or(0)..at]);
        out.push_str("null");
        from = Some(at + number.len());
    }
    out.push_str(&text[from?..]);
    Some(out)
}

impl<'a> Scanner<'a> {
    /// At the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Scanner {
            text,
            i: 0,
            out_of_range: None,
        }
    }

    /// The first number out of `f64`'s range the scanner has passed since the last call, if
    /// any (see [`Scanner`]).
    #[inline]
    pub fn take_out_of_range(&mut self) -> Option<&'a str> {
        let (a, b) = self.out_of_range.take()?;
        Some(&self.text[a..b])
    }

    /// The text scanned.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The current position, a byte offset.
    pub fn pos(&self) -> usize {
        self.i
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Past JSON's whitespace (space, tab, LF, CR; serde_json's set, not Rust's).
    #[inline]
    pub fn ws(&mut self) {
        let b = self.bytes();
        // Compact JSON has none, and JSON's whitespace is all at or below a space: one
        // compare settles most calls.
        if b.get(self.i).is_some_and(|&c| c > b' ') {
            return;
        }
        let mut i = self.i;
        while matches!(b.get(i), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            i += 1;
        }
        self.i = i;
    }

    /// The byte at the position.
    #[inline]
    pub fn peek(&self) -> Option<u8> {
        self.bytes().get(self.i).copied()
    }

    /// Past `c` when it is the byte at the position.
    #[inline]
    pub fn eat(&mut self, c: u8) -> bool {
        let here = self.peek() == Some(c);
        self.i += usize::from(here);
        here
    }

    /// Whether only whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.ws();
        self.i == self.text.len()
    }

    /// Past the string that opens at the position (which must be `"`), checked; its span
    /// without the quotes and whether it holds an escape.
    #[inline(always)]
    pub fn string(&mut self) -> Option<(usize, usize, bool)> {
        let b = self.bytes();
        let open = self.i;
        debug_assert_eq!(b.get(open), Some(&b'"'));
        let (mut i, mut escaped) = (open + 1, false);
        loop {
            while let Some(chunk) = b.get(i..i + 8) {
                let w = u64::from_le_bytes(chunk.try_into().ok()?);
                let found = swar::quotes_or_backslashes(w) | swar::control_bytes(w);
                if found != 0 {
                    i += swar::first(found);
                    break;
                }
                i += 8;
            }
            match *b.get(i)? {
                b'"' => {
                    self.i = i + 1;
                    return Some((open + 1, i, escaped));
                }
                b'\\' => {
                    escaped = true;
                    i += match *b.get(i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
                        _ => return None,
                    };
                }
                0..=0x1f => return None,
                _ => i += 1,
            }
        }
    }

    /// The key whose span [`Scanner::string`] found: borrowed when it has no escapes,
    /// unescaped by serde_json when it has (`None` when they do not decode, as a lone
    /// surrogate does not: serde_json refuses such a key, or takes it its own way).
    #[inline]
    pub fn unescape(&self, (start, end, escaped): (usize, usize, bool)) -> Option<Cow<'a, str>> {
        let text = self.text;
        Some(match escaped {
            false => Cow::Borrowed(&text[start..end]),
            true => Cow::Owned(serde_json::from_str(&text[start - 1..end + 1]).ok()?),
        })
    }

    /// After a key: whitespace, the colon, whitespace.
    #[inline]
    pub fn colon(&mut self) -> Option<()> {
        self.ws();
        self.eat(b':').then_some(())?;
        self.ws();
        Some(())
    }

    /// After an entry or item: whitespace, then `,` (true, whitespace skipped after it) or
    /// `close` (false, consumed).
    #[inline]
    pub fn next_or_close(&mut self, close: u8) -> Option<bool> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.i += 1;
                self.ws();
                Some(true)
            }
            c if c == close => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// Past the value that starts at the position (no whitespace before it), checked; its
    /// nesting depth (0 for a scalar, 1 + the deepest child for a container).
    #[inline]
    pub fn value(&mut self) -> Option<usize> {
        match self.peek()? {
            b'"' => self.string().map(|_| 0),
            b'-' | b'0'..=b'9' => self.number().map(|_| 0),
            b'{' | b'[' => self.container(),
            _ => self.literal().map(|_| 0),
        }
    }

    /// [`Scanner::value`], and the value's JSON text.
    #[inline]
    pub fn value_text(&mut self) -> Option<(&'a str, usize)> {
        let start = self.i;
        let depth = self.value()?;
        Some((&self.text[start..self.i], depth))
    }

    fn literal(&mut self) -> Option<()> {
        let rest = &self.bytes()[self.i..];
        let len = [&b"true"[..], b"false", b"null"]
            .into_iter()
            .find(|l| rest.starts_with(l))?
            .len();
        self.i += len;
        Some(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`; a number that may be out of
    /// `f64`'s range is judged ([`Scanner::judge_range`]), the others are not.
    #[inline]
    fn number(&mut self) -> Option<()> {
        let b = self.bytes();
        let digits = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let start = self.i;
        let int = start + usize::from(b.get(start) == Some(&b'-'));
        let mut i = match *b.get(int)? {
            b'0' => int + 1,
            b'1'..=b'9' => digits(int + 1),
            _ => return None,
        };
        let int_digits = i - int;
        if b.get(i) == Some(&b'.') {
            let end = digits(i + 1);
            (end > i + 1).then_some(())?;
            i = end;
        }
        let mut exp_digits = 0;
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1 + usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
            let end = digits(i);
            exp_digits = end - i;
            (exp_digits > 0).then_some(())?;
            i = end;
        }
        self.i = i;
        // Below 10^300 without an exponent, below 10^200 * 10^99 with one of two digits: far
        // inside the range (f64::MAX is 1.8e308). Only other numbers are judged.
        if int_digits > 300 || exp_digits > 2 || (exp_digits > 0 && int_digits > 200) {
            self.judge_range(start, i);
        }
        Some(())
    }

    /// Notes the number at `start..end` when it is out of `f64`'s range and none was noted.
    #[cold]
    #[inline(never)]
    fn judge_range(&mut self, start: usize, end: usize) {
        if self.out_of_range.is_none() && out_of_range(&self.text[start..end]) {
            self.out_of_range = Some((start, end));
        }
    }

    /// An object or array, without recursion: which of them encloses the position is one
    /// bit per level (1 for an object), so nesting past [`MAX_DEPTH`] is left to serde_json.
    fn container(&mut self) -> Option<usize> {
        let (mut objects, mut depth, mut deepest) = (0u64, 0usize, 0usize);
        // At a value's first byte.
        'value: loop {
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    deepest = deepest.max(depth);
                    let is_object = open == b'{';
                    objects = (objects << 1) | u64::from(is_object);
                    self.i += 1;
                    self.ws();
                    let close = if is_object { b'}' } else { b']' };
                    if !self.eat(close) {
                        if is_object {
                            self.object_key()?;
                        }
                        continue 'value;
                    }
                    objects >>= 1;
                    depth -= 1;
                }
                b'"' => {
                    self.string()?;
                }
                b'-' | b'0'..=b'9' => self.number()?,
                _ => self.literal()?,
            }
            // After a value: the next entry or item, or the end of containers.
            while depth > 0 {
                let in_object = objects & 1 == 1;
                match self.next_or_close(if in_object { b'}' } else { b']' })? {
                    true => {
                        if in_object {
                            self.object_key()?;
                        }
                        continue 'value;
                    }
                    false => {
                        objects >>= 1;
                        depth -= 1;
                    }
                }
            }
            return Some(deepest);
        }
    }

    /// A key inside a value (not indexed: checked as any string is) and its colon.
    fn object_key(&mut self) -> Option<()> {
        (self.peek()? == b'"').then_some(())?;
        self.string()?;
        self.colon()
    }

    /// Past the object that opens at the position (which must be `{`), calling `entry`
    /// for each key with the scanner at the start of its value; `entry` must scan that
    /// value.
    pub fn object(
        &mut self,
        mut entry: impl FnMut(&mut Self, Cow<'a, str>) -> Option<()>,
    ) -> Option<()> {
        self.object_spans(|s, span| {
            let key = s.unescape(span)?;
            entry(s, key)
        })
    }

    /// [`Scanner::object`], each key given as [`Scanner::string`] finds it (its span and
    /// whether it holds escapes) for `entry` to unescape or not.
    #[inline]
    pub fn object_spans(
        &mut self,
        mut entry: impl FnMut(&mut Self, (usize, usize, bool)) -> Option<()>,
    ) -> Option<()> {
        debug_assert_eq!(self.peek(), Some(b'{'));
        self.items(b'}', |s| {
            (s.peek()? == b'"').then_some(())?;
            let key = s.string()?;
            s.colon()?;
            entry(s, key)
        })
    }

    /// Past the array that opens at the position (which must be `[`), calling `item` with the
    /// scanner at the start of each item; `item` must scan it.
    pub fn array(&mut self, item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        debug_assert_eq!(self.peek(), Some(b'['));
        self.items(b']', item)
    }

    /// Past the opening bracket, then `item` for each entry or item, separated by commas,
    /// until `close`.
    #[inline]
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.i += 1;
        self.ws();
        if self.eat(close) {
            return Some(());
        }
        loop {
            item(self)?;
            if !self.next_or_close(close)? {
                return Some(());
            }
        }
    }
}

/// What the scanner's tests and the capture decoder's share: random JSON, and edits that
/// break it.
#[cfg(test)]
pub(crate) mod testing {
    use proptest::prelude::*;
    use serde_json::Value;

    /// Bytes that change what JSON means where they land.
    const SHARP: &[u8] = b"\"\\{}[],: \t\n0-.eE+ux1tfn\x01\x1f/";

    /// A JSON value up to `depth` levels deep, its strings and keys (matching `keys`) full of
    /// what needs escaping.
    pub(crate) fn json_value(keys: &'static str, depth: u32) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            prop::sample::select(vec![
                "", "a\"b", "\\", "}]", "é\u{1}", "\\\"", "\u{7f}/", "$direct"
            ])
            .prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
        ];
        leaf.prop_recursive(depth, 32, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((keys, inner), 0..5)
                    .prop_map(|e| Value::Object(e.into_iter().collect())),
            ]
        })
    }

    /// Up to two edits: where, which of [`SHARP`], and how (set, insert, remove).
    pub(crate) type Edits = Vec<(prop::sample::Index, usize, u8)>;

    pub(crate) fn edits() -> impl Strategy<Value = Edits> {
        prop::collection::vec((any::<prop::sample::Index>(), 0..SHARP.len(), 0..3u8), 0..3)
    }

    /// `bytes` with `edits` made.
    pub(crate) fn edited(mut bytes: Vec<u8>, edits: Edits) -> Vec<u8> {
        for (at, c, how) in edits {
            let at = at.index(bytes.len() + 1);
            match how {
                0 if at < bytes.len() => bytes[at] = SHARP[c],
                1 => bytes.insert(at, SHARP[c]),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{edited, edits, json_value};
    use super::*;
    use proptest::prelude::*;

    /// Whether `text` is one JSON value, checked by the scanner (`false` also for what it
    /// leaves to serde_json).
    fn is_json(text: &str) -> bool {
        let mut s = Scanner::new(text);
        s.ws();
        s.value().is_some() && s.at_end()
    }

    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    }

    #[test]
    fn the_grammar_edges_are_serde_jsons() {
        for ok in [
            "0",
            "-0",
            "1.5",
            "-1.5e+10",
            "1E-2",
            "12e5",
            "\"\"",
            "\"\\u00e9\\ud800\"",
            "true",
            "false",
            "null",
            "[]",
            "{}",
            " [1, {\"a\": [null]}] ",
            "\"\u{7f}é\"",
            "\t\r\n1",
            "{\"a\\n\":1}",
        ] {
            assert!(serde_accepts(ok), "{ok}");
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "--1",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"\u{1}\"",
            "\"a",
            "tru",
            "nul",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "[1 2]",
            "1 2",
            "",
            "\u{c}1",
            "[",
            "{",
            "{\"a\":}",
            "NaN",
            "\"\\\"",
        ] {
            assert!(!serde_accepts(bad), "{bad}");
            assert!(!is_json(bad), "{bad}");
        }
    }

    #[test]
    fn depth_is_counted_and_deep_nesting_is_left_to_serde_json() {
        let mut s = Scanner::new(r#"{"a": [1, {"b": "]]\"[["}], "c": {}}"#);
        assert_eq!(s.value(), Some(3));
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(Scanner::new(&deep(MAX_DEPTH)).value(), Some(MAX_DEPTH));
        assert_eq!(Scanner::new(&deep(MAX_DEPTH + 1)).value(), None);
        assert!(serde_accepts(&deep(MAX_DEPTH + 1)));
    }

    /// The first number out of range that a scan passed, and what [`first_out_of_range`]
    /// finds in the same text.
    fn noted(text: &str) -> (Option<&str>, Option<&str>) {
        let mut s = Scanner::new(text);
        assert!(s.value().is_some() && s.at_end(), "{text}");
        (s.take_out_of_range(), first_out_of_range(text))
    }

    #[test]
    fn numbers_out_of_f64s_range_are_noted_wherever_they_are() {
        let digits = |n: usize| format!("1{}", "0".repeat(n - 1));
        let (big, minus_big) = (digits(400), format!("-{}", digits(400)));
        for number in [
            "1e400",
            "-1e400",
            "1E+999",
            "2e308",
            "1e0400",
            "1e99999999999999999999",
            &big,
            &minus_big,
        ] {
            for text in [
                number.to_string(),
                format!("[1, \"1e400\", {{\"a\": [true, {number}]}}]"),
                format!("{{\"$set\": {{\"x\": {number}}}, \"y\": 1e999}}"),
            ] {
                assert_eq!(noted(&text), (Some(number), Some(number)), "{text}");
                assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
            }
        }
        // Only the first is noted, and taking it clears it.
        let mut s = Scanner::new("[1e400, 2e400]");
        s.value().unwrap();
        assert_eq!(s.take_out_of_range(), Some("1e400"));
        assert_eq!(s.take_out_of_range(), None);
        // The edges of the range, and numbers only a judge would tell from those above.
        let (max_digits, below) = (digits(308), format!("{}e99", digits(200)));
        for number in [
            "1.7976931348623157e308",
            "-1.7976931348623157e308",
            "1.7976931348623158e308",
            "1e308",
            "1e-400",
            "0e999",
            "-0.0e+99999",
            "1.5e-7",
            &max_digits,
            &below,
        ] {
            let text = format!("{{\"a\": [{number}]}}");
            assert_eq!(noted(&text), (None, None), "{text}");
            assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
        }
    }

    /// A number token: sign, up to 320 integer digits, a fraction, an exponent of up to four
    /// digits.
    fn number_token() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            "[1-9][0-9]{0,319}|0",
            proptest::option::of("[0-9]{1,20}"),
            proptest::option::of(("[eE]", "[+-]?", "[0-9]{1,4}")),
        )
            .prop_map(|(minus, int, frac, exp)| {
                let mut t = format!("{}{int}", if minus { "-" } else { "" });
                if let Some(frac) = frac {
                    t = format!("{t}.{frac}");
                }
                if let Some((e, sign, digits)) = exp {
                    t = format!("{t}{e}{sign}{digits}");
                }
                t
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// The numbers the scanner does not judge are all in range: a number is noted
        /// exactly when serde_json refuses to read it.
        #[test]
        fn a_number_is_noted_exactly_when_serde_json_refuses_it(token in number_token()) {
            let refused = serde_json::from_str::<serde_json::Value>(&token).is_err();
            let want = refused.then_some(token.as_str());
            prop_assert_eq!(noted(&token), (want, want));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// Never accepts what serde_json refuses: valid JSON (compact or pretty) with bytes
        /// set, inserted or removed anywhere; and accepts what serde_json writes.
        #[test]
        fn it_accepts_only_what_serde_json_accepts(
            v in json_value("[a-c\"\\\\ é]{0,3}", 5),
            pretty: bool,
            edits in edits(),
        ) {
            let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
            prop_assert!(is_json(&text), "{}", text);
            let bytes = edited(text.into_bytes(), edits);
            if let Ok(text) = std::str::from_utf8(&bytes) {
                if is_json(text) {
                    prop_assert!(serde_accepts(text), "accepted what serde_json refuses: {}", text);
                }
            }
        }

        /// Any short text of JSON's punctuation and a few letters: the scanner accepts it
        /// only when serde_json does.
        #[test]
        fn short_text_of_json_bytes_is_judged_as_serde_json_judges_it(
            text in "[\"\\\\{}\\[\\],: 0-9.eE+\\-utrfalsn\u{1}]{0,12}",
        ) {
            prop_assert_eq!(is_json(&text) && !serde_accepts(&text), false, "{}", text);
        }
    }
}
