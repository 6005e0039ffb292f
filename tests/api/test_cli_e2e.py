"""The CLI for people: one actionable line per failure (tracebacks only with --debug), the
coordinator found from QMESH_PORT, and a short summary of each result. Real subprocesses
against a real coordinator."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from tests.support.circuits import BELL_QASM2 as BELL
from tests.support.live import LiveCoordinator, free_port

from quantum_mesh.client import explain

EMBEDDED_NODES = 1
CLI_TIMEOUT_S = 120


def qmesh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantum_mesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env={**os.environ, **(env or {})},
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith("qmesh: ")
    return lines[0]


@pytest.fixture
def bell(tmp_path: Path) -> Path:
    path = tmp_path / "bell.qasm"
    path.write_text(BELL)
    return path


def test_an_unreachable_coordinator_is_one_line_and_debug_shows_the_traceback(
    bell: Path,
) -> None:
    api = f"http://127.0.0.1:{free_port()}"
    line = one_line(qmesh("submit", str(bell), "--api", api))
    assert "cannot reach the coordinator" in line and api in line
    debug = qmesh("--debug", "submit", str(bell), "--api", api)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_watch_of_an_unknown_job_says_so_once(coord: LiveCoordinator) -> None:
    missing = str(uuid.uuid4())
    line = one_line(qmesh("watch", missing, "--api", coord.base_url))
    assert missing in line and "does not exist" in line


def test_bad_input_names_what_was_refused(coord: LiveCoordinator, tmp_path: Path) -> None:
    broken = tmp_path / "broken.qasm"
    broken.write_text("OPENQASM 2.0;\nqreg q[2];\nfrobnicate q[0];\n")
    line = one_line(qmesh("submit", str(broken), "--api", coord.base_url))
    assert line.startswith("qmesh: refused (400")


def test_submit_and_wait_finds_the_coordinator_by_port_and_summarises(
    coord: LiveCoordinator, bell: Path
) -> None:
    env = {"QMESH_API": "", "QMESH_HOST": "127.0.0.1", "QMESH_PORT": str(coord.port)}
    result = qmesh("submit", str(bell), "--seed", "3", "--wait", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    job_id = lines[0]
    uuid.UUID(job_id)
    assert lines[1].startswith(f"{job_id}  circuit  COMPLETED")
    assert "1024 shots, 2 outcomes; top: " in lines[2] and "00: " in lines[2]
    assert "HTTP Request" not in result.stderr  # httpx stays quiet
    whole = qmesh("watch", job_id, "--json", env=env)
    assert whole.returncode == 0 and '"quantum_result"' in whole.stdout


def test_error_answers_read_as_sentences() -> None:
    assert "QMESH_API_KEY" in explain(401, {"code": "unauthorized", "message": "no key"})
    assert explain(403, {"code": "forbidden", "message": "needs admin"}).startswith("this API key")
    busy = explain(
        429, {"code": "overloaded", "message": "queue full", "details": {"retry_after_s": 3}}
    )
    assert "retry in 3 s" in busy
    refused = explain(
        422,
        {
            "code": "validation_error",
            "message": "bad",
            "details": {"errors": [{"loc": ["body", "params", "seed"]}]},
        },
    )
    assert refused == "refused (422 validation_error): bad [params.seed]"


def test_node_identities_default_outside_the_working_directory(tmp_path: Path) -> None:
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    env.pop("XDG_DATA_HOME", None)
    env.pop("QMESH_NODE_DATA_DIR", None)
    cmd = [sys.executable, "-m", "quantum_mesh.cli", "keygen", "--name", "lab-1"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=60)
    assert first.returncode == 0, first.stderr
    key = tmp_path / "home" / ".local" / "share" / "qmesh" / "nodes" / "lab-1" / "node.key"
    assert key.exists() and list(cwd.iterdir()) == []
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=60)
    assert again.stdout == first.stdout  # the same identity, read back
    env["QMESH_NODE_DATA_DIR"] = str(tmp_path / "elsewhere")
    moved = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=60)
    assert moved.returncode == 0 and (tmp_path / "elsewhere" / "node.key").exists()


def test_summaries_say_how_each_kind_of_job_went() -> None:
    from quantum_mesh.client import summary

    knapsack = {"job_id": "k", "kind": "qaoa_knapsack", "status": "COMPLETED", "result": {
        "total_value": 31, "optimum_value": 32, "ratio_to_optimum": 31 / 32, "greedy_value": 29,
    }}  # fmt: skip
    assert summary(knapsack)[1] == ("knapsack value 31 of optimum 32 (ratio 0.9688); greedy 29")
    portfolio = {"job_id": "p", "kind": "portfolio", "status": "COMPLETED", "result": {
        "objective": 0.095, "optimum_objective": 0.095, "is_optimal": True, "gap": 0.0,
        "selected_assets": ["b"], "optimum_ties": [["a"], ["b"]],
    }}  # fmt: skip
    line = summary(portfolio)[1]
    assert "(optimal)" in line and "2 selections tie for the optimum: ['a']; ['b']" in line
    sqd = {"job_id": "s", "kind": "sqd", "status": "COMPLETED", "result": {
        "energy": -1.1, "reference_energy": -1.1005, "error_mha": 0.5,
    }}  # fmt: skip
    assert summary(sqd)[1] == "energy -1.10000000 Ha vs reference -1.10050000 Ha (0.500 mHa)"
    failed = {"job_id": "f", "kind": "circuit", "status": "FAILED",
              "error": {"code": "no_capacity", "message": "no node"}}  # fmt: skip
    assert summary(failed) == ["f  circuit  FAILED", "error: no_capacity: no node"]
