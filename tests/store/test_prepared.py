"""Prepared hot-path statements (``store/prepared.py``) write and read what SQLAlchemy's own
execution path does, on the real PostgreSQL and on the embedded SQLite."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from quantum_mesh.store.database import Database, run_migrations
from quantum_mesh.store.prepared import Prepared
from quantum_mesh.store.tables import ExecutionEvent, Job

JOBS = Job.__table__
EVENTS = ExecutionEvent.__table__
assert isinstance(JOBS, Table) and isinstance(EVENTS, Table)
INSERT_JOB = Prepared(insert(JOBS))
LOCK_JOB = Prepared(select(JOBS).where(JOBS.c.job_id == bindparam("job_id")).with_for_update())
UPDATE_JOB = Prepared(update(JOBS).where(JOBS.c.job_id == bindparam("b_job_id")))
INSERT_EVENT = Prepared(insert(EVENTS).returning(EVENTS.c.seq))
INSERT_EVENTS = Prepared(insert(EVENTS))


def _job_row(job_id: str, at: datetime) -> dict[str, object]:
    return {
        "job_id": job_id,
        "kind": "circuit",
        "status": "QUEUED",
        # numpy values go through the engine's JSON serializer (their array form), as on
        # SQLAlchemy's path
        "request": {"circuit": "h q[0];", "angles": np.array([0.5, 1.5])},
        "plan_id": None,
        "error": None,
        "progress": None,
        "result": None,
        "idempotency_key": "key-1",
        "owner": "alice",
        "created_at": at,
        "updated_at": at,
    }


async def _exercise(url: str) -> None:
    await asyncio.to_thread(run_migrations, url)
    db = Database(url)
    job_id = str(uuid.uuid4())
    at = datetime(2026, 12, 3, 5, 0, 1, 123456, tzinfo=UTC)
    try:

        def write(session: Session) -> tuple[int, list[int], dict[str, object] | None]:
            INSERT_JOB.execute(session, _job_row(job_id, at))
            seq = int(INSERT_EVENT.scalar(session, _event(job_id, "status", at)))
            INSERT_EVENTS.execute_many(
                session, [_event(job_id, "progress", at), _event(job_id, "checkpoint", at)]
            )
            UPDATE_JOB.execute(
                session, {"status": "COMPILING", "progress": {"done": 1}, "b_job_id": job_id}
            )
            seqs = [int(s) for s in session.execute(select(EVENTS.c.seq)).scalars()]
            return seq, seqs, LOCK_JOB.first(session, {"job_id": job_id})

        seq, seqs, locked = await db.write(write)
        assert seq == min(seqs) and len(seqs) == 3
        assert locked is not None
        assert locked["status"] == "COMPILING"
        assert locked["request"]["circuit"] == "h q[0];"
        assert locked["request"]["angles"]["shape"] == [2]
        assert locked["progress"] == {"done": 1}
        assert locked["error"] is None and locked["result"] is None
        assert locked["created_at"] == at and locked["created_at"].utcoffset().total_seconds() == 0

        # SQLAlchemy's own path reads the same row, and None was stored as SQL NULL.
        async with db.transaction() as session:
            job = (await session.execute(select(Job).where(Job.job_id == job_id))).scalar_one()
            nulls = (
                await session.execute(
                    select(JOBS.c.error.is_(None), JOBS.c.result.is_(None)).where(
                        JOBS.c.job_id == job_id
                    )
                )
            ).one()
            events = list(
                (
                    await session.execute(select(ExecutionEvent).order_by(ExecutionEvent.seq))
                ).scalars()
            )
        assert (job.status, job.owner, job.idempotency_key) == ("COMPILING", "alice", "key-1")
        assert job.request == locked["request"] and job.created_at == at
        assert tuple(nulls) == (True, True)
        assert [e.event_type for e in events] == ["status", "progress", "checkpoint"]
        assert events[0].payload == {"status": "QUEUED"} and events[0].at == at

        def duplicate(session: Session) -> None:
            INSERT_JOB.execute(session, _job_row(job_id, at))

        with pytest.raises(IntegrityError):
            await db.write(duplicate)

        def missing(session: Session) -> dict[str, object] | None:
            return LOCK_JOB.first(session, {"job_id": "nope"})

        assert await db.write(missing) is None
    finally:
        await db.dispose()


def _event(job_id: str, event_type: str, at: datetime) -> dict[str, object]:
    return {
        "job_id": job_id,
        "event_type": event_type,
        "fragment_id": None,
        "node_id": None,
        "attempt": None,
        "payload": {"status": "QUEUED"} if event_type == "status" else {"n": 1},
        "at": at,
    }


async def test_prepared_statements_on_postgres(pg_url: str) -> None:
    await _exercise(pg_url)


async def test_prepared_statements_on_sqlite(sqlite_url: str) -> None:
    await _exercise(sqlite_url)
