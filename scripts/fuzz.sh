#!/usr/bin/env bash
# `make fuzz`: run every fuzz target (or the ones named as arguments) for FUZZ_SECONDS each
# (default 60), starting from the committed corpus. New inputs go to fuzz/target/corpus/<target>
# (not committed; see fuzz/README.md to fold them in); a crash leaves its input in
# fuzz/artifacts/<target>/ and makes this script exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(capture_decode normalize_decide log_entry snapshot_manifest)
fi

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz passes rustc flags that stable Rust only accepts in bootstrap mode.
export RUSTC_BOOTSTRAP=1
# Link the RocksDB that `make build` compiled instead of compiling it again (about 9 minutes).
for out in target/release/build/librocksdb-sys-*/out; do
  if [ -f "$out/librocksdb.a" ]; then
    export ROCKSDB_LIB_DIR="$PWD/$out" ROCKSDB_STATIC=1
    break
  fi
done

status=0
for t in "${targets[@]}"; do
  scratch="fuzz/target/corpus/$t"
  mkdir -p "$scratch"
  dict=()
  if [ -f "fuzz/dicts/$t.dict" ]; then dict=("-dict=fuzz/dicts/$t.dict"); fi
  echo "== fuzzing $t for ${seconds}s"
  if ! cargo fuzz run --sanitizer none "$t" "$scratch" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}"; then
    echo "== $t crashed: the input is in fuzz/artifacts/$t/" >&2
    status=1
  fi
done
exit $status
