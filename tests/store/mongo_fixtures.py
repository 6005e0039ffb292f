"""A real SecantusDB (MongoDB wire protocol) over TCP for the data-plane tests.

Import into a conftest with
``from tests.store.mongo_fixtures import docserver, mongo_db_name, mongo_url  # noqa: F401``.
The server is one child process per test session on a free port in a temporary directory,
started and stopped from short-lived event loops (the child is not tied to either).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session

from quantum_mesh.control import repository as repo
from quantum_mesh.control.states import JobStatus
from quantum_mesh.store.database import Database, run_migrations
from quantum_mesh.store.mongo.docserver import EmbeddedDocServer


@pytest.fixture(scope="session")
def docserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedDocServer]:
    server = EmbeddedDocServer(storage_dir=tmp_path_factory.mktemp("docserver"), watchdog=False)
    asyncio.run(server.start())
    try:
        yield server
    finally:
        # Throwaway data: SIGKILL at once instead of a ~4 s clean shutdown.
        asyncio.run(server.stop(grace_s=0))


@pytest.fixture
def mongo_url(docserver: EmbeddedDocServer) -> str:
    return docserver.url


@pytest.fixture
def mongo_db_name() -> str:
    """A database of its own for one test, on the shared server."""
    return f"qmesh_test_{uuid.uuid4().hex[:12]}"


# --- helpers: jobs written through the real repository functions ---------------------------
QASM = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\ncx q[0], q[1];\n'
NODE_A = "12D3KooWNodeAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
NODE_B = "12D3KooWNodeBbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"


async def migrated_db(url: str) -> Database:
    await asyncio.to_thread(run_migrations, url)
    return Database(url)


async def start_job(db: Database, job_id: str, *, seed: int = 7) -> None:
    """QUEUED → COMPILING → EXECUTING with a plan and one completed fragment."""
    from datetime import UTC, datetime

    request = {"circuit": QASM, "shots": 128, "seed": seed}
    plan_id = f"plan-{job_id}"

    def create(s: Session) -> None:
        repo.create_job(s, job_id=job_id, kind="circuit", request=request, idempotency_key=None)

    def plan(s: Session) -> None:
        job = repo.lock_job(s, job_id=job_id)
        repo.transition_job(s, job=job, to=JobStatus.COMPILING)
        repo.save_plan(
            s,
            plan_id=plan_id,
            job_id=job_id,
            plan={
                "plan_id": plan_id,
                "fragments": [
                    {
                        "fragment_id": "f0",
                        "service_type": "bell_pair",
                        "qubits": [0, 1],
                        "primary_node": NODE_A,
                        "fallback_nodes": [NODE_B],
                    }
                ],
            },
        )
        repo.transition_job(s, job=job, to=JobStatus.EXECUTING, plan_id=plan_id)

    def fragment(s: Session) -> None:
        now = datetime.now(UTC)
        repo.record_fragment(
            s,
            job_id=job_id,
            fragment_id="f0",
            node_id=NODE_A,
            attempts=1,
            started_at=now,
            finished_at=now,
            observed_fidelity=0.98,
            output={"wave": 0},
        )
        repo.append_event(
            s,
            job_id=job_id,
            event_type="fragment_completed",
            fragment_id="f0",
            node_id=NODE_A,
            attempt=1,
            payload={"observed_fidelity": 0.98},
        )

    for write in (create, plan, fragment):
        await db.write(write)


async def finish_job(db: Database, job_id: str, *, ok: bool = True) -> dict[str, Any] | None:
    """Move a started job to COMPLETED (returns its result) or FAILED."""
    result = {"counts": {"00": 64, "11": 64}, "fidelity": 0.98} if ok else None

    def finish(s: Session) -> None:
        job = repo.lock_job(s, job_id=job_id)
        if ok:
            repo.transition_job(s, job=job, to=JobStatus.COMPLETED, result=result)
        else:
            repo.transition_job(
                s,
                job=job,
                to=JobStatus.FAILED,
                error={"code": "execution_failed", "message": "node vanished"},
            )

    await db.write(finish)
    return result


async def event_count(db: Database) -> int:
    from sqlalchemy import func, select

    from quantum_mesh.store.tables import ExecutionEvent

    async with db.transaction() as s:
        return int((await s.execute(select(func.count()).select_from(ExecutionEvent))).scalar_one())
