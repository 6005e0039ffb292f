#!/usr/bin/env bash
# Installs newman (the Postman collection runner) into .tools/node_modules when missing.
# Prints the path of the newman executable on stdout; exits 2 with instructions when Node.js
# or npm is absent. Safe to re-run: does nothing once the pinned major version is present.
set -euo pipefail
cd "$(dirname "$0")/.."

NEWMAN_MAJOR=6
TOOLS_DIR=.tools
NEWMAN_BIN="$TOOLS_DIR/node_modules/.bin/newman"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  cat >&2 <<'MSG'
newman needs Node.js (>= 16) and npm, which were not found.
Install them, then re-run this script:
  Debian/Ubuntu:  apt-get install nodejs npm
  macOS:          brew install node
Or install newman yourself (npm install -g newman@6) and put it on PATH.
MSG
  exit 2
fi

installed_major() {
  [ -x "$NEWMAN_BIN" ] || return 1
  "$NEWMAN_BIN" --version 2>/dev/null | cut -d. -f1
}

if [ "$(installed_major || true)" != "$NEWMAN_MAJOR" ]; then
  mkdir -p "$TOOLS_DIR"
  echo "installing newman@$NEWMAN_MAJOR into $TOOLS_DIR/node_modules" >&2
  npm install --prefix "$TOOLS_DIR" --no-save --no-audit --no-fund --loglevel=error \
    "newman@$NEWMAN_MAJOR" >&2
fi

if [ "$(installed_major || true)" != "$NEWMAN_MAJOR" ]; then
  echo "newman@$NEWMAN_MAJOR did not install into $TOOLS_DIR (see npm's output above)" >&2
  exit 1
fi
echo "$PWD/$NEWMAN_BIN"
