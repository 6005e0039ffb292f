"""The coordinator's document store: MongoDB projections, with an embedded MongoDB-wire
server when no ``QMESH_MONGO_URL`` is configured.

Postgres stays the source of truth. Nothing here may fail a job: when MongoDB is down the
projector reports ``down: …`` (``/ready`` says so) and catches up when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymongo.errors import PyMongoError

from quantum_mesh.errors import Unavailable
from quantum_mesh.logs import get_logger
from quantum_mesh.store.database import Database
from quantum_mesh.store.mongo.docserver import DocServerError, EmbeddedDocServer
from quantum_mesh.store.mongo.projection_process import ProjectionProcess
from quantum_mesh.store.mongo.projector import Projector

log = get_logger(__name__)

PROJECT_INTERVAL_S = 1.0
TOPOLOGY_INTERVAL_S = 5.0
TOPOLOGY_EVERY_TICKS = int(TOPOLOGY_INTERVAL_S / PROJECT_INTERVAL_S)


class DocumentStoreUnavailable(Unavailable):
    code = "document_store_unavailable"


class DocumentStore:
    def __init__(
        self,
        *,
        db: Database,
        mongo_url: str | None,
        data_dir: Path,
        projector_process: bool = True,
    ) -> None:
        self.db = db
        self.configured_url = mongo_url
        self.data_dir = data_dir
        self.server: EmbeddedDocServer | None = None
        #: Reads, peer and topology projections, benchmark records; with
        #: ``projector_process`` the event catch-up runs in ``process`` instead.
        self.projector: Projector | None = None
        self.use_process = projector_process
        self.process: ProjectionProcess | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._start_error: str | None = None

    async def start(
        self,
        *,
        peers: Callable[[], list[dict[str, Any]]],
        topology: Callable[[], dict[str, Any]],
    ) -> None:
        url = self.configured_url
        if url is None:
            self.server = EmbeddedDocServer(storage_dir=self.data_dir / "docs")
            try:
                url = await self.server.start()
            except DocServerError as exc:
                # Degraded, not dead: jobs run on Postgres alone; /ready names the part.
                self._start_error = f"down: embedded document server failed: {exc}"
                log.error("docstore.embedded_failed", error=str(exc))
                return
        self.projector = Projector(db=self.db, mongo_url=url)
        with contextlib.suppress(PyMongoError):
            await self.projector.connect()
        if self.use_process:
            self.process = ProjectionProcess(
                database_url=self.db.url,
                mongo_url=url,
                interval_s=PROJECT_INTERVAL_S,
                data_dir=self.data_dir,
            )
            self.process.start()
            catch_up = asyncio.create_task(self.process.watch(), name="projector-process")
        else:
            catch_up = asyncio.create_task(self.projector.run(PROJECT_INTERVAL_S), name="projector")
        self._tasks = [
            catch_up,
            asyncio.create_task(self._live_projections(peers, topology), name="live-projections"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.process is not None:
            await self.process.stop()
        if self.projector is not None:
            with contextlib.suppress(Exception):
                await self.projector.close()
        if self.server is not None:
            await self.server.stop()

    def status(self) -> str:
        if self.process is not None and not self.process.running():
            return f"down: projector process exited (code {self.process.exit_code()}); restarting"
        if self.projector is not None:
            return self.projector.status()
        return self._start_error or "down: not started"

    async def _live_projections(
        self, peers: Callable[[], list[dict[str, Any]]], topology: Callable[[], dict[str, Any]]
    ) -> None:
        assert self.projector is not None
        tick = 0
        last_shape: object = None
        while True:
            await asyncio.sleep(PROJECT_INTERVAL_S)
            tick += 1
            await self.projector.project_peers(peers())
            current = topology()
            # Snapshot at once when a node joins, leaves or changes freshness, else every
            # TOPOLOGY_INTERVAL_S for the latency history.
            shape = sorted((n["id"], n.get("fresh"), n.get("enrollment")) for n in current["nodes"])
            due = shape != last_shape or tick % TOPOLOGY_EVERY_TICKS == 0
            if due and await self.projector.snapshot_topology(current):
                last_shape = shape

    def _require(self) -> Projector:
        if self.projector is None:
            raise DocumentStoreUnavailable(f"Document store is {self.status()}")
        return self.projector

    async def read(self, what: str, *args: Any) -> Any:
        """Read a projection; MongoDB being down is a 503, never a 500."""
        projector = self._require()
        try:
            return await getattr(projector, what)(*args)
        except PyMongoError as exc:
            raise DocumentStoreUnavailable(
                f"Document store unavailable: {type(exc).__name__}", details={"read": what}
            ) from exc
