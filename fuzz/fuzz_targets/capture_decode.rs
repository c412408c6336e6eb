//! Fuzz target `capture_decode`: see [`idstitch_fuzz::capture_decode`] for what it feeds and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idstitch_fuzz::capture_decode(data));
