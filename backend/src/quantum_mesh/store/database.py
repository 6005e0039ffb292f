"""Async engine/session factory, group-committed writes and programmatic Alembic migrations."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets API reads proceed while the runtime writes; FULL sync = durable acks.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


_DEBUG = bool(os.environ.get("QMESH_DEBUG_GROUPS"))
T = TypeVar("T")
WriteOp = Callable[[AsyncSession], Awaitable[Any]]
#: Most writes committed together (bounds one transaction's size and latency).
MAX_GROUP = 256


class _OpFailed(Exception):
    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


class Database:
    """Owns the engine and hands out sessions.

    ``transaction`` gives the caller its own transaction. ``write`` is for the hot path:
    writes issued concurrently are committed together by one writer (group commit), so one
    fsync makes many small state changes durable at once; each caller resumes only after the
    commit that holds its write, so "persisted before acknowledged" still holds.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._pending: list[tuple[WriteOp, asyncio.Future[Any]]] = []
        self._kick: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session, session.begin():
            yield session

    async def write(self, op: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run ``op(session)`` in a group-committed transaction; returns once committed.

        ``op`` may run more than once (the group is retried without a write that raised), so
        it must only touch the database through ``session``. Its exception is re-raised here
        and rolls back nothing but its own changes."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((op, future))
        if self._writer is None or self._writer.done():
            self._kick = asyncio.Event()
            self._writer = loop.create_task(self._write_loop(), name="db-group-commit")
        assert self._kick is not None
        self._kick.set()
        return await asyncio.shield(future)

    async def _write_loop(self) -> None:
        assert self._kick is not None
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._pending:
                group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                await self._commit_group(group)

    async def _commit_group(self, group: list[tuple[WriteOp, asyncio.Future[Any]]]) -> None:
        remaining = group
        while remaining:
            results: list[Any] = []
            t0 = time.perf_counter()
            try:
                async with self.sessions() as session, session.begin():
                    for index, (op, _future) in enumerate(remaining):
                        try:
                            results.append(await op(session))
                        except Exception as error:
                            raise _OpFailed(index, error) from error
            except _OpFailed as failed:
                # Everything was rolled back: fail the one write, commit the others again.
                _, future = remaining[failed.index]
                if not future.done():
                    future.set_exception(failed.error)
                remaining = remaining[: failed.index] + remaining[failed.index + 1 :]
                continue
            except Exception as error:  # the commit itself failed: nobody's write is durable
                for _, future in remaining:
                    if not future.done():
                        future.set_exception(error)
                return
            if _DEBUG:
                print(f"group {len(remaining)} ops {time.perf_counter() - t0:.4f}s", flush=True)
            for (_, future), result in zip(remaining, results, strict=True):
                if not future.done():
                    future.set_result(result)
            return

    async def dispose(self) -> None:
        if self._writer is not None:
            for _ in range(500):  # bounded: let queued writes commit before closing
                if not self._pending:
                    break
                await asyncio.sleep(0.01)
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        await self.engine.dispose()
