#!/usr/bin/env bash
# benches/snapshot.sh: issue 5's snapshot speed targets, end to end, against the real binary.
#
# What it does, in order (everything under $WORK, removed at the end unless KEEP=1):
#   1. generates PERSONS events as NDJSON, one event per new distinct ID (no $identify), so
#      each event creates one person, and ingests them into a fresh daemon with
#      `idstitch ingest --batch-size 1000`;
#   2. runs a capture load (LOAD_CONNS closed-loop clients over the Unix socket, one
#      single-event POST /batch/ at a time, each a new distinct ID) for BASELINE_SECS, then takes
#      `idstitch snapshot create` online (through the daemon's socket) while the load goes on,
#      then lets the load run AFTER_SECS more. Printed: the snapshot's wall time, and capture
#      latency (p50, p99, max) of requests started before the snapshot vs. during it;
#   3. stops the daemon and times `idstitch snapshot verify` (log entries/s = the manifest's
#      log_entries / wall time, checksums included);
#   4. times `idstitch snapshot restore` into a new data dir (MB/s = snapshot bytes / wall
#      time; restore checks every file's SHA-256 while copying it and fsyncs what it wrote,
#      but does not replay the log: that is `verify`'s, or `restore --full-verify`'s).
# It ends with the targets of issue 5 and whether each was met:
#   create <= 5 s under load, capture p99 delay (during - before) <= 50 ms,
#   restore >= 200 MB/s, verify >= 1,000,000 log entries/s.
# Nothing is asserted (exit 0 even when a target is missed); the numbers are for reading.
# The data is freshly written, so the snapshot's files are likely in the page cache: restore
# and verify read from memory rather than the disk.
#
# Usage: benches/snapshot.sh            (builds with `cargo build --release`; honours
#                                        CARGO_TARGET_DIR)
#   IDSTITCH_BIN=path   use this binary instead of building (it is copied to $WORK first, so a
#                       concurrent build cannot swap it mid-run)
#   PERSONS=1000000     persons to create          LOAD_CONNS=4      concurrent capture clients
#   BASELINE_SECS=10    load before the snapshot   AFTER_SECS=3      load after it
#   WORK=/tmp/...       scratch dir (must not exist)                 KEEP=1  keep $WORK
# Needs: bash, python3, curl.
set -euo pipefail

PERSONS=${PERSONS:-1000000}
LOAD_CONNS=${LOAD_CONNS:-4}
BASELINE_SECS=${BASELINE_SECS:-10}
AFTER_SECS=${AFTER_SECS:-3}
WORK=${WORK:-/tmp/idstitch-snapshot-bench.$$}
KEEP=${KEEP:-0}
TOKEN=phc_snapshot_bench
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ -e $WORK ]]; then
    echo "$WORK exists: choose another WORK" >&2
    exit 1
