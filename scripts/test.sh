#!/usr/bin/env bash
# One command to run the tests: installs if needed, then runs the whole suite against real
# PostgreSQL (127.0.0.1:5432 or a throwaway server), real libp2p hosts and real subprocesses.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
