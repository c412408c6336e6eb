#!/usr/bin/env bash
# Scale (issue 6): PERSONS persons with two distinct IDs each, then the daemon's RSS and the
# time a restart takes to be ready again.
#
#   benches/scale.sh                    # 10,000,000 persons, 20,000,000 distinct IDs
#   PERSONS=1000000 benches/scale.sh
#
# Each person is one `$identify` of a new user ID with a new anonymous ID (one event creates
# one identified person with both IDs), sent with `idstitch ingest --batch-size 1000` to a
# daemon (target/release/idstitch, or $IDSTITCH_BIN) on a temporary data dir. Prints the
# ingest rate, the daemon's RSS (and peak) after ingest, its resident person actors, the store
# size; then SIGKILL and the time a restart takes to be ready (`/_health` 200; RocksDB replays
# its write-ahead log), then SIGTERM and the same after a clean stop, RSS after restart, and a
# check that a sample of persons reads back with both IDs.
# Needs: bash, python3, curl.
set -euo pipefail

PERSONS=${PERSONS:-10000000}
. "$(dirname "$0")/lib.sh" scale

start() {
  local t0 t1
  t0=$(date +%s.%N)
  start_daemon
  t1=$(date +%s.%N)
  READY=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t0" "$t1")
}
rss() { echo "$(( $(ps -o rss= -p "$PID") / 1024 )) MiB (peak $(( $(awk '/VmHWM/{print $2}' /proc/$PID/status) / 1024 )) MiB)"; }

python3 - "$PERSONS" >"$WORK/events.ndjson" <<'PY'
import sys
w = sys.stdout.write
for i in range(int(sys.argv[1])):
    w('{"event":"$identify","distinct_id":"user-%d","properties":{"$anon_distinct_id":"anon-%d"}}\n' % (i, i))
PY
start
t0=$(date +%s)
"$BIN" ingest "$WORK/events.ndjson" --socket "$SOCK" --token phc_scale --batch-size 1000 2>/dev/null
echo "ingest: $(( $(date +%s) - t0 )) s"
rm -f "$WORK/events.ndjson"
echo "after ingest: RSS $(rss), resident person actors $(curl -sf --unix-socket "$SOCK" http://x/metrics | awk '/^idstitch_resident_actors /{print $2}'), store $(du -sh "$WORK/data" | cut -f1)"
kill -KILL "$PID"; wait "$PID" || true
start
echo "restart after SIGKILL: ready in $READY s, RSS $(rss)"
kill -TERM "$PID"; wait "$PID" || true
start
echo "restart after SIGTERM: ready in $READY s, RSS $(rss)"
for i in 0 $((PERSONS / 2)) $((PERSONS - 1)); do
  n=$(curl -sf --unix-socket "$SOCK" "http://x/api/projects/phc_scale/persons/?distinct_id=anon-$i" | python3 -c "import json,sys; r=json.load(sys.stdin)['results']; print(sorted(r[0]['distinct_ids']) if r else 'MISSING')")
  echo "person of anon-$i: $n"
done
echo "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
