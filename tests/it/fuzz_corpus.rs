//! The committed fuzz corpus (`fuzz/corpus/<target>/`), replayed without a fuzzer through the
//! very harnesses the fuzz targets run (`fuzz/src/lib.rs`): no input may panic. Errors are fine.
//! Run the fuzzers themselves with `make fuzz` (see fuzz/README.md).

#[path = "../../fuzz/src/lib.rs"]
mod harness;

use std::path::Path;

#[test]
fn every_committed_fuzz_input_runs_through_its_target_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut panics = Vec::new();
    for (target, run) in harness::TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no corpus for {target}");
        for input in inputs {
            let data = std::fs::read(&input).expect("read a corpus file");
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                panics.push(input.display().to_string());
            }
        }
    }
    assert!(panics.is_empty(), "these inputs panic: {panics:#?}");
}

/// Crash found by `normalize_decide` (artifact crash-a2f96365002eb671e33b803f6e25f7c8de20db9e).
/// A float property changes when the log re-reads it: `184467440737072036854775` is decided as
/// 1.844674407370721e23, written to the log as that text, and read back as
/// 1.8446744073707206e23, one ulp away. serde_json was built without its `float_roundtrip`
/// feature, so its float parser was not correctly rounded, and the shortest text `ryu` writes
/// for a value did not always parse back to it. The person held in memory then differed from
/// the one on disk (after a restart or an eviction, re-sending the same value is a change).
/// Fixed by enabling `serde_json/float_roundtrip` in Cargo.toml: parsing is now exact, so the
/// value read back from the log is the value that was accepted.
#[test]
fn fuzz_crash_a_float_property_drifts_through_the_log_codec() {
    harness::normalize_decide(
        br#"{"event":"e","distinct_id":"n","$set":{"a":184467440737072036854775,"c":1.79769354775,"c":1.7976931348623157e+308,"d":5e-3222222222222222224,"e":-0.0}}"#,
    );
}

/// The smallest form of the crash above: one float property.
#[test]
fn fuzz_crash_reduced_one_float_is_enough() {
    harness::normalize_decide(
        br#"{"event":"e","distinct_id":"n","$set":{"a":184467440737072036854775}}"#,
    );
}
