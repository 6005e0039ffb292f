"""``repo.advance_job``: on PostgreSQL a job's move and its status event in one statement,
with the same rows as the lock-update-insert path; a stale belief or a move the table does
not allow changes nothing; elsewhere it declines."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from quantum_mesh.control import repository as repo
from quantum_mesh.control.states import JobStatus
from quantum_mesh.store.database import Database, run_migrations
from quantum_mesh.store.tables import ExecutionEvent, Job


def _create(session: Session, job_id: str) -> None:
    repo.create_job(
        session, job_id=job_id, kind="circuit", request={"circuit": "x"}, idempotency_key=None
    )


async def _rows(db: Database, job_id: str) -> tuple[Job, list[ExecutionEvent]]:
    async with db.transaction() as session:
        job = await session.get(Job, job_id)
        events = (
            await session.execute(
                select(ExecutionEvent)
                .where(ExecutionEvent.job_id == job_id)
                .order_by(ExecutionEvent.seq)
            )
        ).scalars()
        assert job is not None
        return job, list(events)


async def test_on_postgres_a_move_is_one_statement_with_the_usual_rows(pg_url: str) -> None:
    await asyncio.to_thread(run_migrations, pg_url)
    db = Database(pg_url)
    try:
        await db.write(lambda s: (_create(s, "fast"), _create(s, "slow")))

        def fast(session: Session) -> tuple[Job, int] | None:
            return repo.advance_job(
                session,
                job_id="fast",
                expected=JobStatus.QUEUED,
                to=JobStatus.FAILED,
                error={"code": "x", "message": "y"},
                progress={"done": 1},
            )

        def slow(session: Session) -> int:
            job = repo.lock_job(session, job_id="slow")
            return repo.transition_job(
                session,
                job=job,
                to=JobStatus.FAILED,
                error={"code": "x", "message": "y"},
                progress={"done": 1},
            )

        moved = await db.write(fast)
        await db.write(slow)
        assert moved is not None
        job, seq = moved
        assert (job.job_id, job.status, job.kind) == ("fast", "FAILED", "circuit")
        assert job.error == {"code": "x", "message": "y"} and job.request == {"circuit": "x"}

        (a, a_events), (b, b_events) = await _rows(db, "fast"), await _rows(db, "slow")
        for column in ("status", "error", "progress", "result", "plan_id", "request", "kind"):
            assert getattr(a, column) == getattr(b, column), column
        assert a.updated_at >= a.created_at
        assert [(e.event_type, e.payload) for e in a_events] == [
            (e.event_type, e.payload) for e in b_events
        ]
        assert a_events[-1].seq == seq

        # Not in the believed state, or a move the table refuses: nothing changes.
        for expected, to in (
            (JobStatus.QUEUED, JobStatus.COMPLETED),  # it is FAILED now
            (JobStatus.FAILED, JobStatus.EXECUTING),  # no way out of FAILED
        ):
            stale = await db.write(
                lambda s, e=expected, t=to: repo.advance_job(s, job_id="fast", expected=e, to=t)
            )
            assert stale is None
        assert (
            await _rows(db, "fast") == (a, a_events)
            or (await _rows(db, "fast"))[0].status == "FAILED"
        )
        assert len((await _rows(db, "fast"))[1]) == len(a_events)
    finally:
        await db.dispose()


async def test_elsewhere_it_declines(sqlite_url: str) -> None:
    await asyncio.to_thread(run_migrations, sqlite_url)
    db = Database(sqlite_url)
    try:
        await db.write(lambda s: _create(s, "j"))
        declined = await db.write(
            lambda s: repo.advance_job(
                s, job_id="j", expected=JobStatus.QUEUED, to=JobStatus.COMPILING
            )
        )
        assert declined is None
        assert (await _rows(db, "j"))[0].status == "QUEUED"
    finally:
        await db.dispose()


@pytest.mark.parametrize("through", [False, True])
async def test_a_chain_of_moves_is_one_statement_each_with_its_own_event(
    pg_url: str, through: bool
) -> None:
    """``JobManager.transition``'s helper: the states passed on the way and the last one,
    each with its status event, the last one with the fields."""
    from quantum_mesh.control.jobs import _advanced

    await asyncio.to_thread(run_migrations, pg_url)
    db = Database(pg_url)
    try:
        await db.write(lambda s: _create(s, "j"))
        steps = (
            [JobStatus.COMPILING, JobStatus.RESERVING, JobStatus.EXECUTING]
            if through
            else [JobStatus.COMPILING]
        )
        moves = await db.write(lambda s: _advanced(s, "j", JobStatus.QUEUED, steps, plan_id="p-1"))
        assert moves is not None
        assert [m[1] for m in moves] == steps
        job, events = await _rows(db, "j")
        assert job.status == steps[-1].value and job.plan_id == "p-1"
        moved = [e for e in events if e.event_type == "status"][1:]  # after QUEUED's
        assert [e.payload["status"] for e in moved] == [s.value for s in steps]
        assert [m[2] for m in moves] == [e.seq for e in moved]
        # A chain the table refuses is declined before anything is written.
        assert await db.write(lambda s: _advanced(s, "j", JobStatus.QUEUED, steps)) is None
    finally:
        await db.dispose()
