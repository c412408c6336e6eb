#!/usr/bin/env bash
# Install what tests/sdk/run.sh needs, at pinned versions; a quick no-op when it is all there.
#   - Debian's chromium (/usr/bin/chromium) and curl, with apt-get (as root)
#   - posthog-python in a virtualenv at target/sdk/venv (tests/sdk/requirements.txt)
#   - posthog-node, posthog-js, playwright-core in tests/sdk/node_modules (npm ci from the
#     committed tests/sdk/package-lock.json)
# Each step is skipped when a stamp shows it was done from the same pinned inputs.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sdk="$repo/tests/sdk"
venv="$repo/target/sdk/venv"
say() { echo "sdk-setup: $*"; }

sha() { sha256sum "$1" | cut -d' ' -f1; }

apt_updated=0
apt_install() { # packages...
  if [ "$(id -u)" -ne 0 ]; then
    say "need root to apt-get install $* (run as root, or install them yourself)" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only when the package lists do not know the package yet
  local p
  for p in "$@"; do
    if [ "$apt_updated" -eq 0 ] && ! apt-cache show "$p" >/dev/null 2>&1; then
      apt-get update -q; apt_updated=1
    fi
  done
  if ! apt-get install -y -q --no-install-recommends "$@"; then
    [ "$apt_updated" -eq 1 ] && exit 1
    apt-get update -q; apt_updated=1
    apt-get install -y -q --no-install-recommends "$@"
  fi
}

# --- system packages ---
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt_install "${need[@]}"
fi

# --- posthog-python in target/sdk/venv ---
req="$sdk/requirements.txt"
stamp="$venv/.sdk-setup-stamp"
want="$(sha "$req")"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
   && "$venv/bin/python" -c 'import posthog' 2>/dev/null; then
  :
else
  say "creating $venv with $(grep -m1 '^posthog==' "$req")"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --disable-pip-version-check -q --no-deps -r "$req"
  "$venv/bin/python" -c 'import posthog, sys; sys.stdout.write("sdk-setup: posthog-python %s\n" % posthog.VERSION)'
  echo "$want" > "$stamp"
fi

# --- npm packages in tests/sdk/node_modules ---
lock="$sdk/package-lock.json"
stamp="$sdk/node_modules/.sdk-setup-stamp"
want="$(sha "$lock")"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && [ -d "$sdk/node_modules/posthog-js" ]; then
  :
else
  say "npm ci in tests/sdk"
  (cd "$sdk" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi
