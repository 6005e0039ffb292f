"""Builds and runs the coordinator: data plane, mesh, embedded nodes, registry, jobs.

The FastAPI lifespan calls ``start``/``stop``; nothing else in the API knows how the parts
are wired.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from quantum_mesh.config import Settings
from quantum_mesh.control.bus import JobEventBus
from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.docstore import DocumentStore
from quantum_mesh.control.enrollment import EnrollmentService
from quantum_mesh.control.instrumented import InstrumentedMesh
from quantum_mesh.control.jobs import JobManager
from quantum_mesh.control.joiner import EmbeddedJoiner
from quantum_mesh.control.journal import Journal
from quantum_mesh.control.registry import PeerRegistry
from quantum_mesh.control.reservations import ReservationService
from quantum_mesh.control.runtime import CircuitRuntime
from quantum_mesh.control.scheduler import WorkScheduler
from quantum_mesh.control.states import EnrollmentStatus
from quantum_mesh.control.workflows import BENCHMARK_KIND, CircuitWorkload, register_processors
from quantum_mesh.logs import get_logger
from quantum_mesh.mesh.adverts import REASON_UNKNOWN_PEER
from quantum_mesh.mesh.bridge import MeshBridge
from quantum_mesh.mesh.errors import MeshError
from quantum_mesh.node.supervisor import NodeSupervisor
from quantum_mesh.observability import metrics
from quantum_mesh.store.database import Database, run_migrations
from quantum_mesh.store.tables import FidelitySample, Job, PeerSnapshot, utcnow

log = get_logger(__name__)

PING_INTERVAL_S = 2.0
SWEEP_INTERVAL_S = 1.0
SNAPSHOT_INTERVAL_S = 5.0
METRICS_INTERVAL_S = 5.0


class Coordinator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.db = Database(settings.resolved_database_url())
        self.bus = JobEventBus()
        self.registry = PeerRegistry(
            stale_after_s=settings.advert_stale_after_s,
            require_enrollment=settings.require_enrollment,
        )
        self.mesh = MeshBridge(
            key_file=self.data_dir / "coordinator.key",
            listen_host=settings.p2p_host,
            listen_port=settings.p2p_port,
            max_frame_bytes=settings.max_frame_bytes,
            advert_max_age_s=settings.advert_stale_after_s,
            shared_memory=settings.mesh_shared_memory,
            shared_memory_min_bytes=settings.mesh_shared_memory_min_bytes,
        )
        self.journal = Journal(
            self.data_dir / "logs" / "coordinator.jsonl", peer_id=self.mesh.peer_id
        )
        mesh_port = InstrumentedMesh(self.mesh)
        self.reservations = ReservationService(
            db=self.db, mesh=mesh_port, registry=self.registry, journal=self.journal
        )
        self.enrollment = EnrollmentService(
            db=self.db, registry=self.registry, reservations=self.reservations
        )
        self.compute = ComputePools(settings)
        self.scheduler = WorkScheduler(
            db=self.db,
            mesh=mesh_port,
            registry=self.registry,
            reservations=self.reservations,
            settings=settings,
            journal=self.journal,
        )
        self.runtime = CircuitRuntime(
            db=self.db, scheduler=self.scheduler, compute=self.compute, journal=self.journal
        )
        self.jobs = JobManager(
            db=self.db,
            bus=self.bus,
            scheduler=self.scheduler,
            compute=self.compute,
            settings=settings,
        )
        self.circuits = CircuitWorkload(
            db=self.db,
            registry=self.registry,
            runtime=self.runtime,
            compute=self.compute,
            settings=settings,
        )
        register_processors(self.jobs, self.circuits)
        self.jobs.on_transition.append(lambda m: metrics.job_transition(m["kind"], m["status"]))
        self.jobs.on_transition.append(self._project_benchmark)
        self.jobs.on_transition.append(
            lambda m: self.journal.record(
                "job.update",
                job_id=m["job_id"],
                kind=m["kind"],
                status=m["status"],
                seq=m["seq"],
                progress=m["progress"],
            )
        )
        self.docstore = DocumentStore(
            db=self.db,
            mongo_url=settings.mongo_url,
            data_dir=self.data_dir,
            projector_process=settings.projector_process,
        )
        self.supervisor: NodeSupervisor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._dirty_snapshots: set[str] = set()
        self.started_at = time.time()
        self.mesh_up = False

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.compute.start()
        await asyncio.to_thread(run_migrations, self.db.url)
        await self.enrollment.load_into_registry()
        await self._restore_snapshots()
        self.mesh.on_advert = self._on_advert
        self.mesh.on_peer_disconnected = self._on_disconnect
        self.mesh.stream_filter = self.registry.is_trusted
        await self.mesh.start()
        self.mesh_up = True
        log.info(
            "coordinator.mesh_started", peer_id=self.mesh.peer_id, addrs=self.mesh.listen_addrs
        )
        if self.settings.embedded_nodes > 0:
            self.supervisor = NodeSupervisor(
                count=self.settings.embedded_nodes,
                data_dir=self.data_dir,
                bootstrap_addr=self.mesh.listen_addrs[0],
                workers=self.settings.node_workers,
                blas_threads=self.settings.node_blas_threads,
                noise_level=self.settings.node_noise_level,
                fidelity=self.settings.node_fidelity,
                nice=self.settings.embedded_node_nice,
            )
            for i, peer_id in enumerate(self.supervisor.peer_ids):
                await self.enrollment.create(
                    peer_id=peer_id,
                    name=f"embedded-{i}",
                    status=EnrollmentStatus.APPROVED,
                    embedded=True,
                )
            await self.supervisor.start()
            # Benchmarks' node_loss scenario stops embedded nodes the way a crash would;
            # node_join starts a spare one mid-run.
            self.jobs.kill_node = self.supervisor.kill
            self.jobs.joiner = EmbeddedJoiner(
                supervisor=self.supervisor, enrollment=self.enrollment, registry=self.registry
            )
        self.scheduler.start()
        self._tasks = [
            asyncio.create_task(self._ping_loop(), name="ping-loop"),
            asyncio.create_task(self._sweep_loop(), name="reservation-sweeper"),
            asyncio.create_task(self._snapshot_loop(), name="peer-snapshots"),
            asyncio.create_task(self._metrics_loop(), name="metrics"),
        ]
        await self.docstore.start(
            peers=lambda: [v.to_dict() for v in self.registry.snapshot()],
            topology=self.topology,
        )
        recovered = await self.jobs.recover()
        if recovered:
            log.info("coordinator.recovered_jobs", count=len(recovered))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.jobs.shutdown()
        await self.scheduler.stop()
        self.compute.shutdown()
        await self.docstore.stop()
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.jobs.joiner is not None:  # the link scenarios' namespaces, if any are left
            with contextlib.suppress(Exception):
                await self.jobs.joiner.close()
        with contextlib.suppress(Exception):
            await self._flush_snapshots()
        await self.mesh.stop()
        self.mesh_up = False
        await self.db.dispose()
        self.journal.close()

    def document_store_status(self) -> str:
        return self.docstore.status()

    def topology(self) -> dict[str, Any]:
        """The mesh as the coordinator sees it now: nodes, its own links to them (latency of
        its calls) and the links between nodes (round trips the nodes measured among
        themselves and advertise, ``node/links.py``)."""
        views = self.registry.snapshot()
        me = self.mesh.peer_id
        nodes = [{"id": me, "role": "coordinator", "fresh": True}] + [
            {
                "id": v.peer_id,
                "role": "service_node",
                "name": v.name,
                "fresh": v.fresh,
                "enrollment": v.enrollment,
                "services": list(v.services),
            }
            for v in views
        ]
        links = [
            {
                "source": me,
                "target": v.peer_id,
                "kind": "coordinator",
                "connected": v.connected,
                "latency_ms": None if v.latency_s is None else round(v.latency_s * 1000, 3),
            }
            for v in views
        ]
        known = {v.peer_id for v in views}
        for v in views:
            measured = self.registry.advert_of(v.peer_id).get("links") or {}
            links.extend(
                {
                    "source": v.peer_id,
                    "target": peer,
                    "kind": "node",
                    "connected": True,
                    "latency_ms": float(rtt_ms),
                    "measured_by": v.peer_id,
                }
                for peer, rtt_ms in sorted(measured.items())
                if peer in known and peer != v.peer_id
            )
        return {"coordinator": me, "nodes": nodes, "links": links}

    async def wait_for_nodes(self, count: int, *, timeout: float) -> bool:
        """Wait (bounded) until ``count`` usable nodes are heard; used by tests and the CLI."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.registry.usable_snapshot()) >= count:
                return True
            await asyncio.sleep(0.1)
        return False

    # --- mesh callbacks --------------------------------------------------------------------
    def _on_advert(self, advert: Any) -> None:
        data = advert.model_dump() if hasattr(advert, "model_dump") else dict(advert)
        if not self._advert_peer_known(str(data["peer_id"])):
            # Anyone can mint keys and sign adverts for them: an unknown peer never reaches
            # the registry, the snapshots or a metric label; the drop is counted unlabelled.
            metrics.advert_dropped(REASON_UNKNOWN_PEER)
            return
        known = self.registry.view(str(data["peer_id"]))
        entry = self.registry.observe_advert(data)
        if known is None or not known.fresh:
            self.journal.record(
                "mesh.peer_heard",
                node_id=entry.peer_id,
                name=data.get("name"),
                addrs=data.get("listen_addrs"),
            )
        self._dirty_snapshots.add(entry.peer_id)
        self.scheduler.node_heard(entry.peer_id)

    def _advert_peer_known(self, peer_id: str) -> bool:
        """Any enrollment (PENDING included: enroll, approve, then start the node) makes a
        peer known; with enrollment not required (dev mode) every peer is."""
        if not self.settings.require_enrollment:
            return True
        return self.registry.enrollment_of(peer_id) is not None

    def _project_benchmark(self, message: dict[str, Any]) -> None:
        if message["kind"] != BENCHMARK_KIND or message["status"] != "COMPLETED":
            return
        task = asyncio.create_task(self._record_benchmark(message["job_id"]))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _record_benchmark(self, job_id: str) -> None:
        job = await self.jobs.get(job_id)
        if self.docstore.projector is None or not job.result:
            return
        await self.docstore.projector.record_benchmark(
            {
                "benchmark_id": job_id,
                "workload": job.result["workload"],
                "modes": [m["mode"] for m in job.result["modes"]],
                "figures": job.result,
                "created_at": job.updated_at,
            }
        )

    def _on_disconnect(self, peer_id: str) -> None:
        self.registry.mark_disconnected(peer_id)
        self.journal.record("mesh.peer_disconnected", node_id=peer_id)

    # --- background loops ------------------------------------------------------------------
    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            for view in self.registry.snapshot():
                if not view.fresh:
                    continue
                try:
                    rtt = await self.mesh.ping(view.peer_id, timeout=2.0)
                except MeshError:
                    continue
                self.registry.record_latency(view.peer_id, rtt)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.reservations.expire_due()
            except Exception:
                log.exception("reservations.sweep_failed")

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)
            for peer_id in self.registry.forget_stale(
                older_than_s=self.settings.peer_forget_after_s
            ):
                metrics.forget_node(peer_id)
                self.journal.record("mesh.peer_forgotten", node_id=peer_id)
            try:
                await self._flush_snapshots()
            except Exception:
                log.exception("registry.snapshot_failed")

    async def _metrics_loop(self) -> None:
        """Refresh the gauges that describe state rather than events."""
        dropped_seen: dict[str, int] = {}
        while True:
            try:
                async with self.db.transaction() as session:
                    rows = await session.execute(
                        select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
                    )
                    metrics.set_jobs_by_state({(k, s): int(n) for k, s, n in rows.all()})
                now = time.monotonic()
                for view in self.registry.snapshot():
                    metrics.set_node_freshness(
                        view.peer_id, now - self.registry.last_seen(view.peer_id), view.fresh
                    )
                for reason, count in self.mesh.advert_stats.items():
                    if reason == "accepted":
                        continue
                    for _ in range(count - dropped_seen.get(reason, 0)):
                        metrics.advert_dropped(reason)
                    dropped_seen[reason] = count
            except Exception:
                log.exception("metrics.refresh_failed")
            await asyncio.sleep(METRICS_INTERVAL_S)

    async def _flush_snapshots(self) -> None:
        dirty, self._dirty_snapshots = self._dirty_snapshots, set()
        if not dirty:
            return
        async with self.db.transaction() as session:
            for peer_id in dirty:
                view = self.registry.view(peer_id)
                advert = self.registry.advert_of(peer_id)
                if view is None:
                    continue
                row = await session.get(PeerSnapshot, peer_id)
                if row is None:
                    session.add(PeerSnapshot(peer_id=peer_id, advert=advert, updated_at=utcnow()))
                else:
                    row.advert = advert
                    row.updated_at = utcnow()
                session.add(
                    FidelitySample(
                        node_id=peer_id,
                        advertised=view.fidelity,
                        observed=view.observed_fidelity,
                        at=utcnow(),
                    )
                )

    async def _restore_snapshots(self) -> None:
        async with self.db.transaction() as session:
            for row in (await session.execute(select(PeerSnapshot))).scalars():
                if not self._advert_peer_known(row.peer_id):
                    continue  # stored before unknown peers were dropped at the door
                updated = (
                    row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=UTC)
                )
                self.registry.restore(row.peer_id, row.advert, updated or datetime.now(UTC))
