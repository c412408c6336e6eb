#!/usr/bin/env bash
# Install what a fresh Debian machine lacks to build idstitch. Idempotent and quiet when done.
# RocksDB's build (librocksdb-sys, via bindgen) needs libclang; a C++ compiler builds RocksDB.
set -euo pipefail

need=()
command -v cargo >/dev/null 2>&1 || {
  echo "idstitch: cargo is missing. Install Rust (rustup, stable >= 1.85) and run this again." >&2
  exit 1
}
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
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
