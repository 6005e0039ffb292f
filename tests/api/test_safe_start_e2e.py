"""A second start with a running coordinator's data directory or ports exits with one line
and leaves the running one untouched (its nodes, document server and ports)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.live import LiveCoordinator, free_port

SECOND_START_TIMEOUT_S = 60


def second_start(data_dir: Path, *, port: int, p2p_port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "quantum_mesh.cli", "coordinator",
            "--data-dir", str(data_dir), "--port", str(port), "--p2p-port", str(p2p_port),
            "--embedded-nodes", "1",
        ],
        capture_output=True,
        text=True,
        timeout=SECOND_START_TIMEOUT_S,
    )  # fmt: skip


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> LiveCoordinator:
    coord = LiveCoordinator(tmp_path_factory.mktemp("first"), embedded_nodes=1).start()
    yield coord  # type: ignore[misc]
    coord.stop()


def assert_untouched(coord: LiveCoordinator) -> None:
    ready = coord.http.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["parts"]["document_store"].startswith(("up", "disabled"))
    assert coord.usable_nodes() == 1


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("data_dir", "is in use by another coordinator"),
        ("port", "HTTP port"),
        ("p2p_port", "libp2p port"),
    ],
)
def test_a_second_start_exits_with_one_line_and_touches_nothing(
    running: LiveCoordinator, tmp_path: Path, what: str, expected: str
) -> None:
    nodes_before = sorted((running.data_dir / "nodes").glob("*"))
    args = {
        "data_dir": running.data_dir if what == "data_dir" else tmp_path / "second",
        "port": running.port if what == "port" else free_port(),
        "p2p_port": running.p2p_port if what == "p2p_port" else free_port(),
    }
    result = second_start(**args)

    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
    assert lines[0].startswith("qmesh coordinator: ")
    assert "Traceback" not in result.stderr
    if what != "data_dir":
        assert not (tmp_path / "second" / "nodes").exists()  # nothing was started
    assert sorted((running.data_dir / "nodes").glob("*")) == nodes_before
    assert_untouched(running)
