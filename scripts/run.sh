#!/usr/bin/env bash
# One command to run the service: installs if needed, then starts the coordinator with its
# embedded default (SQLite + local document store under ./var, 3 embedded service nodes).
# Extra arguments go to `qmesh coordinator` (e.g. --port 8080 --embedded-nodes 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/qmesh coordinator "$@"
