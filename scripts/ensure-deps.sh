#!/usr/bin/env bash
# Install what a fresh Debian machine lacks to build idstitch. Idempotent and quiet when done.
# RocksDB's build (librocksdb-sys, via bindgen) needs libclang; a C++ compiler builds RocksDB.
set -euo pipefail

need=()
command -v cargo >/dev/null 2>&1 || {
  echo "idstitch: cargo is missing. Install Rust (rustup, stable >= 1.85) and run this again." >&2
  exit 1
}
"$(dirname "$0")"/find-libclang.sh >/dev/null || need+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "idstitch: missing ${need[*]}. Run: sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "idstitch: installing ${need[*]} (apt-get)..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# .cargo/config.toml compiles RocksDB for x86-64 CPUs with SSE4.2 and PCLMUL (hardware CRC32C).
# On an older CPU the daemon could stop on an illegal instruction: say so now, with the way
# around it, instead.
if [ "$(uname -m)" = x86_64 ] && [ -z "${CXXFLAGS_x86_64_unknown_linux_gnu+set}" ] &&
   ! { grep -qw sse4_2 /proc/cpuinfo && grep -qw pclmulqdq /proc/cpuinfo; }; then
  echo "idstitch: this CPU lacks SSE4.2 or PCLMUL, which the RocksDB build flags in .cargo/config.toml assume." >&2
  echo "  Build without them: CXXFLAGS_x86_64_unknown_linux_gnu= make run (or make test)" >&2
  exit 1
fi
