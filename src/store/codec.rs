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
