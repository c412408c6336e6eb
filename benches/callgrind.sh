#!/usr/bin/env bash
# Count the instructions a daemon build executes per event under the load generator's workload.
#
#   benches/callgrind.sh BIN [EVENTS] [-- LOAD_ARGS...]
#
# Starts BIN under callgrind (valgrind's instruction counter) through the load generator, which
# sends EVENTS events (default 20,000) open loop at 250 events/s on one connection: slow enough
# for a daemon under valgrind (~50x slower) to keep up, so that its groups stay near the
# ~90 entries of an unloaded daemon and two runs of one build count within ~1% of each other.
# Prints instructions per event in all and for the parts that matter (the HTTP workers' decode
# and normalise, the router's decide, the log writer, RocksDB's flushes), and keeps the
# callgrind file in target/callgrind/ for `callgrind_annotate --inclusive=yes`.
#
# Timings on these VMs move by 2x within minutes; instruction counts do not. Compare two builds
# with two runs of this script (they can run at once: valgrind runs a process on one core).
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "$1")
shift
EVENTS=20000
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  EVENTS=$1
  shift
fi
[ "${1:-}" = "--" ] && shift
[ -x "$BIN" ] || { echo "callgrind.sh: $BIN is not an executable daemon binary" >&2; exit 2; }

cd "$ROOT"
LOAD=$(benches/load-bin.sh 2>/dev/null)
OUT=$ROOT/target/callgrind
mkdir -p "$OUT"
TAG=$(basename "$BIN")-$$
WRAP=$OUT/$TAG.sh
printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/%s.%%p %s "$@"\n' "$OUT" "$TAG" "$BIN" >"$WRAP"
chmod +x "$WRAP"
echo "== $BIN under callgrind, $EVENTS events at 250/s (~$((EVENTS / 250 + 30)) s)"
"$LOAD" --bin "$WRAP" --events "$EVENTS" --rate 250 --connections 1 --no-check --no-baseline \
  --progress 0 --startup-timeout 600 --report "$OUT/$TAG.json" "$@" >"$OUT/$TAG.log" 2>&1 ||
  { echo "callgrind.sh: the load run failed: see $OUT/$TAG.log" >&2; exit 1; }
rm -f "$WRAP"
grep -E "group commit" "$OUT/$TAG.log" | sed 's/^ */  /'
PROFILE=$(ls -S "$OUT/$TAG".[0-9]* | head -1)
callgrind_annotate --inclusive=yes "$PROFILE" 2>/dev/null | python3 -c '
import re, sys, json
events = json.load(open(sys.argv[1]))["events"]
parts = [
    ("the whole daemon", r"PROGRAM TOTALS"),
    ("HTTP: decode_capture", r"api::decode::decode_capture \["),
    ("HTTP: normalise (ingest)", r"api::capture::ingest::\{\{closure\}\} \["),
    ("router: process", r"actors::router::process::\{\{closure\}\} \["),
    ("log writer", r"actors::writer::run \["),
    ("  of it memtable inserts", r"rocksdb::MemTable::Add\("),
    ("RocksDB flushes", r"rocksdb::BuildTable\("),
    ("  of it LZ4", r"LZ4_compress_fast_extState"),
]
counts = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+)\s", line)
    if not m:
        continue
    for name, pat in parts:
        if name not in counts and re.search(pat, line):
            counts[name] = int(m.group(1).replace(",", ""))
print(f"  instructions per event ({events} events):")
for name, _ in parts:
    if name in counts:
        print(f"  {name:<28} {counts[name] / events / 1000:8.1f}k")
' "$OUT/$TAG.json"
echo "  profile: $PROFILE"
