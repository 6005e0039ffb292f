"""The operator commands of the data plane, as real subprocesses: `qmesh projections rebuild`
against a real MongoDB-wire server, and `qmesh log` filters."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.store import mongo_fixtures
from tests.store.mongo_fixtures import event_count, finish_job, migrated_db, start_job

from quantum_mesh.store.peerlog import PeerLog

docserver = mongo_fixtures.docserver
mongo_url = mongo_fixtures.mongo_url
mongo_db_name = mongo_fixtures.mongo_db_name


def _qmesh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantum_mesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_projections_rebuild_command_replays_every_event(
    sqlite_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    async def seed() -> int:
        db = await migrated_db(sqlite_url)
        try:
            await start_job(db, "job-1")
            await finish_job(db, "job-1")
            return await event_count(db)
        finally:
            await db.dispose()

    events = asyncio.run(seed())
    out = _qmesh(
        "projections",
        "rebuild",
        env={
            "QMESH_DATABASE_URL": sqlite_url,
            "QMESH_MONGO_URL": f"{mongo_url.rstrip('/')}/{mongo_db_name}",
        },
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"replayed {events} events"
    missing = _qmesh("projections", "rebuild", env={"QMESH_MONGO_URL": ""})
    assert missing.returncode == 2 and "QMESH_MONGO_URL" in missing.stderr


def test_log_command_filters_by_job_peer_and_event(tmp_path: Path) -> None:
    coordinator = PeerLog(tmp_path / "logs" / "coordinator.jsonl", peer_id="12D3KooWCoord")
    node = PeerLog(tmp_path / "nodes" / "node-0.peerlog.jsonl", peer_id="12D3KooWNode0")
    coordinator.append("job.update", job_id="j1", status="QUEUED")
    node.append("invoke.finished", job_id="j1", method="execute_fragment", ok=True)
    node.append("invoke.finished", job_id="j2", method="execute_fragment", ok=True)
    coordinator.append("reservation.committed", job_id="j2")
    coordinator.close()
    node.close()

    def entries(*filters: str) -> list[dict]:
        out = _qmesh("log", "--data-dir", str(tmp_path), "--json", *filters)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    assert [(e["event"], e["job_id"]) for e in entries("--job", "j1")] == [
        ("job.update", "j1"),
        ("invoke.finished", "j1"),
    ]
    assert {e["peer"] for e in entries("--peer", "12D3KooWNode")} == {"12D3KooWNode0"}
    assert [e["job_id"] for e in entries("--event", "invoke.*")] == ["j1", "j2"]
    empty = _qmesh("log", "--data-dir", str(tmp_path / "nothing"))
    assert empty.returncode == 1 and "No peer logs" in empty.stderr
