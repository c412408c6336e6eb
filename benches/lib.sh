# What the bench scripts share. Source it after `set -euo pipefail`, with a name for the
# temporary directory:
#
#   . "$(dirname "$0")/lib.sh" scale
#
# Sets ROOT (the checkout), WORK (a temporary directory, removed at exit after the daemon is
# killed), BIN (a copy of target/release/idstitch or $IDSTITCH_BIN, so that a concurrent build
# cannot swap it mid-run), SOCK and PID; defines start_daemon; prints the commit, the CPUs and
# the load average.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d "/tmp/idstitch-$1.XXXXXX")
BIN=$WORK/idstitch
cp "${IDSTITCH_BIN:-$ROOT/target/release/idstitch}" "$BIN"
SOCK=$WORK/s.sock
PID=
trap '[ -n "$PID" ] && kill -9 "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT

# Start `idstitch serve` on $WORK/data and return once `/_health` answers 200.
start_daemon() {
  RUST_LOG=warn "$BIN" serve --data-dir "$WORK/data" --socket "$SOCK" >>"$WORK/serve.log" 2>&1 &
  PID=$!
  until curl -sf --unix-socket "$SOCK" http://x/_health >/dev/null 2>&1; do sleep 0.02; done
}

echo "commit $(cd "$ROOT" && git rev-parse --short HEAD), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
