//! Fuzz target `normalize_decide`: see [`idstitch_fuzz::normalize_decide`] for what it feeds and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idstitch_fuzz::normalize_decide(data));
