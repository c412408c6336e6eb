#!/usr/bin/env bash
# benches/capture-bomb.sh BINARY: what two small gzip bombs of tiny events cost a fresh daemon
# (session 19). Each is 20 MiB of JSON once inflated (the default --max-body-bytes), ~20 KB
# gzipped: '[{},{},...]' (7 million empty events, the one-pass scan's path) and '[1,1,...]'
# (10 million numbers, serde_json's path). Prints each answer's status and time, then the
# daemon's peak RSS (VmHWM).
set -euo pipefail
B=$1
D=$(mktemp -d /tmp/capture-bomb.XXXX)
python3 - "$D" <<'PY'
import gzip, sys
d = sys.argv[1]
n = (20 * 1024 * 1024 - 2) // 3
open(f"{d}/objects.gz", "wb").write(gzip.compress(b"[" + b"{}," * (n - 1) + b"{}]", 9))
n = (20 * 1024 * 1024 - 2) // 2
open(f"{d}/numbers.gz", "wb").write(gzip.compress(b"[" + b"1," * (n - 1) + b"1]", 9))
PY
"$B" serve --data-dir "$D/data" --socket "$D/s.sock" >/dev/null 2>&1 &
P=$!
for _ in $(seq 100); do [ -S "$D/s.sock" ] && break; sleep 0.05; done
sleep 0.2
for f in objects numbers; do
  /usr/bin/time -f "$f: %e s" curl -s -o /dev/null -w "%{http_code} " --unix-socket "$D/s.sock" \
    -H 'content-encoding: gzip' -H 'content-type: application/json' \
    --data-binary "@$D/$f.gz" http://x/batch/
done
grep VmHWM "/proc/$P/status"
kill "$P"; wait "$P" || true
rm -rf "$D"
