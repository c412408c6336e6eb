//! Fuzz target `log_entry`: see [`idstitch_fuzz::log_entry`] for what it feeds and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idstitch_fuzz::log_entry(data));
