"""The same Alembic migrations run on the real PostgreSQL and on the embedded SQLite."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import inspect

from quantum_mesh.control import repository as repo
from quantum_mesh.control.states import JobStatus
from quantum_mesh.errors import Conflict
from quantum_mesh.store.database import Database, run_migrations

EXPECTED_TABLES = {
    "jobs",
    "execution_plans",
    "fragment_executions",
    "execution_events",
    "enrollments",
    "reservations",
    "reservation_events",
    "peer_snapshots",
    "fidelity_samples",
    "alembic_version",
}


async def _tables(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def _exercise(url: str) -> None:
    await asyncio.to_thread(run_migrations, url)
    await asyncio.to_thread(run_migrations, url)  # idempotent: a second upgrade is a no-op
    db = Database(url)
    try:
        assert await _tables(db) >= EXPECTED_TABLES
        async with db.transaction() as s:
            job = await repo.create_job(
                s, job_id="j1", kind="circuit", request={"x": 1}, idempotency_key="k1"
            )
        async with db.transaction() as s:
            job = await repo.get_job(s, job_id="j1", for_update=True)
            await repo.transition_job(s, job=job, to=JobStatus.COMPILING)
        with pytest.raises(Conflict):
            async with db.transaction() as s:
                job = await repo.get_job(s, job_id="j1")
                await repo.transition_job(s, job=job, to=JobStatus.COMPLETED)
        async with db.transaction() as s:
            events = await repo.list_events(s, job_id="j1")
            assert [e.payload["status"] for e in events] == ["QUEUED", "COMPILING"]
            assert [e.seq for e in events] == sorted(e.seq for e in events)
            found = await repo.get_job_by_idempotency_key(s, key="k1")
            assert found is not None and found.status == "COMPILING"
    finally:
        await db.dispose()


async def test_migrations_on_postgres(pg_url: str) -> None:
    await _exercise(pg_url)


async def test_migrations_on_sqlite(sqlite_url: str) -> None:
    await _exercise(sqlite_url)
