"""Async engine/session factory, group-committed writes and programmatic Alembic migrations."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from quantum_mesh.arrays import json_default
from quantum_mesh.logs import get_logger
from quantum_mesh.observability import metrics


def alembic_dir() -> Path:
    """The repository's ``alembic/`` folder (override with QMESH_ALEMBIC_DIR)."""
    override = os.environ.get("QMESH_ALEMBIC_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[4] / "alembic"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["qmesh_explicit_url"] = True
    return cfg


def run_migrations(url: str) -> None:
    """Upgrade the database at ``url`` to head. Blocking: call it in a thread from async code."""
    if url.startswith("sqlite"):
        db_path = url.split(":///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


#: Connections of the embedded SQLite's readers (the writer has its own).
SQLITE_READERS = 16


def make_engine(url: str) -> AsyncEngine:
    """The readers' engine for ``url`` (writes go through :class:`_GroupWriter`).

    JSON columns store numpy arrays in their JSON form (``quantum_mesh.arrays``): a payload
    that arrived as raw arrays over the mesh is stored, not refused."""
    if url.startswith("sqlite"):
        # A fixed pool: aiosqlite runs a thread per connection, so overflow connections
        # (opened and closed again under load) would start a thread and set the pragmas on
        # every burst of reads; beyond the pool, a read waits for a connection instead.
        engine = create_async_engine(
            url,
            json_serializer=_dumps,
            connect_args={"timeout": 30},
            pool_size=SQLITE_READERS,
            max_overflow=0,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url, json_serializer=_dumps, pool_pre_ping=True, pool_size=10, max_overflow=10
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets API reads proceed while the writer writes; FULL sync = durable acks.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _dumps(value: Any) -> str:
    return json.dumps(value, default=json_default)


log = get_logger(__name__)

T = TypeVar("T")
#: A write: runs on the writer's thread with a plain (synchronous) session.
WriteOp = Callable[[Session], Any]
#: Most writes committed together (bounds one transaction's size and latency).
MAX_GROUP = 256
#: A group holding an urgent write (a submit's) is committed this long after it joined.
URGENT_GROUP_S = 0.004
#: A group stops taking writes this long after it started: an urgent write that arrives
#: while a group runs waits for it, and under a steady backlog (no urgent write to close it)
#: groups grew to 100+ writes and 100-250 ms (the submit p99).
MAX_GROUP_S = 0.015


def sync_url(url: str) -> str:
    """The synchronous driver's URL for an async one (the writer's thread needs no loop)."""
    for async_driver, sync_driver in (
        ("sqlite+aiosqlite:", "sqlite+pysqlite:"),
        ("postgresql+asyncpg:", "postgresql+psycopg:"),
    ):
        if url.startswith(async_driver):
            return sync_driver + url[len(async_driver) :]
    return url


def make_sync_engine(url: str) -> Engine:
    """The group-commit writer's engine: one connection, synchronous driver."""
    url = sync_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, json_serializer=_dumps, connect_args={"timeout": 30}, pool_size=1, max_overflow=0
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url, json_serializer=_dumps, pool_pre_ping=True, pool_size=1, max_overflow=0
    )


class _OpFailed(Exception):
    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


_Item = tuple[WriteOp, "Future[Any]"]


class _GroupWriter:
    """A thread with a connection of its own that commits writes in groups.

    Synchronous on purpose: an async driver would hop between this thread, the driver's
    thread and an event loop for every statement, and under load each hop waits for the
    GIL (measured: 7 ms of wall time per write, 2.6 ms of it CPU). Its own connection means
    it never waits behind readers for a pooled one.

    Writes are committed in the order they were queued, except *urgent* ones (a new job's
    row, which a client is waiting for and which no queued write depends on): they are run
    before any queued ordinary write, and a group holding one is committed within
    ``URGENT_GROUP_S`` instead of growing with the backlog. Under load a group takes ~1.5 ms
    per write (each statement waits for the GIL again), so a submit queued behind a group
    of a hundred writes would wait for all of them."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._pending: deque[_Item] = deque()
        self._urgent: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="db-group-commit", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        return len(self._pending) + len(self._urgent)

    def submit(self, op: WriteOp, *, urgent: bool = False) -> Future[Any]:
        future: Future[Any] = Future()
        with self._cond:
            (self._urgent if urgent else self._pending).append((op, future))
            self._cond.notify()
        return future

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _next(self) -> tuple[_Item, bool] | None:
        with self._cond:
            if self._urgent:
                return self._urgent.popleft(), True
            if self._pending:
                return self._pending.popleft(), False
            return None

    def _put_back(self, items: list[tuple[_Item, bool]]) -> None:
        """Writes of a group that was rolled back go first again, in their order."""
        with self._cond:
            for item, urgent in reversed(items):
                (self._urgent if urgent else self._pending).appendleft(item)

    def _main(self) -> None:
        engine = make_sync_engine(self._url)
        sessions = sessionmaker(engine, expire_on_commit=False)
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._urgent and not self._stopping:
                        self._cond.wait()
                    if not self._pending and not self._urgent:
                        return
                started = time.perf_counter()
                size = self._commit_group(sessions)
                metrics.db_write_group(size, time.perf_counter() - started)
        finally:
            engine.dispose()

    def _commit_group(self, sessions: sessionmaker[Session]) -> int:
        """Run queued writes in one transaction and commit it. Returns how many were run.

        The group is formed while it runs, so a write queued meanwhile joins it (urgent ones
        first). It closes when nothing is queued, at ``MAX_GROUP`` writes, ``MAX_GROUP_S``
        after it started, or ``URGENT_GROUP_S`` after an urgent write joined. A write that
        raises is failed alone: the group is rolled back and the others go back to the head of
        the queue."""
        done: list[tuple[_Item, bool]] = []
        results: list[Any] = []
        urgent_since: float | None = None
        closing = time.perf_counter() + MAX_GROUP_S
        try:
            with sessions() as session, session.begin():
                while len(done) < MAX_GROUP:
                    now = time.perf_counter()
                    if (done and now >= closing) or (
                        urgent_since is not None and now - urgent_since >= URGENT_GROUP_S
                    ):
                        break
                    taken = self._next()
                    if taken is None:
                        break
                    (op, future), urgent = taken
                    # A write put back after a rollback is already running.
                    if not (future.running() or future.set_running_or_notify_cancel()):
                        continue
                    if urgent and urgent_since is None:
                        urgent_since = time.perf_counter()
                    done.append(taken)
                    try:
                        results.append(op(session))
                    except Exception as error:
                        raise _OpFailed(len(done) - 1, error) from error
        except _OpFailed as failed:
            # Rolled back: fail the one write, run the others again in the next group.
            failed_future = done[failed.index][0][1]
            failed_future.set_exception(failed.error)
            self._put_back(
                [(item, urgent) for n, (item, urgent) in enumerate(done) if n != failed.index]
            )
            return len(done)
        except Exception as error:  # the commit itself failed: nobody's write is durable
            for (_, future), _urgent in done:
                future.set_exception(error)
            return len(done)
        for ((_, future), _urgent), result in zip(done, results, strict=True):
            future.set_result(result)
        return len(done)


def _nothing(_session: Session) -> None:
    return None


def _behind_done(future: Future[Any], *, then: Callable[[], None] | None) -> None:
    error = future.exception()
    if error is not None:
        log.error("db.write_behind_failed", error=f"{type(error).__name__}: {error}")
    elif then is not None:
        then()


class Database:
    """Owns the engines and hands out sessions.

    ``transaction`` gives the caller its own transaction. ``write`` is for the hot path:
    writes issued concurrently are committed together by one writer (group commit), so one
    fsync makes many small state changes durable at once; each caller resumes only after the
    commit that holds its write, so "persisted before acknowledged" still holds.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writer: _GroupWriter | None = None
        self._writer_lock = threading.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session, session.begin():
            yield session

    @property
    def write_backlog(self) -> int:
        """Writes waiting for the group-commit writer (a measure of write pressure)."""
        return 0 if self._writer is None else self._writer.backlog

    def write_behind(self, op: WriteOp, *, then: Callable[[], None] | None = None) -> None:
        """Queue ``op`` without waiting for its commit (safe from any thread).

        The writer commits ordinary writes in the order they were queued, so ``op`` is durable
        no later than any write queued after it: a workflow's checkpoint before its job's next state
        change. For records nobody waits on (a unit's completion event, a driver's
        checkpoint), so that they cost a driver no commit latency. ``then`` runs after the
        commit (on the writer's thread); a failure is logged, since nobody waits for it."""
        future = self._group_writer().submit(op)
        future.add_done_callback(partial(_behind_done, then=then))

    async def flush(self) -> None:
        """Return once every write queued so far (behind ones included) is committed."""
        await self.write(_nothing)

    def _group_writer(self) -> _GroupWriter:
        with self._writer_lock:
            if self._writer is None:
                self._writer = _GroupWriter(self.url)
            return self._writer

    async def write(self, op: Callable[[Session], T], *, urgent: bool = False) -> T:
        """Run ``op(session)`` in a group-committed transaction; returns once committed.

        ``urgent`` is for a write a client is waiting on that depends on no queued write (a
        new job's row): it runs before queued ordinary writes and its group is committed
        promptly (``URGENT_GROUP_S``), so a submit is not answered at the pace of the backlog.

        ``op`` is a plain function run on the writer's thread with a synchronous session, and
        may run more than once (the group is retried without a write that raised), so it must
        only touch the database through ``session`` and never the API loop's objects. Its
        exception is re-raised here and rolls back only its own changes. A caller cancelled
        meanwhile does not undo its write."""
        started = time.perf_counter()
        future = self._group_writer().submit(op, urgent=urgent)
        try:
            return await asyncio.shield(asyncio.wrap_future(future))  # type: ignore[no-any-return]
        finally:
            metrics.db_write(time.perf_counter() - started)

    async def dispose(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await asyncio.to_thread(writer.stop)
        await self.engine.dispose()
