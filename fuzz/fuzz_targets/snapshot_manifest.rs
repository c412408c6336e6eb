//! Fuzz target `snapshot_manifest`: see [`idstitch_fuzz::snapshot_manifest`] for what it feeds and asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idstitch_fuzz::snapshot_manifest(data));
