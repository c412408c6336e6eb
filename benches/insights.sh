#!/usr/bin/env bash
# Insights over 1,000,000 events (issue 8: every query under 1 s on this machine).
#
#   benches/insights.sh            # generate, ingest, query (about 3 minutes)
#   EVENTS=200000 benches/insights.sh
#
# 1. generates the onboarding flow of benches/insights/gen_events.py (anonymous visitors,
#    40% sign up with $identify, some on a second device, half create a project; 5% of the
#    users have @ourcompany.com emails) and ingests it into a fresh daemon
#    (target/release/idstitch, or $IDSTITCH_BIN) with `idstitch ingest --batch-size 1000`;
# 2. sets the project's test-account filter (email not_icontains @ourcompany.com);
# 3. runs each query RUNS times and prints its wall time (curl over the Unix socket) and the
#    daemon's CPU time for it (utime + stime from /proc, both cores counted).
# Needs: bash, python3, curl, bc.
set -euo pipefail

EVENTS=${EVENTS:-1000000}
RUNS=${RUNS:-3}
. "$(dirname "$0")/lib.sh" insights

python3 "$ROOT/benches/insights/gen_events.py" "$EVENTS" >"$WORK/events.ndjson"
start_daemon
"$BIN" ingest "$WORK/events.ndjson" --socket "$SOCK" --batch-size 1000 2>/dev/null
curl -sf --unix-socket "$SOCK" -X PATCH -H 'content-type: application/json' \
  -d '{"test_account_filters":[{"key":"email","value":"@ourcompany.com","operator":"not_icontains","type":"person"}]}' \
  http://x/api/projects/phc_bench/ >/dev/null

TCK=$(getconf CLK_TCK)
query() {
  local name=$1 path=$2 walls="" cpus="" answer=""
  for _ in $(seq "$RUNS"); do
    local a b w
    a=$(awk '{print $14+$15}' /proc/$PID/stat)
    w=$(curl -sf -o "$WORK/out.json" -w "%{time_total}" --unix-socket "$SOCK" "http://x$path")
    b=$(awk '{print $14+$15}' /proc/$PID/stat)
    walls="$walls $(printf '%.2f' "$w")"
    cpus="$cpus $(printf '%.2f' "$(echo "($b - $a) / $TCK" | bc -l)")"
  done
  answer=$(python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
print(r['count'] if 'count' in r else ' / '.join(str(s.get('count', s)) for s in r.get('steps', [])))" "$WORK/out.json" | cut -c1-60)
  printf '%-44s %-18s %-18s %s\n' "$name" "$walls" "$cpus" "$answer"
}
I=/api/projects/phc_bench/insights
printf '%-44s %-18s %-18s %s\n' query "wall s" "daemon CPU s" answer
query 'unique $pageview' "$I/unique_persons/?event=%24pageview"
query 'unique $pageview, count_by=distinct_id' "$I/unique_persons/?event=%24pageview&count_by=distinct_id"
query 'unique signed_up' "$I/unique_persons/?event=signed_up"
query 'funnel 3 steps, 7 days' "$I/funnel/?steps=%24pageview,signed_up,created_project&window_secs=604800"
query 'unique $pageview, filtered' "$I/unique_persons/?event=%24pageview&filter_test_accounts=true"
query 'funnel, filtered' "$I/funnel/?steps=%24pageview,signed_up,created_project&window_secs=604800&filter_test_accounts=true"
echo "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
