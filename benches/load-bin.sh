#!/usr/bin/env bash
# Build the load generator (`benches/load.rs`) if needed and print its executable's path; the
# scripts that drive daemon builds with it (ab.sh, callgrind.sh) call this.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked --bench load --no-run 2>&1 | tail -1 >&2
cargo bench --locked --bench load --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="load" and m.get("executable"): print(m["executable"])' | tail -1
