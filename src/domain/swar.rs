//! Eight bytes at a time (SWAR): which bytes of a little-endian word are a quote, a backslash
//! or a control character. The JSON scanners (`wire`) and writers (`json_out`) use it to skip
//! the plain runs of a string, which are most of its bytes and mostly too short to repay a
//! vector search's setup.

const ONES: u64 = u64::from_le_bytes([1; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// The high bit of each byte of `x` that is zero. The lowest flagged byte is exact; a higher
/// one may be a false flag, but only after a true one (the borrow of a zero byte runs up).
#[inline]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Flags for the bytes of `w` that are `"` or `\`.
#[inline]
pub fn quotes_or_backslashes(w: u64) -> u64 {
    zero_bytes(w ^ (ONES * u64::from(b'"'))) | zero_bytes(w ^ (ONES * u64::from(b'\\')))
}

/// Flags for the bytes of `w` below 0x20: subtracting 0x20 sets the high bit of such a byte,
/// whose high bit was clear (the same exactness as [`zero_bytes`]).
#[inline]
pub fn control_bytes(w: u64) -> u64 {
    w.wrapping_sub(ONES * 0x20) & !w & HIGHS
}

/// The index in the word of the first flagged byte (little-endian puts the first byte
/// lowest); `flags` must not be zero.
#[inline]
pub fn first(flags: u64) -> usize {
    (flags.trailing_zeros() / 8) as usize
}
