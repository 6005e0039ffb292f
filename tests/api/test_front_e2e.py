"""The API front (``QMESH_API_FRONT=true``): a real ``qmesh coordinator`` split into the front
process and the job runtime behind it, with one embedded node, on PostgreSQL.

Circuit submits are answered by the front (journalled, then handed over); everything else —
reads, WebSocket streams, replays with an Idempotency-Key, principals with a quota — goes
through it to the runtime, unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from tests.support.live import LiveCoordinator, wait_until
from websockets.sync.client import connect

BELL = (
    'OPENQASM 2.0; include "qelib1.inc"; qreg q[2]; creg c[2]; '
    "h q[0]; cx q[0],q[1]; measure q -> c;"
)
OPS, ALICE = "ops-key-front-0123456789", "alice-key-front-0123456789"
ACCEPTED_BY = "x-qmesh-accepted-by"
REJECTED_METRIC = "qmesh_jobs_rejected_total"


@pytest.fixture(scope="module")
def coord(
    tmp_path_factory: pytest.TempPathFactory, module_pg_url: str
) -> Iterator[LiveCoordinator]:
    live = LiveCoordinator(
        tmp_path_factory.mktemp("front"),
        database_url=module_pg_url,
        embedded_nodes=1,
        api_key=OPS,
        env={
            "QMESH_API_FRONT": "true",
            "QMESH_PRINCIPALS": f"ops:admin:{OPS},alice:user:{ALICE}",
            "QMESH_QUOTA_ACTIVE_JOBS": "5",
            "QMESH_RATE_LIMIT_PER_MINUTE": "100000",
        },
    )
    with live:
        yield live


def submit(client: httpx.Client, **extra: object) -> httpx.Response:
    return client.post("/circuits/submit", json={"circuit": BELL, "shots": 64, **extra})


def test_a_submit_is_answered_by_the_front_and_readable_at_once(coord: LiveCoordinator) -> None:
    accepted = submit(coord.http, seed=1)
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers[ACCEPTED_BY] == "front"
    job_id = accepted.json()["job_id"]
    assert accepted.json()["status"] == "QUEUED"
    # Forwarded reads wait for the hand-over: the job is there right after its 202.
    first = coord.http.get(f"/jobs/{job_id}")
    assert first.status_code == 200, first.text
    assert first.json()["owner"] == "ops"
    done = coord.wait_job(job_id)
    assert done["status"] == "COMPLETED"
    counts = done["quantum_result"]["counts"]
    assert sum(counts.values()) == 64
    assert set(counts) <= {"00", "11"}


def test_a_job_stream_is_relayed_through_the_front(coord: LiveCoordinator) -> None:
    job_id = submit(coord.http, seed=2).json()["job_id"]
    url = coord.base_url.replace("http", "ws") + f"/api/v1/jobs/{job_id}/events"
    seen = []
    with connect(url, additional_headers={"Authorization": f"Bearer {OPS}"}, open_timeout=30) as ws:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=60))
            seen.append(message.get("status"))
            if message.get("status") in ("COMPLETED", "FAILED"):
                break
    assert seen[-1] == "COMPLETED", seen


def test_bad_input_gets_the_same_structured_errors(coord: LiveCoordinator) -> None:
    bad = coord.http.post("/circuits/submit", json={"circuit": "not qasm at all"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_circuit"
    empty = coord.http.post("/circuits/submit", json={"circuit": "", "shots": 0})
    assert empty.status_code == 422
    assert empty.json()["error"]["code"] == "validation_error"
    stranger = httpx.post(f"{coord.base_url}/api/v1/circuits/submit", json={"circuit": BELL})
    assert stranger.status_code == 401
    assert stranger.json()["error"]["code"] == "unauthorized"
    # The runtime's hand-over path is not reachable from outside.
    inner = httpx.post(f"{coord.base_url}/internal/intake", json={"entries": []})
    assert inner.status_code == 404


def test_replays_and_quota_principals_go_to_the_runtime(coord: LiveCoordinator) -> None:
    key = {"Idempotency-Key": "front-replay-1"}
    first = coord.http.post("/circuits/submit", json={"circuit": BELL, "seed": 3}, headers=key)
    again = coord.http.post("/circuits/submit", json={"circuit": BELL, "seed": 3}, headers=key)
    assert first.status_code == 202, first.text
    assert ACCEPTED_BY not in first.headers
    assert again.json()["job_id"] == first.json()["job_id"]

    with httpx.Client(base_url=coord.http.base_url, headers={"X-API-Key": ALICE}) as alice:
        mine = submit(alice, seed=4)
        assert mine.status_code == 202, mine.text
        assert ACCEPTED_BY not in mine.headers  # the quota is counted in the runtime's write
        assert coord.wait_job(mine.json()["job_id"])["owner"] == "alice"


def bare_front(data_dir: Path, **env: str) -> LiveCoordinator:
    """A started coordinator with the front on and no nodes."""
    return LiveCoordinator(
        data_dir, embedded_nodes=0, env={"QMESH_API_FRONT": "true", **env}
    ).start()


def test_a_journalled_job_survives_a_crash_before_its_hand_over(tmp_path: Path) -> None:
    """A job that was answered 202 and is still only in the journal when the front dies is
    written and run at the next start; a torn last line (never answered) is ignored."""
    data_dir = tmp_path / "crash"
    live = LiveCoordinator(data_dir, embedded_nodes=1, env={"QMESH_API_FRONT": "true"}).start()
    try:
        assert live.proc is not None
        runtime = psutil.Process(live.mesh_pid)
        live.kill()
        # The runtime follows its front down (the parent-death signal), as after a crash.
        runtime.wait(timeout=60)
        job_id = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
        entry = {
            "seq": 41,
            "job_id": job_id,
            "kind": "circuit",
            "request": {"circuit": BELL, "shots": 32, "seed": 5, "min_fidelity": None},
            "owner": "local",
            "accepted_at": "2026-12-01T12:00:00+00:00",
        }
        segment = data_dir / "intake" / "intake-000000000041.jsonl"
        segment.write_text(json.dumps(entry) + "\n" + '{"seq": 42, "job_id": "tor')
        live.restart()
        done = live.wait_job(job_id)
        assert done["status"] == "COMPLETED"
        assert done["created_at"].startswith("2026-12-01T12:00:00")
        # Handed over: the segment is gone; the next submit goes on its own line.
        wait_until(lambda: not segment.exists(), timeout=30, what="the replayed segment deleted")
        after = submit(live.http, seed=6)
        assert after.status_code == 202
        assert live.wait_job(after.json()["job_id"])["status"] == "COMPLETED"
    finally:
        live.stop()


def test_the_front_stops_when_its_runtime_dies(tmp_path: Path) -> None:
    live = bare_front(tmp_path / "orphan")
    try:
        assert live.proc is not None
        os.kill(live.mesh_pid, signal.SIGKILL)
        code = live.proc.wait(timeout=60)
        assert code != 0
        assert "the job runtime exited" in live.log_tail()
    finally:
        live.stop()


def test_admission_counts_jobs_not_yet_handed_over(tmp_path: Path) -> None:
    live = bare_front(tmp_path / "bound", QMESH_MAX_QUEUED_JOBS="1")
    try:
        assert submit(live.http).status_code == 202
        refused = submit(live.http)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["Retry-After"]) >= 1

        def rejected_in_metrics() -> float:
            text = httpx.get(f"{live.base_url}/metrics").text
            lines = [ln for ln in text.splitlines() if ln.startswith(REJECTED_METRIC)]
            return float(lines[0].split()[-1]) if lines else 0.0

        # The front's refusals reach the runtime's /metrics with its next hand-over.
        wait_until(lambda: rejected_in_metrics() >= 1, timeout=30, what="refusal counted")
    finally:
        live.stop()


def test_health_fails_while_the_runtime_does_not_answer(tmp_path: Path) -> None:
    live = bare_front(tmp_path / "silent")
    try:
        assert live.proc is not None
        runtime = psutil.Process(live.mesh_pid)
        assert live.http.get("/health").json() == {"status": "ok"}
        runtime.suspend()
        try:
            silent = wait_until(
                lambda: (r := live.http.get("/health")).status_code == 503 and r,
                timeout=60,
                what="/health to fail",
            )
            assert silent.json()["error"]["details"]["reason"] == "runtime_silent"
        finally:
            runtime.resume()
        wait_until(
            lambda: live.http.get("/health").status_code == 200, timeout=30, what="/health ok"
        )
    finally:
        live.stop()
