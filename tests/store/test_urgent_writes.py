"""Urgent writes (a new job's row) pass queued ordinary writes and are committed promptly;
a write that fails in a group formed on the fly fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from quantum_mesh.control import repository as repo
from quantum_mesh.store import database
from quantum_mesh.store.database import Database, run_migrations
from quantum_mesh.store.tables import ExecutionEvent


def _event(kind: str, ran: list[str]) -> Callable[[Session], str]:
    def op(session: Session) -> str:
        ran.append(kind)
        repo.append_event(session, job_id="job-1", event_type=kind, payload={})
        return kind

    return op


class _Held:
    """A database whose writer is held inside a first write until ``gate`` is set."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.ran: list[str] = []
        self.gate = threading.Event()

    def blocker(self, session: Session) -> None:
        self.gate.wait(timeout=30)
        self.ran.append("blocker")


@pytest.fixture
async def held(sqlite_url: str) -> AsyncIterator[_Held]:
    await asyncio.to_thread(run_migrations, sqlite_url)
    state = _Held(sqlite_url)
    try:
        yield state
    finally:
        state.gate.set()
        await state.db.dispose()


async def _committed(db: Database) -> list[str]:
    async with db.transaction() as session:
        rows = await session.execute(select(ExecutionEvent).order_by(ExecutionEvent.seq))
        return [e.event_type for e in rows.scalars()]


async def test_an_urgent_write_runs_before_queued_ones_and_is_committed_first(
    held: _Held, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A group holding an urgent write closes right after it: its caller is answered before
    # any of the backlog is run.
    monkeypatch.setattr(database, "URGENT_GROUP_S", 0.0)
    db, ran, gate = held.db, held.ran, held.gate

    visible_before_backlog: list[list[str]] = []

    def probe(session: Session) -> str:
        # What another connection sees when the backlog's first write runs: committed rows.
        other = sqlite3.connect(sqlite_url.split(":///", 1)[1])
        try:
            rows = other.execute("SELECT event_type FROM execution_events ORDER BY seq")
            visible_before_backlog.append([kind for (kind,) in rows])
        finally:
            other.close()
        return _event("o0", ran)(session)

    try:
        busy = asyncio.ensure_future(db.write(held.blocker))
        await asyncio.sleep(0.05)  # the writer is inside the blocker's group now
        ordinary = [asyncio.ensure_future(db.write(probe))]
        ordinary += [asyncio.ensure_future(db.write(_event(f"o{n}", ran))) for n in range(1, 5)]
        urgent = asyncio.ensure_future(db.write(_event("submit", ran), urgent=True))
        await asyncio.sleep(0.05)
        gate.set()
        assert await urgent == "submit"
        await asyncio.gather(busy, *ordinary)

        assert ran[:2] == ["blocker", "submit"]
        assert ran[2:] == [f"o{n}" for n in range(5)]  # the ordinary ones keep their order
        # The submit's group was committed before any of the backlog ran.
        assert visible_before_backlog == [["submit"]]
        assert await _committed(db) == ["submit", *[f"o{n}" for n in range(5)]]
    finally:
        gate.set()


async def test_a_failing_write_in_a_group_fails_alone_and_the_rest_commit_in_order(
    held: _Held,
) -> None:
    db, ran, gate = held.db, held.ran, held.gate

    def broken(session: Session) -> None:
        ran.append("broken")
        raise RuntimeError("this write fails")

    try:
        busy = asyncio.ensure_future(db.write(held.blocker))
        await asyncio.sleep(0.05)
        first = asyncio.ensure_future(db.write(_event("a", ran)))
        failing = asyncio.ensure_future(db.write(broken))
        urgent = asyncio.ensure_future(db.write(_event("submit", ran), urgent=True))
        last = asyncio.ensure_future(db.write(_event("b", ran)))
        await asyncio.sleep(0.05)
        gate.set()
        await busy
        with pytest.raises(RuntimeError, match="this write fails"):
            await failing
        assert [await urgent, await first, await last] == ["submit", "a", "b"]
        # Rolled back once and run again (writes may run more than once), order kept.
        assert await _committed(db) == ["submit", "a", "b"]
        assert ran.count("broken") == 1
    finally:
        gate.set()


def _place_in_group(session: Session) -> int:
    """How many writes this write's group has run, itself included."""
    session.info["writes"] = session.info.get("writes", 0) + 1
    return int(session.info["writes"])


@pytest.mark.parametrize(("max_group_s", "places"), [(0.0, [1, 1, 1, 1]), (60.0, [2, 3, 4, 5])])
async def test_a_group_stops_taking_writes_once_it_has_run_long_enough(
    held: _Held, monkeypatch: pytest.MonkeyPatch, max_group_s: float, places: list[int]
) -> None:
    # Under a steady backlog nothing else closes a group; a long one holds up the next
    # submit's write for all of its length.
    monkeypatch.setattr(database, "MAX_GROUP_S", max_group_s)
    db, gate = held.db, held.gate

    def blocker(session: Session) -> None:
        _place_in_group(session)
        held.blocker(session)

    try:
        busy = asyncio.ensure_future(db.write(blocker))
        await asyncio.sleep(0.05)  # the writer is inside the blocker's group now
        queued = [asyncio.ensure_future(db.write(_place_in_group)) for _ in range(4)]
        await asyncio.sleep(0.05)
        gate.set()
        await busy
        assert await asyncio.gather(*queued) == places
    finally:
        gate.set()


async def test_a_cancelled_caller_still_has_its_write_committed(held: _Held) -> None:
    """The caller's wait is cancelled, not its write: it commits, and a write awaited after
    it sees it; a write that raises still raises in its own caller."""
    blocker = asyncio.ensure_future(held.db.write(held.blocker))
    await asyncio.sleep(0.05)  # the writer is inside the blocker
    waiting = asyncio.ensure_future(held.db.write(_event("cancelled_caller", held.ran)))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    held.gate.set()
    await blocker

    def boom(session: Session) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await held.db.write(boom)
    assert await held.db.write(_event("after", held.ran)) == "after"
    assert await _committed(held.db) == ["cancelled_caller", "after"]
