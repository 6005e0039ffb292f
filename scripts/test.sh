#!/usr/bin/env bash
# One command to run the tests: installs if needed, then runs the whole suite against real
# PostgreSQL (127.0.0.1:5432 or a throwaway server), real libp2p hosts, a real MongoDB-wire
# server and real subprocesses. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The compose-file check needs a compose implementation beside the docker client; install
# Debian's where we can (root with apt), otherwise that one check says what to install.
if command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1 \
   && ! command -v docker-compose >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "scripts/test.sh: installing Debian's docker-compose system-wide (apt-get, as root) for the compose-file check" >&2
  (apt-get install -y -qq docker-compose >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq docker-compose >/dev/null 2>&1; }) \
    || echo "note: could not install docker-compose; the compose check will be skipped" >&2
fi
# newman (for the Postman collection test) goes into .tools/ inside the checkout, never system-wide.
bash scripts/install-newman.sh >/dev/null || true
# The js-libp2p peer of the wire-compatibility test: its pinned npm packages, inside the checkout.
if [ ! -d tests/jspeer/node_modules/libp2p ]; then
  (cd tests/jspeer && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
    || echo "note: npm ci in tests/jspeer failed; the js-libp2p peer test will say what to install" >&2
fi
exec .venv/bin/python -m pytest "$@"
