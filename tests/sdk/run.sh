#!/usr/bin/env bash
# End-to-end tests: the official PostHog SDKs (posthog-python, posthog-node, posthog-js in
# headless chromium) drive an idstitch daemon over TCP; each flow then reads the result back
# through the read API and checks it against shared/spec/identity.md.
#
#   tests/sdk/run.sh [FLOW...]      FLOW: python node browser retries_python retries_node (default: all)
#
# Needs what scripts/sdk-setup.sh installs. IDSTITCH_BIN: the daemon (default target/release/idstitch).
# Each flow gets a fresh data dir and a free loopback port. Prints one line per check
# (PASS/FAIL), and last a line `N passed, M failed`; exits 1 if anything failed.
# The work dir (daemon logs, what the SDKs sent) is kept when something failed, and printed.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

BIN="${IDSTITCH_BIN:-target/release/idstitch}"
case "$BIN" in /*) ;; *) BIN="$repo/$BIN" ;; esac
export IDSTITCH_BIN="$BIN"
export IDSTITCH_CTL="$here/lib/daemon.sh"
PY="${SDK_PYTHON:-$repo/target/sdk/venv/bin/python}"
export SDK_PYTHON="$PY"
export PYTHONDONTWRITEBYTECODE=1   # keep tests/sdk free of __pycache__
FLOW_TIMEOUT="${SDK_FLOW_TIMEOUT:-300}"

all_flows=(python node browser retries_python retries_node)
flows=("$@")
[ ${#flows[@]} -eq 0 ] && flows=("${all_flows[@]}")

work="$(mktemp -d "${TMPDIR:-/tmp}/idstitch-sdk.XXXXXX")"
passed=0
failed=0
flow_pgids=()
states=()

cleanup() {
  local pg st pid
  for pg in "${flow_pgids[@]}"; do
    kill -0 -- "-$pg" 2>/dev/null && kill -TERM -- "-$pg" 2>/dev/null
  done
  for st in "${states[@]}"; do
    # chromium runs in its own process group (playwright starts it detached)
    if [ -f "$st/chromium.pids" ]; then
      while read -r pid; do
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
      done < "$st/chromium.pids"
    fi
    "$IDSTITCH_CTL" stop "$st" >/dev/null 2>&1 || true
    if [ -f "$st/pids" ]; then
      while read -r pid; do
        [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
      done < "$st/pids"
    fi
  done
  for pg in "${flow_pgids[@]}"; do
    kill -0 -- "-$pg" 2>/dev/null && kill -KILL -- "-$pg" 2>/dev/null
  done
  true
}
on_exit() {
  cleanup
  if [ "$failed" -eq 0 ] && [ -z "${SDK_KEEP_WORK:-}" ]; then
    rm -rf "$work"
  else
    echo "(logs and recorded requests kept in $work)" >&2
  fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

fail_line() { echo "FAIL $1: $2 -- $3"; failed=$((failed + 1)); }

# --- prerequisites (scripts/sdk-setup.sh installs them) ---
missing=()
[ -x "$BIN" ] || missing+=("idstitch binary at $BIN (cargo build --release, or set IDSTITCH_BIN)")
[ -x "$PY" ] || missing+=("python venv at $PY")
[ -d "$here/node_modules/posthog-node" ] || missing+=("tests/sdk/node_modules (npm ci)")
[ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || missing+=("chromium at ${CHROMIUM_PATH:-/usr/bin/chromium}")
command -v curl >/dev/null || missing+=("curl")
if [ ${#missing[@]} -gt 0 ]; then
  for m in "${missing[@]}"; do fail_line setup "prerequisites present" "missing $m; run scripts/sdk-setup.sh"; done
  echo "$passed passed, $failed failed"
  exit 1
fi

run_flow() { # name command...
  local name="$1"; shift
  local st="$work/$name" out rc p f
  states+=("$st")
  if ! "$IDSTITCH_CTL" init "$st" || ! "$IDSTITCH_CTL" start "$st"; then
    fail_line "$name" "daemon started and /_health answered 200" "see $st/daemon.log"
    return
  fi
  echo "--- $name: daemon on 127.0.0.1:$(cat "$st/port"), data dir $st/data"
  out="$st/flow.out"
  : > "$out"
  # own session/process group, so that the trap can end the flow and everything it started
  setsid timeout -k 10 "$FLOW_TIMEOUT" "$@" "$st" > "$out" 2>&1 < /dev/null &
  local fpid=$!
  flow_pgids+=("$fpid")
  tail -n +1 -f --pid="$fpid" "$out" &
  local tpid=$!
  wait "$fpid"; rc=$?
  wait "$tpid" 2>/dev/null
  p=$(grep -c '^PASS ' "$out"); f=$(grep -c '^FAIL ' "$out")
  passed=$((passed + p)); failed=$((failed + f))
  if [ "$rc" -eq 124 ]; then
    fail_line "$name" "finished within ${FLOW_TIMEOUT}s" "timed out"
  elif [ "$rc" -ne 0 ]; then
    fail_line "$name" "flow exited cleanly" "exit status $rc (output above)"
  elif [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
    fail_line "$name" "flow ran checks" "it printed no PASS/FAIL line"
  fi
  # the daemon must still be up after the flow (no crash), and stop cleanly on SIGTERM
  if [ -s "$st/pid" ] && kill -0 "$(cat "$st/pid")" 2>/dev/null; then
    echo "PASS $name: daemon still running after the flow"; passed=$((passed + 1))
  else
    fail_line "$name" "daemon still running after the flow" "it is gone; last log lines: $(tail -n 5 "$st/daemon.log" | tr '\n' ' ')"
  fi
  "$IDSTITCH_CTL" stop "$st" || true
}

for flow in "${flows[@]}"; do
  case "$flow" in
    python)         run_flow python "$PY" "$here/python_flow.py" ;;
    node)           run_flow node node "$here/node_flow.mjs" ;;
    browser)        run_flow browser node "$here/browser_flow.mjs" ;;
    retries_python) run_flow retries_python "$PY" "$here/retries_flow.py" ;;
    retries_node)   run_flow retries_node node "$here/node_retries_flow.mjs" ;;
    *) fail_line "$flow" "known flow" "unknown flow name (known: ${all_flows[*]})" ;;
  esac
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
