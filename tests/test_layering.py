"""The import rules of docs/ARCHITECTURE.md, checked by import-linter (``[tool.importlinter]``
in pyproject.toml), one test per contract so a failure names the rule that broke."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _contract_ids() -> list[str]:
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    return [contract["id"] for contract in config["tool"]["importlinter"]["contracts"]]


def test_every_contract_has_an_id() -> None:
    assert _contract_ids(), "pyproject.toml declares no import-linter contracts"


@pytest.mark.parametrize("contract", _contract_ids())
def test_import_contract_is_kept(contract: str) -> None:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: pip install -e '.[dev]'"
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", "--contract", contract, str(PYPROJECT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"contract {contract!r} is broken:\n{result.stdout}"


def test_node_process_imports_no_quantum_code() -> None:
    """A node reaches ``quantum/`` only by dotted path in its workers, so starting one imports
    neither Qiskit nor any ``quantum_mesh.quantum`` module. The layers contract checks the
    static imports; this checks what really gets imported."""
    probe = (
        "import sys\n"
        "import quantum_mesh.node.main, quantum_mesh.node.service, quantum_mesh.node.handlers\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] == 'qiskit' or m.startswith('quantum_mesh.quantum'))\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
