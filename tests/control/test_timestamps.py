"""Timestamps read back zone-aware (UTC) from the embedded SQLite as from PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from quantum_mesh.store.database import Database
from quantum_mesh.store.tables import Job


async def test_sqlite_timestamps_come_back_in_utc(db: Database) -> None:
    naive = datetime(2026, 12, 2, 10, 0, 0)
    async with db.transaction() as session:
        session.add(Job(job_id="j1", kind="circuit", status="QUEUED", request={}, created_at=naive))
    async with db.transaction() as session:
        job = (await session.execute(select(Job).where(Job.job_id == "j1"))).scalar_one()
    assert job.created_at == naive.replace(tzinfo=UTC)
    assert job.updated_at.tzinfo is not None
    assert job.created_at.isoformat().endswith("+00:00")
