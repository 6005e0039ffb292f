"""The data plane around a live coordinator: provenance bundles, a MongoDB outage that
degrades /ready without failing jobs, and the peer log read back with `qmesh log`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.circuits import BELL_QASM2 as BELL
from tests.support.live import LiveCoordinator, wait_until

from quantum_mesh.store.mongo.docserver import EmbeddedDocServer


def _submit_and_wait(coord: LiveCoordinator, seed: int) -> dict:
    job_id = coord.http.post("/circuits/submit", json={"circuit": BELL, "seed": seed}).json()[
        "job_id"
    ]
    job = coord.wait_job(job_id)
    assert job["status"] == "COMPLETED", job
    return job


def test_mongo_outage_degrades_ready_and_projections_catch_up(tmp_path: Path, pg_url: str) -> None:
    server = EmbeddedDocServer(storage_dir=tmp_path / "mongo", watchdog=False)
    url = asyncio.run(server.start())
    coord = LiveCoordinator(
        tmp_path / "coord",
        database_url=pg_url,
        embedded_nodes=2,
        env={"QMESH_MONGO_URL": f"{url.rstrip('/')}/qmesh_e2e"},
    )
    coord.start()
    try:
        first = _submit_and_wait(coord, seed=1)
        wait_until(
            lambda: coord.http.get(f"/jobs/{first['job_id']}/provenance").status_code == 200,
            timeout=30,
            what="first provenance bundle",
        )
        bundle = coord.http.get(f"/jobs/{first['job_id']}/provenance").json()
        assert bundle["status"] == "COMPLETED" and len(bundle["result_hash"]) == 64
        assert {n["node_id"] for n in bundle["nodes"]} >= {
            f["node_id"] for f in first["fragment_results"]
        }
        assert any(e["event_type"] == "fragment_completed" for e in bundle["events"])

        asyncio.run(server.stop(grace_s=0))
        wait_until(lambda: coord.http.get("/ready").status_code == 503, timeout=30, what="degraded")
        ready = coord.http.get("/ready").json()
        assert "document_store" in ready["failing"]
        during = _submit_and_wait(coord, seed=2)  # jobs keep running on Postgres alone
        r = coord.http.get(f"/jobs/{during['job_id']}/provenance")
        assert r.status_code == 503 and r.json()["error"]["code"] == "document_store_unavailable"

        asyncio.run(server.start())
        wait_until(
            lambda: coord.http.get("/ready").status_code == 200, timeout=60, what="recovered"
        )
        wait_until(
            lambda: coord.http.get(f"/jobs/{during['job_id']}/provenance").status_code == 200,
            timeout=60,
            what="projection caught up",
        )
    finally:
        coord.stop()
        asyncio.run(server.stop(grace_s=0))


def test_embedded_default_peer_log_and_provenance(tmp_path: Path) -> None:
    # No database URL and no Mongo URL: the embedded default (SQLite + local document server).
    with LiveCoordinator(tmp_path / "coord", embedded_nodes=2) as coord:
        ready = coord.http.get("/ready").json()
        assert ready["parts"]["document_store"] == "up"
        job = _submit_and_wait(coord, seed=3)
        wait_until(
            lambda: coord.http.get(f"/jobs/{job['job_id']}/provenance").status_code == 200,
            timeout=30,
            what="provenance",
        )
        topo = coord.http.get("/discovery/topology").json()
        assert len(topo["nodes"]) == 3 and topo["links"]

        # The nodes measure their links to each other (libp2p ping) and advertise them.
        def node_links() -> list[dict[str, Any]]:
            topo = coord.http.get("/discovery/network/topology").json()
            return [link for link in topo["links"] if link["kind"] == "node"]

        wait_until(lambda: len(node_links()) == 2, timeout=60, what="node-to-node links")
        links = node_links()
        nodes = {n["id"] for n in topo["nodes"] if n["role"] == "service_node"}
        assert {(link["source"], link["target"]) for link in links} == {
            (a, b) for a in nodes for b in nodes if a != b
        }
        assert all(0 < link["latency_ms"] < 1000 for link in links)
        assert all(link["measured_by"] == link["source"] for link in links)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "quantum_mesh.cli",
                "log",
                "--data-dir",
                str(coord.data_dir),
                "--job",
                job["job_id"],
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        entries = [json.loads(line) for line in out.stdout.splitlines()]
        events = {e["event"] for e in entries}
        assert {
            "job.update",
            "reservation.committed",
            "execution.fragment_completed",
            "invoke.finished",
        } <= events
        assert all(e.get("job_id") == job["job_id"] for e in entries)
        peers = {e["peer"] for e in entries}
        assert len(peers) >= 2  # the coordinator's log and at least one node's log

        def scraped() -> str | None:
            text = coord.http.get(f"{coord.base_url}/metrics").text
            return text if "qmesh_jobs{" in text else None

        text = wait_until(scraped, timeout=15, what="jobs-by-state gauge")
        for name in (
            "qmesh_job_transitions_total",
            "qmesh_mesh_invoke_duration_seconds",
            "qmesh_fragment_duration_seconds",
            "qmesh_node_fresh",
        ):
            assert name in text, name


def _projector_pid(coord: LiveCoordinator) -> int | None:
    try:
        pid = int((coord.data_dir / "projector.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def test_the_projector_runs_in_a_process_of_its_own_and_is_restarted(tmp_path: Path) -> None:
    """Projections are caught up by a child process, not on the API loop; a projector that
    dies is started again and catches up what happened meanwhile."""
    with LiveCoordinator(tmp_path / "coord", embedded_nodes=1) as coord:
        first = _submit_and_wait(coord, seed=5)
        wait_until(
            lambda: coord.http.get(f"/jobs/{first['job_id']}/provenance").status_code == 200,
            timeout=30,
            what="provenance",
        )
        pid = _projector_pid(coord)
        assert pid is not None and pid != coord.proc.pid
        os.kill(pid, signal.SIGKILL)
        during = _submit_and_wait(coord, seed=6)  # jobs do not wait for projections
        wait_until(
            lambda: _projector_pid(coord) not in (None, pid), timeout=30, what="a new projector"
        )
        wait_until(
            lambda: coord.http.get(f"/jobs/{during['job_id']}/provenance").status_code == 200,
            timeout=30,
            what="the new projector caught up",
        )
        assert coord.http.get("/ready").json()["parts"]["document_store"] == "up"
        assert "projector.process_exited" in coord.log_tail(1_000_000)


def test_the_projector_can_stay_on_the_api_loop(tmp_path: Path) -> None:
    env = {"QMESH_PROJECTOR_PROCESS": "false"}
    with LiveCoordinator(tmp_path / "coord", embedded_nodes=1, env=env) as coord:
        job = _submit_and_wait(coord, seed=7)
        wait_until(
            lambda: coord.http.get(f"/jobs/{job['job_id']}/provenance").status_code == 200,
            timeout=30,
            what="provenance",
        )
        assert _projector_pid(coord) is None
