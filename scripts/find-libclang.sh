#!/usr/bin/env bash
# Print the path of a libclang shared library that RocksDB's build (bindgen, via clang-sys) can
# load, or exit 1 when there is none. Usage: scripts/find-libclang.sh [ROOT] (ROOT prefixes the
# searched directories; the tests point it at a fake file system).
#
# Only libclang itself counts: libclang-cpp (the C++ interface, which some LLVM packages bring
# along) has a similar name but is not what bindgen loads, and taking it for libclang once let
# a machine skip installing libclang-dev and fail the build.
set -uo pipefail
root="${1:-}"
shopt -s nullglob

candidates=()
if [ -n "${LIBCLANG_PATH:-}" ]; then
  candidates+=("$root$LIBCLANG_PATH"/libclang.so* "$root$LIBCLANG_PATH"/libclang-[0-9]*.so*)
fi
# llvm-config names the library directory of an LLVM installed elsewhere (clang-sys asks it too);
# not for a fake ROOT, which must not see the real machine.
if [ -z "$root" ] && command -v llvm-config >/dev/null 2>&1; then
  dir=$(llvm-config --libdir 2>/dev/null) && candidates+=("$dir"/libclang.so* "$dir"/libclang-[0-9]*.so*)
fi
for dir in "$root"/usr/lib/llvm-*/lib "$root"/usr/lib "$root"/usr/lib/*-linux-gnu \
           "$root"/usr/lib64 "$root"/usr/local/lib; do
  candidates+=("$dir"/libclang.so* "$dir"/libclang-[0-9]*.so*)
done

for f in "${candidates[@]}"; do
  if [ -f "$f" ]; then
    echo "$f"
    exit 0
  fi
done
exit 1
