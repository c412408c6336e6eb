#!/usr/bin/env bash
# Soak (issue 9): mixed load for a long time, with online snapshots and restarts (SIGTERM and
# SIGKILL in turn) mixed in, checking that RSS and latency stay flat and that nothing is lost.
#
#   benches/soak.sh                         # 30 minutes at 2,000 events/s (open loop)
#   MINUTES=5 RATE=1000 benches/soak.sh     # shorter
#
# It drives one daemon (target/release/idstitch, or $IDSTITCH_BIN) on a temporary data dir
# with the load generator (`benches/load.rs`) in segments of SEGMENT_S seconds, each segment a
# fresh project whose persons the generator checks in full at its end. After every 3rd segment
# it takes an online snapshot (`idstitch snapshot create --socket`), after every 6th it verifies
# the newest snapshot, and after every 4th it restarts the daemon (SIGTERM, then SIGKILL the
# next time) and times how long it takes to be ready again. A sampler records the daemon's RSS
# every 5 s. At the end the daemon is stopped, `idstitch verify` replays the whole log, and a
# summary (per segment, and first third against last third) goes to stdout and to
# target/soak/summary.txt, with the raw data beside it.
set -euo pipefail

MINUTES=${MINUTES:-30}
RATE=${RATE:-2000}
SEGMENT_S=${SEGMENT_S:-30}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/target/soak
WORK=$(mktemp -d /tmp/idstitch-soak.XXXXXX)
mkdir -p "$OUT"
rm -f "$OUT"/*

# Copies of the binaries: a build during the run must not change what runs.
cp "${IDSTITCH_BIN:-$ROOT/target/release/idstitch}" "$WORK/idstitch"
(cd "$ROOT" && cargo bench --bench load --no-run 2>/dev/null)
LOADGEN=$(ls -t "$ROOT"/target/release/deps/load-* | grep -v '\.d$' | head -1)
cp "$LOADGEN" "$WORK/loadgen"
BIN=$WORK/idstitch
SOCK=$WORK/s.sock
DATA=$WORK/data
SNAPS=$WORK/snaps
mkdir -p "$SNAPS"

PID=
start_daemon() {
  local t0=$(date +%s.%N)
  RUST_LOG=warn "$BIN" serve --data-dir "$DATA" --socket "$SOCK" --snapshot-dir "$SNAPS" \
    >>"$OUT/daemon.log" 2>&1 &
  PID=$!
  echo "$PID" >"$WORK/pid"
  until curl -sf --unix-socket "$SOCK" http://x/_health >/dev/null 2>&1; do
    kill -0 "$PID" 2>/dev/null || { echo "soak: daemon died at start, see $OUT/daemon.log"; exit 1; }
    sleep 0.05
  done
  READY=$(echo "$(date +%s.%N) - $t0" | bc)
}
cleanup() {
  [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null || true
  [ -n "${PID:-}" ] && kill -9 "$PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Persons of a project, following `next` (a fingerprint: ids and versions, sorted).
persons_of() {
  python3 - "$SOCK" "$1" <<'EOF'
import json, subprocess, sys, hashlib, urllib.parse
sock, token = sys.argv[1], sys.argv[2]
path, seen = f"/api/projects/{token}/persons/?limit=1000", []
while path:
    out = subprocess.run(["curl", "-sf", "--unix-socket", sock, "http://x" + path],
                         capture_output=True, check=True).stdout
    page = json.loads(out)
    seen += [(p["uuid"], sorted(p["distinct_ids"]), json.dumps(p["properties"], sort_keys=True))
             for p in page["results"]]
    nxt = page.get("next")  # an absolute URL: keep its path and query
    path = nxt and urllib.parse.urlsplit(nxt)._replace(scheme="", netloc="").geturl()
seen.sort()
print(len(seen), hashlib.sha256(json.dumps(seen).encode()).hexdigest()[:16])
EOF
}

start_daemon
( while true; do
    p=$(cat "$WORK/pid" 2>/dev/null || true)
    r=$(ps -o rss= -p "$p" 2>/dev/null | tr -d ' ' || true)
    [ -n "$r" ] && echo "$(date +%s) $r" >>"$OUT/rss.txt"
    sleep 5
  done ) &
SAMPLER=$!

echo "soak: $MINUTES min at $RATE events/s, segments of ${SEGMENT_S}s, data in $WORK" | tee "$OUT/summary.txt"
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at start, commit $(cd "$ROOT" && git rev-parse --short HEAD)" | tee -a "$OUT/summary.txt"
printf '%-4s %-7s %-9s %-8s %-8s %-8s %-8s %-7s %s\n' seg t_s events/s p50_ms p99_ms p999_ms rss_MiB check action | tee -a "$OUT/summary.txt"

T0=$(date +%s)
seg=0
failures=0
kills=0
terms=0
snaps=0
while [ $(( $(date +%s) - T0 )) -lt $(( MINUTES * 60 )) ]; do
  seg=$((seg + 1))
  events=$((RATE * SEGMENT_S))
  "$WORK/loadgen" --socket "$SOCK" --pid "$PID" --rate "$RATE" --events "$events" --seed "$seg" \
    --check-sample 100 --no-baseline --progress 0 --report "$OUT/seg-$seg.json" \
    >>"$OUT/loadgen.log" 2>&1 || true
  read -r eps p50 p99 p999 ok <<<"$(python3 - "$OUT/seg-$seg.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    l = r["latency"]
    print(f'{r["events_per_s"]:.0f} {l["p50_ms"]:.1f} {l["p99_ms"]:.1f} {l["p999_ms"]:.1f} {"ok" if r["ok"] else "FAIL"}')
except Exception as e:
    print("0 0 0 0 FAIL")
EOF
)"
  [ "$ok" = ok ] || failures=$((failures + 1))
  rss=$(( $(ps -o rss= -p "$PID" | tr -d ' ') / 1024 ))
  action=""
  if [ $((seg % 3)) -eq 0 ]; then
    s0=$(date +%s.%N)
    if "$BIN" snapshot create "$SNAPS/s$seg" --socket "$SOCK" >>"$OUT/snapshots.log" 2>&1; then
      snaps=$((snaps + 1))
      action="snapshot $(printf '%.2f' "$(echo "$(date +%s.%N) - $s0" | bc)")s"
    else
      action="snapshot FAILED"; failures=$((failures + 1))
    fi
    # Keep the newest two snapshots: the disk is not the subject here.
    ls -dt "$SNAPS"/s* 2>/dev/null | tail -n +3 | xargs -r rm -rf
  fi
  if [ $((seg % 6)) -eq 0 ]; then
    newest=$(ls -dt "$SNAPS"/s* | head -1)
    if "$BIN" snapshot verify "$newest" >>"$OUT/snapshots.log" 2>&1; then
      action="$action, verified"
    else
      action="$action, verify FAILED"; failures=$((failures + 1))
    fi
  fi
  if [ $((seg % 4)) -eq 0 ]; then
    token=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['token'])" "$OUT/seg-$seg.json")
    before=$(persons_of "$token")
    if [ $(( (seg / 4) % 2 )) -eq 1 ]; then
      kill -TERM "$PID"; wait "$PID" || true; how=SIGTERM; terms=$((terms + 1))
    else
      kill -9 "$PID"; wait "$PID" 2>/dev/null || true; how=SIGKILL; kills=$((kills + 1))
    fi
    start_daemon
    after=$(persons_of "$token")
    if [ "$before" = "$after" ]; then same="same ${before%% *} persons"; else same="PERSONS DIFFER ($before / $after)"; failures=$((failures + 1)); fi
    action="$action${action:+, }$how, ready in $(printf '%.2f' "$READY")s, $same"
  fi
  printf '%-4s %-7s %-9s %-8s %-8s %-8s %-8s %-7s %s\n' "$seg" $(( $(date +%s) - T0 )) "$eps" "$p50" "$p99" "$p999" "$rss" "$ok" "$action" | tee -a "$OUT/summary.txt"
done

kill "$SAMPLER" 2>/dev/null || true
SAMPLER=
kill -TERM "$PID"; wait "$PID" || true
PID=
verify=$("$BIN" verify --data-dir "$DATA" 2>&1 | tail -1) || failures=$((failures + 1))
python3 - "$OUT" "$seg" <<EOF | tee -a "$OUT/summary.txt"
import json, sys, statistics
out, n = sys.argv[1], int(sys.argv[2])
segs = []
for i in range(1, n + 1):
    try:
        segs.append(json.load(open(f"{out}/seg-{i}.json")))
    except Exception:
        pass
rss = [int(l.split()[1]) / 1024 for l in open(f"{out}/rss.txt")]
third = max(1, len(segs) // 3)
def p99(xs): return statistics.median([s["latency"]["p99_ms"] for s in xs])
print()
print(f"segments: {len(segs)}, events acknowledged: {sum(s['events'] for s in segs)}")
print(f"p99 latency, median over segments: first third {p99(segs[:third]):.1f} ms, last third {p99(segs[-third:]):.1f} ms")
r3 = max(1, len(rss) // 3)
print(f"daemon RSS (5 s samples): first third max {max(rss[:r3]):.0f} MiB, last third max {max(rss[-r3:]):.0f} MiB, overall max {max(rss):.0f} MiB")
print("restarts: $terms SIGTERM, $kills SIGKILL; snapshots: $snaps")
print("final verify: $verify")
print("failures (segment checks, snapshots, verify): $failures")
EOF
[ "$failures" -eq 0 ]
