//! The on-disk encoding of log entries and records: one format byte, then `bincode` (v1, fixed
//! little-endian integers, variants by position).

use serde::{de::DeserializeOwned, Serialize};

use crate::domain::Entry;

/// Format of log envelopes. Bump it (with a fixture) for any change that is not an append of a
/// new enum variant.
pub const FORMAT_VERSION: u8 = 1;

/// Format of derived state (everything but `log`); a mismatch rebuilds it from the log.
pub const DERIVED_FORMAT: u64 = 2;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The record is empty.
    #[error("record is empty")]
    Empty,
    /// Written by a format this build does not know.
    #[error("record has format version {0}, this build reads {FORMAT_VERSION}: upgrade idstitch")]
    UnknownVersion(u8),
    /// The bytes do not decode.
    #[error("record does not decode: {0}")]
    Bincode(#[from] bincode::Error),
}

/// Encode any record with the format byte in front.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, value);
    out
}

/// [`encode`], appending to `out` (a buffer reused across many records).
pub fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    out.push(FORMAT_VERSION);
    // Serialising our own types into a Vec cannot fail: no maps with non-string keys, no I/O.
    bincode::serialize_into(&mut *out, value).unwrap_or_default();
}

/// Decode a record written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    Ok(bincode::deserialize(body)?)
}

/// Encode a log entry.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    encode(entry)
}

/// Decode a log entry.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, CodecError> {
    decode(bytes)
}

/// A log entry as a replay into scratch state needs it: every change but the stored events,
/// which are only counted. An event's body (its properties are most of a log's bytes) is
/// checked as [`decode_entry`] would check it (lengths, UTF-8, the flag byte) but not copied.
#[derive(Debug, PartialEq)]
pub struct Skimmed {
    /// The entry without its `EventStored` changes.
    pub entry: Entry,
    /// How many `EventStored` changes it had.
    pub events: u32,
}

/// The position of `Change::EventStored` among `Change`'s variants (bincode stores it as u32).
const EVENT_STORED_TAG: u32 = 8;

/// Decode a log entry without copying the bodies of the events it stored; see [`Skimmed`].
pub fn skim_entry(bytes: &[u8]) -> Result<Skimmed, CodecError> {
    use serde::Deserialize;

    /// `StoredEvent`'s fields, in order, borrowed from the record (`skim_agrees_with_decode`
    /// in the tests keeps the two in step).
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct EventBody<'a>(Option<&'a str>, &'a str, &'a str, &'a str, i64, bool);

    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let mut rest = body;
    let (project, at_ms, cause, n): (crate::domain::ProjectId, i64, Option<String>, u64) =
        read(&mut rest)?;
    let mut skimmed = Skimmed {
        entry: Entry {
            project,
            at_ms,
            cause,
            changes: Vec::new(),
        },
        events: 0,
    };
    for _ in 0..n {
        match rest
            .get(..4)
            .map(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]))
        {
            Some(EVENT_STORED_TAG) => {
                let _: (u32, EventBody<'_>) = read(&mut rest)?;
                skimmed.events += 1;
            }
            _ => skimmed.entry.changes.push(read(&mut rest)?),
        }
    }
    Ok(skimmed)
}

/// Deserialise one value from the front of `rest` (with [`decode`]'s options), leaving `rest`
/// after it. Strings are borrowed from the record, as `bincode::deserialize` borrows them.
fn read<'de, T: serde::Deserialize<'de>>(rest: &mut &'de [u8]) -> Result<T, CodecError> {
    use bincode::Options;
    let options = bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes();
    let mut de = bincode::Deserializer::with_bincode_read(Front(rest), options);
    Ok(T::deserialize(&mut de)?)
}

/// A `bincode` reader over a slice that leaves the slice at what it has not read.
struct Front<'a, 'de>(&'a mut &'de [u8]);

impl Front<'_, '_> {
    fn take<'de>(slice: &mut &'de [u8], n: usize) -> bincode::Result<&'de [u8]> {
        if n > slice.len() {
            return Err(Box::new(bincode::ErrorKind::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            )));
        }
        let (front, back) = slice.split_at(n);
        *slice = back;
        Ok(front)
    }
}

impl std::io::Read for Front<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.read_exact(out).map(|()| out.len())
    }

    fn read_exact(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        let front =
            Front::take(self.0, out.len()).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        out.copy_from_slice(front);
        Ok(())
    }
}

impl<'de> bincode::BincodeRead<'de> for Front<'_, 'de> {
    fn forward_read_str<V: serde::de::Visitor<'de>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        let bytes = Front::take(self.0, length)?;
        // SIMD validation (an event's properties are most of a record's bytes); only a
        // failure asks std for its error.
        let s = match simdutf8::basic::from_utf8(bytes) {
            Ok(s) => s,
            Err(_) => std::str::from_utf8(bytes)
                .map_err(|e| Box::new(bincode::ErrorKind::InvalidUtf8Encoding(e)))?,
        };
        visitor.visit_borrowed_str(s)
    }

    fn get_byte_buffer(&mut self, length: usize) -> bincode::Result<Vec<u8>> {
        Front::take(self.0, length).map(<[u8]>::to_vec)
    }

    fn forward_read_bytes<V: serde::de::Visitor<'de>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        visitor.visit_borrowed_bytes(Front::take(self.0, length)?)
    }
}
