"""The job manager: sole writer of job state, from submission through recovery.

Every transition is committed before it is published (WebSocket, logs), so nothing a client
sees can be lost by a crash. Work runs in background tasks that this manager tracks; on start-up
``recover`` re-attaches to every unfinished job and continues it from its persisted events.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import IntegrityError

from quantum_mesh.config import Settings
from quantum_mesh.control import repository as repo
from quantum_mesh.control.bus import JobEventBus
from quantum_mesh.control.planner import CostWeights, FragmentSpec, plan_fragments
from quantum_mesh.control.registry import PeerRegistry
from quantum_mesh.control.runtime import CircuitRuntime
from quantum_mesh.control.states import TERMINAL_JOB_STATES, JobStatus
from quantum_mesh.errors import Conflict, NoCapacity, QMeshError
from quantum_mesh.logs import get_logger
from quantum_mesh.quantum.analysis import build_quantum_result
from quantum_mesh.quantum.circuits.fragments import build_fragments
from quantum_mesh.quantum.circuits.parse import parse_circuit
from quantum_mesh.store.database import Database
from quantum_mesh.store.tables import Job

log = get_logger(__name__)

CIRCUIT_KIND = "circuit"
CAPACITY_POLL_S = 0.25
Processor = Callable[[str], Awaitable[None]]


def job_to_dict(job: Job) -> dict[str, Any]:
    result = job.result or {}
    is_circuit = job.kind == CIRCUIT_KIND
    return {
        "job_id": job.job_id,
        "kind": job.kind,
        "status": job.status,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
        "plan_id": job.plan_id,
        "error": job.error,
        "progress": job.progress,
        "fragment_results": result.get("fragment_results", []) if is_circuit else [],
        "quantum_result": result.get("quantum_result") if is_circuit else None,
        "result": None
        if is_circuit
        else (job.result if job.status == JobStatus.COMPLETED else None),
    }


def job_message(job: Job, *, seq: int | None) -> dict[str, Any]:
    """One job-status message, as the WebSocket stream and the hooks receive it."""
    return {
        "job_id": job.job_id,
        "kind": job.kind,
        "status": job.status,
        "at": job.updated_at.isoformat(),
        "progress": job.progress,
        "error": job.error,
        "seq": seq,
    }


class JobManager:
    def __init__(
        self,
        *,
        db: Database,
        bus: JobEventBus,
        registry: PeerRegistry,
        runtime: CircuitRuntime,
        settings: Settings,
    ) -> None:
        self.db = db
        self.bus = bus
        self.registry = registry
        self.runtime = runtime
        self.settings = settings
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Jobs cancelled while running: driver threads poll this to stop dispatching.
        self.cancelled: set[str] = set()
        self._processors: dict[str, Processor] = {CIRCUIT_KIND: self._process_circuit}
        self.on_transition: list[Callable[[dict[str, Any]], None]] = []

    def register_processor(self, kind: str, processor: Processor) -> None:
        self._processors[kind] = processor

    # --- submission ----------------------------------------------------------------------
    async def submit(
        self, *, kind: str, request: dict[str, Any], idempotency_key: str | None
    ) -> tuple[Job, bool]:
        """Persist a QUEUED job and start it. Returns (job, created)."""
        if idempotency_key:
            async with self.db.transaction() as session:
                existing = await repo.get_job_by_idempotency_key(session, key=idempotency_key)
            if existing is not None:
                self._check_same_request(existing, kind, request)
                return existing, False
        job_id = str(uuid.uuid4())
        try:
            async with self.db.transaction() as session:
                job = await repo.create_job(
                    session,
                    job_id=job_id,
                    kind=kind,
                    request=request,
                    idempotency_key=idempotency_key,
                )
        except IntegrityError:
            # A concurrent request with the same key won the race: return its job.
            async with self.db.transaction() as session:
                existing = await repo.get_job_by_idempotency_key(session, key=idempotency_key or "")
            if existing is None:
                raise
            self._check_same_request(existing, kind, request)
            return existing, False
        self._publish(job, seq=None)
        self._spawn(job.job_id, kind)
        return job, True

    @staticmethod
    def _check_same_request(existing: Job, kind: str, request: dict[str, Any]) -> None:
        if existing.kind != kind or existing.request != request:
            raise Conflict(
                "Idempotency-Key was already used for a different request",
                details={"job_id": existing.job_id},
            )

    async def submit_circuit(
        self, *, request: dict[str, Any], idempotency_key: str | None
    ) -> tuple[Job, bool]:
        # Parse before accepting, so a bad circuit is a 400 and never a FAILED job.
        await asyncio.to_thread(parse_circuit, request["circuit"])
        return await self.submit(
            kind=CIRCUIT_KIND, request=request, idempotency_key=idempotency_key
        )

    # --- reads ---------------------------------------------------------------------------
    async def get(self, job_id: str) -> Job:
        async with self.db.transaction() as session:
            return await repo.get_job(session, job_id=job_id)

    # --- transitions ---------------------------------------------------------------------
    async def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        error: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        progress: dict[str, Any] | None = None,
        plan_id: str | None = None,
    ) -> Job:
        async with self.db.transaction() as session:
            job = await repo.get_job(session, job_id=job_id, for_update=True)
            event = await repo.transition_job(
                session,
                job=job,
                to=to,
                error=error,
                result=result,
                progress=progress,
                plan_id=plan_id,
            )
        self._publish(job, seq=event.seq)
        return job

    async def report_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """Persist progress (same status), then publish it."""
        async with self.db.transaction() as session:
            job = await repo.get_job(session, job_id=job_id, for_update=True)
            if JobStatus(job.status) in TERMINAL_JOB_STATES:
                return
            job.progress = progress
            event = await repo.append_event(
                session, job_id=job_id, event_type="progress", payload={"progress": progress}
            )
        self._publish(job, seq=event.seq)

    async def save_checkpoint(self, job_id: str, state: dict[str, Any]) -> None:
        """Persist a workload driver's resumable state (an append-only event)."""
        async with self.db.transaction() as session:
            await repo.append_event(
                session, job_id=job_id, event_type="checkpoint", payload={"state": state}
            )

    async def last_checkpoint(self, job_id: str) -> dict[str, Any] | None:
        async with self.db.transaction() as session:
            event = await repo.latest_event(session, job_id=job_id, event_type="checkpoint")
        return None if event is None else dict(event.payload["state"])

    def _publish(self, job: Job, *, seq: int | None) -> None:
        message = job_message(job, seq=seq)
        self.bus.publish(job.job_id, message)
        for hook in self.on_transition:
            hook(message)

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if JobStatus(job.status) in TERMINAL_JOB_STATES:
            raise Conflict(
                f"Job {job_id} is already {job.status}",
                details={"job_id": job_id, "status": job.status},
            )
        job = await self.transition(
            job_id,
            JobStatus.CANCELLED,
            error={"code": "cancelled", "message": "Cancelled by client"},
        )
        self.cancelled.add(job_id)
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
        return job

    # --- background work -----------------------------------------------------------------
    def _spawn(self, job_id: str, kind: str) -> None:
        if job_id in self._tasks:
            return
        processor = self._processors.get(kind)
        if processor is None:
            log.error("job.no_processor", job_id=job_id, kind=kind)
            return
        task = asyncio.create_task(self._guarded(job_id, processor), name=f"job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(job_id, None))

    async def _guarded(self, job_id: str, processor: Processor) -> None:
        try:
            await processor(job_id)
        except asyncio.CancelledError:
            raise
        except QMeshError as exc:
            await self._fail(
                job_id, {"code": exc.code, "message": exc.message, "details": exc.details}
            )
        except Exception as exc:
            log.exception("job.crashed", job_id=job_id)
            await self._fail(
                job_id, {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
            )

    async def _fail(self, job_id: str, error: dict[str, Any]) -> None:
        try:
            await self.transition(job_id, JobStatus.FAILED, error=error)
        except Conflict:
            log.info("job.fail_after_terminal", job_id=job_id)

    async def recover(self) -> list[str]:
        """Continue every unfinished job from its persisted state."""
        async with self.db.transaction() as session:
            jobs = await repo.unfinished_jobs(session)
        for job in jobs:
            log.info("job.recovering", job_id=job.job_id, status=job.status, kind=job.kind)
            self._spawn(job.job_id, job.kind)
        return [j.job_id for j in jobs]

    async def wait_idle(self, timeout: float) -> None:
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def shutdown(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def weights(self) -> CostWeights:
        s = self.settings
        return CostWeights(
            latency=s.cost_weight_latency,
            failure=s.cost_weight_failure,
            transfer=s.cost_weight_transfer,
            load=s.cost_weight_load,
            fidelity=s.cost_weight_fidelity,
        )

    async def _plan_when_capacity(
        self, pending: list[FragmentSpec], min_fidelity: float | None
    ) -> list[dict[str, Any]]:
        """Plan now, or wait (bounded) for nodes to be heard: right after a start-up or a
        recovery the registry is still filling from adverts."""
        deadline = time.monotonic() + self.settings.capacity_wait_s
        while True:
            try:
                return plan_fragments(
                    pending,
                    self.registry.usable_snapshot(),
                    weights=self.weights(),
                    min_fidelity=min_fidelity,
                )
            except NoCapacity:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(CAPACITY_POLL_S)

    # --- circuits ------------------------------------------------------------------------
    async def _process_circuit(self, job_id: str) -> None:
        job = await self.get(job_id)
        request = job.request
        if job.status == JobStatus.QUEUED:
            job = await self.transition(job_id, JobStatus.COMPILING)
        circuit = await asyncio.to_thread(parse_circuit, request["circuit"])
        fragments = await asyncio.to_thread(build_fragments, circuit)
        async with self.db.transaction() as session:
            done = {r.fragment_id for r in await repo.fragment_executions(session, job_id=job_id)}
        specs = [
            FragmentSpec(
                fragment_id=f.fragment_id,
                service_type=f.service_type,
                qubits=f.qubits,
                operation_ids=f.operation_ids,
                depends_on=f.depends_on,
                width=circuit.num_qubits,
            )
            for f in fragments
        ]
        min_fidelity = request.get("min_fidelity")
        # A recovered job is planned again for what is left: nodes may have changed meanwhile.
        pending = [s for s in specs if s.fragment_id not in done]
        planned = await self._plan_when_capacity(pending, min_fidelity)
        by_id = {p["fragment_id"]: p for p in planned}
        plan_fragments_all = [
            by_id.get(s.fragment_id)
            or {
                "fragment_id": s.fragment_id,
                "service_type": s.service_type,
                "qubits": list(s.qubits),
                "operation_ids": list(s.operation_ids),
                "depends_on": list(s.depends_on),
                "primary_node": None,
                "fallback_nodes": [],
                "cost": {},
                "completed_before_replan": True,
            }
            for s in specs
        ]
        plan_id = str(uuid.uuid4())
        plan = {
            "plan_id": plan_id,
            "job_id": job_id,
            "num_qubits": circuit.num_qubits,
            "weights": self.weights().__dict__,
            "min_fidelity": min_fidelity,
            "fragments": plan_fragments_all,
            "registry_snapshot": [p.to_dict() for p in self.registry.usable_snapshot()],
        }
        async with self.db.transaction() as session:
            await repo.save_plan(session, plan_id=plan_id, job_id=job_id, plan=plan)
        status = JobStatus((await self.get(job_id)).status)
        if status == JobStatus.COMPILING:
            await self.transition(job_id, JobStatus.RESERVING, plan_id=plan_id)
            status = JobStatus.RESERVING
        else:
            await self.transition(job_id, status, plan_id=plan_id)

        total_fragments = len(plan_fragments_all)

        async def on_committed() -> None:
            # RESERVING ends when the first reservation is committed and work is sent.
            nonlocal status
            if status == JobStatus.RESERVING:
                status = JobStatus.EXECUTING
                await self.transition(
                    job_id,
                    JobStatus.EXECUTING,
                    progress={"fragments_done": len(done), "fragments_total": total_fragments},
                )

        async def on_wave(completed: int, total: int) -> None:
            if completed and status == JobStatus.EXECUTING:
                await self.report_progress(
                    job_id, {"fragments_done": completed, "fragments_total": total}
                )

        seed = int(request.get("seed") or 0)
        final_state, fragment_results = await self.runtime.execute(
            job_id=job_id,
            circuit=circuit,
            fragments=plan_fragments_all,
            seed=seed,
            min_fidelity=min_fidelity,
            on_wave=on_wave,
            on_committed=on_committed,
        )
        if status == JobStatus.RESERVING:  # recovered with every fragment already done
            await on_committed()
        order = {f.fragment_id: i for i, f in enumerate(fragments)}
        fragment_results.sort(key=lambda r: order[r["fragment_id"]])
        quantum_result = await asyncio.to_thread(
            build_quantum_result,
            circuit,
            final_state,
            shots=int(request.get("shots", 1024)),
            seed=seed,
            fragment_fidelities=[
                r["observed_fidelity"]
                for r in fragment_results
                if r["observed_fidelity"] is not None
            ],
        )
        await self.transition(
            job_id,
            JobStatus.COMPLETED,
            progress={"fragments_done": len(fragments), "fragments_total": len(fragments)},
            result={"fragment_results": fragment_results, "quantum_result": quantum_result},
        )
