"""Writes queued behind (``Database.write_behind``) are committed in order with the awaited
ones: durable before any write queued after them, a failure only logged."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from quantum_mesh.control import repository as repo
from quantum_mesh.store.database import Database, run_migrations
from quantum_mesh.store.tables import ExecutionEvent


def _event(kind: str) -> Callable[[Session], None]:
    def op(session: Session) -> None:
        repo.append_event(session, job_id="job-1", event_type=kind, payload={})

    return op


def _broken(_session: Session) -> None:
    raise RuntimeError("this write fails")


async def test_behind_writes_commit_in_order_before_later_ones(sqlite_url: str) -> None:
    await asyncio.to_thread(run_migrations, sqlite_url)
    db = Database(sqlite_url)
    committed: list[str] = []
    try:
        # From the loop and from another thread (a workflow driver's), interleaved.
        db.write_behind(_event("checkpoint-1"), then=lambda: committed.append("checkpoint-1"))
        worker = threading.Thread(target=db.write_behind, args=(_event("checkpoint-2"),))
        worker.start()
        worker.join()
        db.write_behind(_broken)  # fails alone: logged, the others still commit
        await db.write(_event("status"))
        async with db.transaction() as session:
            rows = await session.execute(select(ExecutionEvent).order_by(ExecutionEvent.seq))
            kinds = [e.event_type for e in rows.scalars()]
        assert kinds == ["checkpoint-1", "checkpoint-2", "status"]
        assert committed == ["checkpoint-1"]

        db.write_behind(_event("unit_completed"))
        await db.flush()
        async with db.transaction() as session:
            last = await repo.latest_event(session, job_id="job-1", event_type="unit_completed")
        assert last is not None and last.at <= datetime.now(UTC)
    finally:
        await db.dispose()
