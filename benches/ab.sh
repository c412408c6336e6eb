#!/usr/bin/env bash
# Compare two daemon builds under the same load, alternated, on a noisy machine.
#
#   benches/ab.sh BIN_A BIN_B [PAIRS] [-- LOAD_ARGS...]
#
# Runs the load generator (closed loop, 200,000 events, no raw baseline, unless LOAD_ARGS say
# otherwise) PAIRS times (default 5) against BIN_A and then BIN_B, each on a fresh data dir, so
# that a slow stretch of the host hits both builds alike. Prints each run, then per build the
# median and range of events/s, of the daemon's CPU µs per event and of each thread kind's
# (the load generator's "daemon CPU by thread"). The reports are kept in target/ab/.
#
# On the 2-vCPU VMs of benches/README.md the same binary varies by ±15% from run to run:
# believe a difference only when the two ranges do not overlap, or with more pairs.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
A=$(realpath "$1")
B=$(realpath "$2")
shift 2
PAIRS=5
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  PAIRS=$1
  shift
fi
[ "${1:-}" = "--" ] && shift
for bin in "$A" "$B"; do
  [ -x "$bin" ] || { echo "ab.sh: $bin is not an executable daemon binary" >&2; exit 2; }
done

cd "$ROOT"
echo "== building the load generator"
LOAD=$(benches/load-bin.sh)
OUT=$ROOT/target/ab
mkdir -p "$OUT"
# Only this run's reports and logs: a longer earlier run's would be read as this one's.
rm -f "$OUT"/*.json "$OUT"/*.log
echo "== $PAIRS pairs: A=$A B=$B; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$PAIRS"); do
  for side in A B; do
    bin=$A
    [ "$side" = B ] && bin=$B
    report=$OUT/$side-$i.json
    if ! "$LOAD" --bin "$bin" --quick --no-baseline --progress 0 --report "$report" "$@" >"$OUT/$side-$i.log" 2>&1; then
      echo "run $i of $side failed: see $OUT/$side-$i.log" >&2
      exit 1
    fi
    python3 - "$report" "$side" "$i" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); p = r.get("process") or {}
per = lambda s: s * 1e6 / r["events"]
print(f'{sys.argv[2]} {sys.argv[3]}: {r["events_per_s"]:8.0f} events/s, p99 {r["latency"]["p99_ms"]:6.2f} ms, '
      f'daemon {per(p.get("cpu_s_during_load", 0)):5.1f} µs/event')
PY
  done
done

python3 - "$OUT" "$PAIRS" <<'PY'
import json, statistics, sys
out, pairs = sys.argv[1], int(sys.argv[2])
def row(name, xs, fmt):
    xs = sorted(xs)
    return f'  {name:<22} median {fmt.format(statistics.median(xs))}, range {fmt.format(xs[0])}-{fmt.format(xs[-1])}'
for side in "AB":
    rs = [json.load(open(f'{out}/{side}-{i}.json')) for i in range(1, pairs + 1)]
    print(f'== {side}: {rs[0]["options"]["bin"]}')
    print(row("events/s", [r["events_per_s"] for r in rs], "{:.0f}"))
    print(row("ack p99 (ms)", [r["latency"]["p99_ms"] for r in rs], "{:.2f}"))
    procs = [r["process"] for r in rs if r.get("process")]
    if not procs:
        continue
    per = lambda r, s: s * 1e6 / r["events"]
    print(row("daemon µs/event", [per(r, r["process"]["cpu_s_during_load"]) for r in rs], "{:.1f}"))
    kinds = sorted({t["thread"] for r in rs for t in r["process"]["cpu_by_thread_during_load"]})
    for k in kinds:
        xs = [per(r, sum(t["cpu_s"] for t in r["process"]["cpu_by_thread_during_load"] if t["thread"] == k)) for r in rs]
        print(row(f'  {k}', xs, "{:.1f}"))
PY
