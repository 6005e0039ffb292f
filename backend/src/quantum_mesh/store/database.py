"""Async engine/session factory, group-committed writes and programmatic Alembic migrations."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from quantum_mesh.arrays import json_default


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


def make_engine(url: str, *, writer: bool = False) -> AsyncEngine:
    """The engine for ``url``; ``writer=True`` gives the group-commit writer's own single
    connection, so it never waits behind readers for a pooled one.

    JSON columns store numpy arrays in their JSON form (``quantum_mesh.arrays``): a payload
    that arrived as raw arrays over the mesh is stored, not refused."""
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url,
            json_serializer=_dumps,
            connect_args={"timeout": 30},
            **({"pool_size": 1, "max_overflow": 0} if writer else {}),
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets API reads proceed while the runtime writes; FULL sync = durable acks.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if writer:
        return create_async_engine(
            url, json_serializer=_dumps, pool_pre_ping=True, pool_size=1, max_overflow=0
        )
    return create_async_engine(
        url, json_serializer=_dumps, pool_pre_ping=True, pool_size=10, max_overflow=10
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, default=json_default)


T = TypeVar("T")
WriteOp = Callable[[AsyncSession], Awaitable[Any]]
#: Most writes committed together (bounds one transaction's size and latency).
MAX_GROUP = 256


class _OpFailed(Exception):
    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


class _GroupWriter:
    """A thread with an event loop and a connection of its own that commits writes in groups.

    Its own loop means a write never queues behind HTTP handling on the API loop; its own
    connection means it never waits behind readers for a pooled one."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._pending: list[tuple[WriteOp, Future[Any]]] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._kick: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="db-group-commit", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def submit(self, op: WriteOp) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._pending.append((op, future))
        self._loop.call_soon_threadsafe(self._wake)
        return future

    def stop(self) -> None:
        self._stopping = True
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._wake)
            self._thread.join(timeout=30)

    def _wake(self) -> None:
        if self._kick is not None:
            self._kick.set()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
        finally:
            self._loop.close()

    async def _run(self) -> None:
        engine = make_engine(self._url, writer=True)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._kick = asyncio.Event()
        self._ready.set()
        try:
            while True:
                await self._kick.wait()
                self._kick.clear()
                while True:
                    with self._lock:
                        group = self._pending[:MAX_GROUP]
                        self._pending = self._pending[MAX_GROUP:]
                    if not group:
                        break
                    await _commit_group(sessions, group)
                if self._stopping:
                    return
        finally:
            await engine.dispose()


async def _commit_group(
    sessions: async_sessionmaker[AsyncSession], group: list[tuple[WriteOp, Future[Any]]]
) -> None:
    remaining = [(op, f) for op, f in group if f.set_running_or_notify_cancel()]
    while remaining:
        results: list[Any] = []
        try:
            async with sessions() as session, session.begin():
                for index, (op, _future) in enumerate(remaining):
                    try:
                        results.append(await op(session))
                    except Exception as error:
                        raise _OpFailed(index, error) from error
        except _OpFailed as failed:
            # Everything was rolled back: fail the one write, commit the others again.
            remaining[failed.index][1].set_exception(failed.error)
            remaining = remaining[: failed.index] + remaining[failed.index + 1 :]
            continue
        except Exception as error:  # the commit itself failed: nobody's write is durable
            for _, future in remaining:
                future.set_exception(error)
            return
        for (_, future), result in zip(remaining, results, strict=True):
            future.set_result(result)
        return


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

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session, session.begin():
            yield session

    @property
    def write_backlog(self) -> int:
        """Writes waiting for the group-commit writer (a measure of write pressure)."""
        return 0 if self._writer is None else self._writer.backlog

    async def write(self, op: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run ``op(session)`` in a group-committed transaction; returns once committed.

        ``op`` runs on the writer's thread and may run more than once (the group is retried
        without a write that raised), so it must only touch the database through
        ``session``. Its exception is re-raised here and rolls back only its own changes. A
        caller cancelled meanwhile does not undo its write."""
        if self._writer is None:
            self._writer = _GroupWriter(self.url)
        future = self._writer.submit(op)
        return await asyncio.shield(asyncio.wrap_future(future))  # type: ignore[no-any-return]

    async def dispose(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await asyncio.to_thread(writer.stop)
        await self.engine.dispose()
