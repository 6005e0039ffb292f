#!/usr/bin/env bash
# Creates .venv (Python >= 3.11) and installs quantum-mesh with every extra. Safe to re-run:
# it reinstalls only when pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY=$c; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "quantum-mesh needs Python >= 3.11 (Debian/Ubuntu: apt-get install python3.11 python3.11-venv)" >&2
  exit 2
fi
# libp2p's fastecdsa compiles against GMP.
if ! { [ -e /usr/include/gmp.h ] || [ -e /usr/include/x86_64-linux-gnu/gmp.h ] || [ -e /usr/include/aarch64-linux-gnu/gmp.h ] || [ -e /opt/homebrew/include/gmp.h ] || [ -e /usr/local/include/gmp.h ]; }; then
  echo "libp2p needs a C compiler and GMP headers: apt-get install gcc libgmp-dev (macOS: brew install gmp)" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.qmesh-installed
if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[chem,embedded-docs,dev]"
  cp pyproject.toml "$stamp"
fi
# Compile the QAOA kernel once, here, into numba's cache beside its source (~1 s once cached).
# Otherwise every embedded node's worker compiles it on its first start, three at once on a
# fresh clone (~45 s each cold), while the nodes' readiness waits for it.
.venv/bin/python -c "from quantum_mesh.quantum.qaoa import kernel; kernel.warm()"
