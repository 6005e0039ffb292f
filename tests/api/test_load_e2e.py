"""Busy never means failed: a burst of jobs on one small node, and the only node restarting.

A real coordinator with one embedded node (2 workers) and the rate limiter raised out of the
way. Nothing here asserts times; only that every job ends COMPLETED."""

from __future__ import annotations

import json
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.support.circuits import BELL_QASM2 as BELL
from tests.support.live import LiveCoordinator, wait_until

EMBEDDED_NODES = 1
COORD_ENV = {"QMESH_NODE_WORKERS": "2", "QMESH_RATE_LIMIT_PER_MINUTE": "1000000"}
BURST = 200

pytestmark = pytest.mark.slow


def _submit(client: httpx.Client, seed: int) -> str:
    r = client.post("/circuits/submit", json={"circuit": BELL, "shots": 64, "seed": seed})
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def test_a_burst_of_jobs_on_one_node_all_complete(coord: LiveCoordinator) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:

        def submit(seed: int) -> str:
            with httpx.Client(base_url=coord.http.base_url, timeout=60.0) as client:
                return _submit(client, seed)

        job_ids = list(pool.map(submit, range(BURST)))
    statuses: dict[str, str] = {}

    def all_terminal() -> bool:
        for job_id in job_ids:
            if job_id in statuses:
                continue
            body = coord.http.get(f"/jobs/{job_id}").json()
            if body["status"] in {"COMPLETED", "FAILED", "CANCELLED"}:
                statuses[job_id] = body["status"]
                if body["status"] != "COMPLETED":
                    raise AssertionError(json.dumps(body["error"])[:2000])
        return len(statuses) == len(job_ids)

    wait_until(all_terminal, timeout=600, interval=0.5, what=f"{BURST} jobs terminal")
    assert set(statuses.values()) == {"COMPLETED"}
    metrics = httpx.get(f"{coord.base_url}/metrics", timeout=30).text
    assert "qmesh_work_queue_wait_seconds_count" in metrics
    assert "qmesh_work_queue_depth" in metrics
    # Every job took one of the running places (QMESH_MAX_RUNNING_JOBS), after a wait or not.
    started = re.search(r"^qmesh_job_start_wait_seconds_count (\S+)$", metrics, re.MULTILINE)
    assert started is not None and float(started.group(1)) >= BURST


def _node_pid(data_dir: Path) -> int:
    ready = data_dir / "nodes" / "node-0.ready.json"
    return int(json.loads(ready.read_text())["pid"])


def test_the_only_node_restarting_means_wait(coord: LiveCoordinator) -> None:
    """Kill the only node and submit at once: the job waits for the supervisor's restart."""
    old_pid = _node_pid(coord.data_dir)
    os.kill(old_pid, signal.SIGKILL)
    job_id = _submit(coord.http, seed=7)
    job = coord.wait_job(job_id, timeout=180)
    assert job["status"] == "COMPLETED", json.dumps(job["error"])[:2000]
    assert _node_pid(coord.data_dir) != old_pid
    statuses = [
        e["payload"]["status"]
        for e in coord.http.get(f"/jobs/{job_id}/events").json()["items"]
        if e["event_type"] == "status"
    ]
    assert statuses == ["QUEUED", "COMPILING", "RESERVING", "EXECUTING", "COMPLETED"]
