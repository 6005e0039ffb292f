"""Shared helpers for benchmarks that drive a live coordinator on 127.0.0.1."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.live import LiveCoordinator  # noqa: E402

from quantum_mesh.startup import RUNTIME_MODULE  # noqa: E402


def start_coordinator(*, nodes: int, env: dict[str, str] | None = None) -> LiveCoordinator:
    """A `qmesh coordinator` subprocess with ``nodes`` embedded nodes, in a temp dir."""
    data_dir = Path(tempfile.mkdtemp(prefix="qmesh-bench-"))
    return LiveCoordinator(data_dir, embedded_nodes=nodes, env=env).start()


PARTS = ("coordinator", "nodes", "other")


def cpu_seconds(root_pid: int) -> dict[str, float]:
    """CPU seconds so far of the coordinator, its node processes and its other children."""
    root = psutil.Process(root_pid)
    spent = dict.fromkeys(PARTS, 0.0)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            command = " ".join(proc.cmdline())
        except psutil.Error:  # a process that ended meanwhile
            continue
        if proc.pid == root_pid or RUNTIME_MODULE in command:
            part = "coordinator"  # the API front's job runtime is the coordinator's other half
        elif "quantum_mesh.node" in command or "multiprocessing.spawn" in command:
            part = "nodes"
        else:
            part = "other"
        spent[part] += times.user + times.system
    return spent


def run_benchmark(
    coord: LiveCoordinator, body: dict[str, Any], *, timeout: float
) -> dict[str, Any]:
    r = coord.http.post("/workflows/benchmarks", json=body)
    r.raise_for_status()
    done = coord.wait_job(r.json()["benchmark_id"], timeout=timeout, path="/workflows/benchmarks/")
    if done["status"] != "COMPLETED":
        raise RuntimeError(f"benchmark failed: {done['error']}")
    return done["comparison"]  # type: ignore[no-any-return]
