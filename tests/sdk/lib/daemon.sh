#!/usr/bin/env bash
# Start, kill and stop one idstitch daemon described by a state directory.
#
#   daemon.sh init  STATE     make STATE/{data,admin.key,port} (a free loopback port)
#   daemon.sh start STATE     start `idstitch serve` on STATE's port and data dir, wait for /_health 200
#   daemon.sh kill  STATE     SIGKILL it and wait until it is gone (acknowledged events must survive)
#   daemon.sh stop  STATE     SIGTERM it, wait up to 15 s, then SIGKILL
#
# The binary is $IDSTITCH_BIN (default target/release/idstitch under the repo root).
# Daemon output is appended to STATE/daemon.log. Every pid ever started is also appended to
# STATE/pids so that run.sh's exit trap can stop whatever is left.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
BIN="${IDSTITCH_BIN:-$repo/target/release/idstitch}"
READY_TIMEOUT="${IDSTITCH_READY_TIMEOUT:-30}"

cmd="${1:?usage: daemon.sh init|start|kill|stop STATE}"
state="${2:?usage: daemon.sh init|start|kill|stop STATE}"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

alive() { # running and not a zombie (a killed daemon is reparented; its reaper may be slow)
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  local st; st="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || echo X)"
  [ "$st" != "Z" ] && [ "$st" != "X" ]
}

wait_gone() { # pid timeout_s
  local pid="$1" deadline=$((SECONDS + $2))
  while alive "$pid"; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.05
  done
  return 0
}

case "$cmd" in
  init)
    mkdir -p "$state/data"
    [ -s "$state/admin.key" ] || python3 -c 'import secrets; print("adm_" + secrets.token_hex(16))' > "$state/admin.key"
    [ -s "$state/port" ] || free_port > "$state/port"
    ;;
  start)
    port="$(cat "$state/port")"
    if [ -s "$state/pid" ] && alive "$(cat "$state/pid")"; then
      echo "daemon.sh: already running (pid $(cat "$state/pid"))" >&2; exit 1
    fi
    [ -x "$BIN" ] || { echo "daemon.sh: no idstitch binary at $BIN (set IDSTITCH_BIN)" >&2; exit 1; }
    echo "=== start $(date -u +%FT%T.%3NZ) ===" >> "$state/daemon.log"
    "$BIN" serve --data-dir "$state/data" --socket "$state/data/idstitch.sock" \
      --http "127.0.0.1:$port" --admin-key-file "$state/admin.key" \
      </dev/null >>"$state/daemon.log" 2>&1 &
    pid=$!
    echo "$pid" > "$state/pid"
    echo "$pid" >> "$state/pids"
    deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
      if ! alive "$pid"; then
        echo "daemon.sh: idstitch exited during startup; last log lines:" >&2
        tail -n 20 "$state/daemon.log" >&2; exit 1
      fi
      code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/_health" || true)"
      [ "$code" = "200" ] && break
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "daemon.sh: /_health not 200 after ${READY_TIMEOUT}s (last: $code)" >&2
        tail -n 20 "$state/daemon.log" >&2; exit 1
      fi
      sleep 0.05
    done
    ;;
  kill)
    pid="$(cat "$state/pid" 2>/dev/null || true)"
    if alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 10 || { echo "daemon.sh: pid $pid survived SIGKILL" >&2; exit 1; }
    fi
    echo "=== killed $(date -u +%FT%T.%3NZ) ===" >> "$state/daemon.log"
    rm -f "$state/pid"
    ;;
  stop)
    pid="$(cat "$state/pid" 2>/dev/null || true)"
    if alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      if ! wait_gone "$pid" 15; then
        echo "daemon.sh: pid $pid ignored SIGTERM for 15 s, killing" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || true
      fi
    fi
    rm -f "$state/pid"
    ;;
  *)
    echo "usage: daemon.sh init|start|kill|stop STATE" >&2; exit 2 ;;
esac
