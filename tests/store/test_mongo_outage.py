"""A MongoDB outage degrades the projector without raising; it catches up when Mongo returns."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pymongo.errors import PyMongoError
from tests.store.mongo_fixtures import event_count, finish_job, migrated_db, start_job

from quantum_mesh.store.mongo.docserver import EmbeddedDocServer
from quantum_mesh.store.mongo.projector import Projector

WAIT_S = 20.0


async def test_outage_degrades_then_catches_up(tmp_path: Path, sqlite_url: str) -> None:
    server = EmbeddedDocServer(storage_dir=tmp_path / "docs", watchdog=False)
    url = await server.start()
    db = await migrated_db(sqlite_url)
    projector = Projector(
        db=db, mongo_url=url, database_name="qmesh", server_selection_timeout_ms=300
    )
    runner: asyncio.Task[None] | None = None
    try:
        await start_job(db, "before")
        await finish_job(db, "before")
        assert await projector.catch_up() == await event_count(db)
        assert projector.status() == "up"

        await server.stop(grace_s=0)  # kill -9: the worst case
        await start_job(db, "during")
        await finish_job(db, "during")  # jobs keep finishing: Postgres is the truth
        assert await projector.catch_up() == 0
        assert projector.status().startswith("down: ")
        assert not await projector.project_peers([{"peer_id": "p", "updated_at": None}])

        # The loop keeps ticking through the outage, then catches up on its own.
        runner = asyncio.create_task(projector.run(interval_s=0.1))
        await asyncio.sleep(0.5)
        assert not runner.done() and projector.status().startswith("down: ")
        assert await server.start() == url  # same port, same data
        async with asyncio.timeout(WAIT_S):
            while await _bundle(projector, "during") is None:  # noqa: ASYNC110 - polls Mongo
                await asyncio.sleep(0.1)
        assert projector.status() == "up"
        # Kept, or (if the kill -9 lost the last writes with their checkpoint) replayed.
        assert await _bundle(projector, "before") is not None
    finally:
        await projector.close()
        if runner is not None:
            await asyncio.wait_for(runner, timeout=5)
        await db.dispose()
        await server.stop(grace_s=0)


async def _bundle(projector: Projector, job_id: str) -> dict[str, object] | None:
    try:
        return await projector.get_provenance(job_id)
    except PyMongoError:  # reads raise while Mongo is down; this poll only waits for it
        return None