fi
mkdir -p "$WORK"
DAEMON_PID=""
LOAD_PID=""
cleanup() {
    if [[ -n $LOAD_PID ]] && kill -0 "$LOAD_PID" 2>/dev/null; then kill "$LOAD_PID" || true; fi
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID" || true
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    if [[ $KEEP == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

if [[ -z ${IDSTITCH_BIN:-} ]]; then
    (cd "$REPO" && cargo build --release --quiet)
    IDSTITCH_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/idstitch
fi
cp "$IDSTITCH_BIN" "$WORK/idstitch"
BIN=$WORK/idstitch

echo "== machine and build"
echo "commit: $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (with uncommitted changes)')"
echo "cpu: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "disk under $WORK: $(df -hT "$WORK" | awk 'NR==2 {print $1, $2}')"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

SOCK=$WORK/idstitch.sock
STORE=$WORK/store
SNAPS=$WORK/snaps
mkdir -p "$SNAPS"

echo "== 1. ingest $PERSONS persons"
python3 - "$PERSONS" >"$WORK/events.ndjson" <<'EOF'
import sys
out = sys.stdout
for i in range(int(sys.argv[1])):
    out.write('{"event":"bench","distinct_id":"p-%d","properties":{"n":%d}}\n' % (i, i))
EOF
RUST_LOG=warn "$BIN" serve --data-dir "$STORE" --socket "$SOCK" --snapshot-dir "$SNAPS" \
    >"$WORK/serve.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 600); do
    if curl -sf --unix-socket "$SOCK" http://localhost/_health >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -sf --unix-socket "$SOCK" http://localhost/_health >/dev/null
"$BIN" ingest "$WORK/events.ndjson" --socket "$SOCK" --token "$TOKEN" --batch-size 1000 2>/dev/null
rm -f "$WORK/events.ndjson"
echo "store size: $(du -sh "$STORE" | cut -f1)"
# Issue 2: with 1M persons, resident person actors stay under the cap (--max-resident-persons,
# default 100000) and the daemon's RSS is reported.
RESIDENT=$(curl -sf --unix-socket "$SOCK" http://localhost/metrics | awk '/^idstitch_resident_actors /{print $2}')
echo "after ingest: resident person actors ${RESIDENT} (cap 100000), daemon RSS $(( $(ps -o rss= -p "$DAEMON_PID") / 1024 )) MiB, peak $(( $(awk '/VmHWM/{print $2}' /proc/$DAEMON_PID/status) / 1024 )) MiB"

echo "== 2. snapshot create online, under a capture load of $LOAD_CONNS clients"
cat >"$WORK/load.py" <<'EOF'
# Closed-loop capture clients over the Unix socket; one line per request:
# "<start, unix seconds> <latency, ms> <status>".
import http.client, os, socket, sys, threading, time

sock_path, token, conns, stop_file, out_path = sys.argv[1:6]

class UnixConn(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=60)
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

lines = []
lock = threading.Lock()

def client(k):
    c = UnixConn(sock_path)
    i = 0
    mine = []
    while not os.path.exists(stop_file):
        body = ('{"api_key":"%s","batch":[{"event":"load","distinct_id":"load-%d-%d"}]}'
                % (token, k, i)).encode()
        i += 1
        t = time.time()
        t0 = time.perf_counter()
        try:
            c.request("POST", "/batch/", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            status = r.status
        except Exception:
            c.close()
            c = UnixConn(sock_path)
            status = 0
        mine.append("%.6f %.3f %d\n" % (t, (time.perf_counter() - t0) * 1000, status))
    with lock:
        lines.extend(mine)

threads = [threading.Thread(target=client, args=(k,)) for k in range(int(conns))]
for t in threads:
    t.start()
for t in threads:
    t.join()
with open(out_path, "w") as f:
    f.writelines(lines)
EOF
python3 "$WORK/load.py" "$SOCK" "$TOKEN" "$LOAD_CONNS" "$WORK/stop-load" "$WORK/latencies.txt" &
LOAD_PID=$!
LOAD_START=$(now)
sleep "$BASELINE_SECS"
SNAP=$SNAPS/s1
T0=$(now)
"$BIN" snapshot create "$SNAP" --socket "$SOCK"
T1=$(now)
sleep "$AFTER_SECS"
touch "$WORK/stop-load"
wait "$LOAD_PID"
LOAD_PID=""
CREATE_SECS=$(secs "$T0" "$T1")
echo "snapshot create (online, under load): ${CREATE_SECS} s"
python3 - "$WORK/latencies.txt" "$LOAD_START" "$T0" "$T1" >"$WORK/latency-report.txt" <<'EOF'
import sys
path, start, t0, t1 = sys.argv[1], *map(float, sys.argv[2:5])
rows = [l.split() for l in open(path)]
rows = [(float(a), float(b), int(c)) for a, b, c in rows]

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")

# Before: from 1 s after the load started (warm-up) to the snapshot's start.
before = [l for t, l, s in rows if start + 1 <= t < t0]
# During: requests started while `snapshot create` ran.
during = [l for t, l, s in rows if t0 <= t <= t1]
bad = sum(1 for _, _, s in rows if s != 200)
for name, xs in (("before", before), ("during", during)):
    print("capture %-6s snapshot: %5d requests, p50 %7.1f ms, p99 %7.1f ms, max %7.1f ms"
          % (name, len(xs), pct(xs, 50), pct(xs, 99), max(xs) if xs else float("nan")))
print("capture requests not answered 200: %d of %d" % (bad, len(rows)))
print("P99_DELAY %.1f" % (pct(during, 99) - pct(before, 99)))
EOF
grep -v '^P99_DELAY' "$WORK/latency-report.txt"
P99_DELAY=$(awk '/^P99_DELAY/ {print $2}' "$WORK/latency-report.txt")
echo "capture p99 delay (during - before): ${P99_DELAY} ms"
kill -TERM "$DAEMON_PID"
wait "$DAEMON_PID" || true
DAEMON_PID=""

read -r SNAP_BYTES SNAP_FILES LOG_ENTRIES SNAP_PERSONS < <(python3 - "$SNAP/manifest.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
print(sum(f["size"] for f in m["files"]), len(m["files"]), m["counts"]["log_entries"],
      m["counts"]["persons"])
EOF
)
echo "snapshot: $SNAP_BYTES bytes in $SNAP_FILES files, $LOG_ENTRIES log entries, $SNAP_PERSONS persons"

echo "== 3. snapshot verify"
# The daemon's last writes (its memtables, flushed at the stop) go to disk first, so that the
# kernel's write-back of them does not run inside the timing.
sync
T0=$(now)
"$BIN" snapshot verify "$SNAP"
T1=$(now)
VERIFY_SECS=$(secs "$T0" "$T1")
VERIFY_RATE=$(python3 -c "import sys; print(round(int(sys.argv[1]) / float(sys.argv[2])))" "$LOG_ENTRIES" "$VERIFY_SECS")
echo "snapshot verify: ${VERIFY_SECS} s, ${VERIFY_RATE} log entries/s"

echo "== 4. snapshot restore"
T0=$(now)
"$BIN" snapshot restore "$SNAP" --data-dir "$WORK/restored"
T1=$(now)
RESTORE_SECS=$(secs "$T0" "$T1")
RESTORE_MBS=$(python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e6 / float(sys.argv[2]):.1f}')" "$SNAP_BYTES" "$RESTORE_SECS")
echo "snapshot restore: ${RESTORE_SECS} s, ${RESTORE_MBS} MB/s"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== targets (issue 5)"
verdict() { python3 -c "import sys; print('met' if eval(sys.argv[1]) else 'NOT met')" "$1"; }
printf '%-42s %-14s %s\n' "create under load <= 5 s" "${CREATE_SECS} s" "$(verdict "$CREATE_SECS <= 5")"
printf '%-42s %-14s %s\n' "capture p99 delay during create <= 50 ms" "${P99_DELAY} ms" "$(verdict "$P99_DELAY <= 50")"
printf '%-42s %-14s %s\n' "restore >= 200 MB/s" "${RESTORE_MBS} MB/s" "$(verdict "$RESTORE_MBS >= 200")"
printf '%-42s %-14s %s\n' "verify >= 1,000,000 log entries/s" "${VERIFY_RATE}/s" "$(verdict "$VERIFY_RATE >= 1000000")"
