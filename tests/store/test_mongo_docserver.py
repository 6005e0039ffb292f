"""The embedded SecantusDB child process: start, ping, watchdog restart, stop."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from quantum_mesh.store.mongo.docserver import DocServerError, EmbeddedDocServer

WAIT_S = 20.0


async def test_start_restart_on_death_and_stop(tmp_path: Path) -> None:
    # sync_on_commit: an acknowledged write must survive the kill -9 below.
    server = EmbeddedDocServer(storage_dir=tmp_path, stop_grace_s=5.0, sync_on_commit=True)
    url = await server.start()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        url, serverSelectionTimeoutMS=2000
    )
    try:
        assert url.startswith("mongodb://127.0.0.1:") and server.port > 0
        assert server.is_running()
        await client.qmesh.things.insert_one({"k": 1})

        first_pid = server.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        async with asyncio.timeout(WAIT_S):
            while server.restarts < 1:  # noqa: ASYNC110 - polls another process
                await asyncio.sleep(0.1)
        assert server.is_running() and server.pid != first_pid
        assert server.url == url
        assert await client.qmesh.things.count_documents({"k": 1}) == 1
    finally:
        await client.close()
        await server.stop()
    assert not server.is_running()
    assert not (tmp_path / "secantusd.pid").exists()
    await asyncio.sleep(1.0)  # the watchdog is gone: nothing restarts a stopped server
    assert not server.is_running()


async def test_missing_executable_is_a_clear_error(tmp_path: Path) -> None:
    server = EmbeddedDocServer(storage_dir=tmp_path, executable=tmp_path / "nope")
    with pytest.raises((DocServerError, OSError)):
        await server.start()
    assert not server.is_running()
