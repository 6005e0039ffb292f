"""The job manager: the one place where a job's state changes, from submission to the end.

One template runs every job, whatever its kind: QUEUED → COMPILING → RESERVING → EXECUTING →
COMPLETED/FAILED/CANCELLED. Workloads are processors (``control/workflows/``) that compile
and execute through a narrow :class:`JobHandle`; they never touch job state. RESERVING ends
when the job's first unit of mesh work has its reservation committed (the scheduler tells us)
and work is about to be sent. Every transition is committed before it is published
(WebSocket, hooks), so nothing a client sees can be lost by a crash; on start-up
``recover`` re-enters the same template for every unfinished job, and the processors resume
from what they persisted.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import Table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from quantum_mesh.config import Settings
from quantum_mesh.control import repository as repo
from quantum_mesh.control.bus import JobEventBus
from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.intake import AcceptedJob
from quantum_mesh.control.scheduler import UnitOutcome, WorkScheduler, WorkUnit
from quantum_mesh.control.sizing import CallSizer
from quantum_mesh.control.states import TERMINAL_JOB_STATES, JobStatus, may_move
from quantum_mesh.errors import Conflict, Overloaded, QMeshError
from quantum_mesh.logs import get_logger
from quantum_mesh.observability import metrics
from quantum_mesh.store.database import Database, WriteOp
from quantum_mesh.store.tables import Job

if TYPE_CHECKING:
    from quantum_mesh.control.joiner import EmbeddedJoiner
    from quantum_mesh.quantum.analysis import ResultArtifact

log = get_logger(__name__)

#: Completions counted for the Retry-After estimate.
_RATE_WINDOW_S = 10.0
#: Longest wait for a node's answer to a control call (``JobHandle.call_node``).
NODE_CALL_TIMEOUT_S = 10.0
#: A compile step that lasts longer gets a COMPILING write of its own (``_compile_queued``).
COMPILING_WRITE_AFTER_S = 0.25


def admission_refusal(
    *, active: int, write_backlog: int, completion_rate: float, settings: Settings
) -> Overloaded | None:
    """Why a new job may not be accepted now (None: it may): the database writer is
    saturated, or ``active`` unfinished jobs fill the queue (``QMESH_MAX_QUEUED_JOBS``); the
    Retry-After is when, at ``completion_rate`` jobs/s, a place frees up."""
    if write_backlog > settings.max_write_backlog:
        # The database is the bottleneck right now: say so at once rather than queue the
        # submit behind it.
        return Overloaded(
            "The coordinator's database writer is saturated; retry shortly",
            retry_after_s=1,
            details={"write_backlog": write_backlog},
        )
    bound = settings.max_queued_jobs
    if active < bound:
        return None
    excess = active - bound + 1
    retry_after = (
        60 if completion_rate <= 0 else min(60, max(1, math.ceil(excess / completion_rate)))
    )
    return Overloaded(
        f"The coordinator has {active} unfinished jobs (limit {bound}); retry later",
        retry_after_s=retry_after,
        details={"active_jobs": active, "limit": bound},
    )


class JobCancelled(QMeshError):
    code = "cancelled"


CIRCUIT_KIND = "circuit"


class JobProcess(Protocol):
    """One job's workload: what it does between QUEUED and its end (made per job, so it may
    keep what ``compile`` prepared for ``execute``)."""

    async def compile(self) -> str | None:
        """Prepare the work (parse, plan). Returns a plan id, if the workload has plans."""
        ...

    async def execute(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Run the work; returns the result and the final progress (None: keep the last)."""
        ...


Processor = Callable[["JobHandle"], JobProcess]


# How a job document shows a circuit's result (docs/api.md, "Job documents"): the ``full``
# view has every stored field but the statevector (unless included), the ``summary`` view
# (lists) only what does not grow with the number of basis states.
#: The ``quantum_result`` fields a summary keeps: none of them grows with 2**n.
SUMMARY_FIELDS = (
    "num_qubits",
    "num_clbits",
    "shots",
    "seed",
    "measured_qubits",
    "measured_all_implicitly",
    "fidelity",
    "estimated_execution_fidelity",
    "top_basis_states",
    "truncated",
)
#: The paths of a circuit job's stored result a summary reads (lists read only these).
SUMMARY_PATHS: tuple[tuple[str, ...], ...] = (
    ("fragment_results",),
    *(("quantum_result", name) for name in SUMMARY_FIELDS),
    ("quantum_result", "statevector", "sha256"),
)
#: What a summary leaves out (fields of the contract's ``quantum_result``).
SUMMARY_OMITS = (
    "counts",
    "probabilities",
    "measured_probabilities",
    "statevector",
    "measurements",
    "observable_expectations",
    "reduced_density_matrices",
    "bloch_vectors",
    "entanglement_entropy",
)
#: What the full view leaves out unless included (the contract: ``?include=statevector``).
FULL_OMITS = ("statevector",)
STATEVECTOR_ITEM_BYTES = 16  # complex128
#: ``job_to_dict``'s default: show the job's own stored result.
STORED: Any = object()


def job_to_dict(
    job: Job,
    *,
    view: str = "full",
    include: Collection[str] = (),
    href: Callable[[str], str] | None = None,
    result: dict[str, Any] | None = STORED,
) -> dict[str, Any]:
    """A job document (the contract's shape).

    Args:
        view: ``full`` or ``summary`` (what lists show).
        include: heavy fields to show anyway (``statevector``: the inline list, or the
            reference of a statevector kept as an artifact).
        href: the URL path of one of the job's artifacts, by name (added to references).
        result: the stored result to show in place of ``job.result`` (a list reads only
            :data:`SUMMARY_PATHS` of it; ``job.result`` is then not loaded).
    """
    given = job.result if result is STORED else result
    stored: dict[str, Any] = given if isinstance(given, dict) else {}
    is_circuit = job.kind == CIRCUIT_KIND
    quantum = stored.get("quantum_result") if is_circuit else None
    return {
        "job_id": job.job_id,
        "kind": job.kind,
        "status": job.status,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
        "plan_id": job.plan_id,
        "error": job.error,
        "progress": job.progress,
        "fragment_results": (stored.get("fragment_results") or []) if is_circuit else [],
        "quantum_result": None
        if quantum is None
        else quantum_view(quantum, view=view, include=include, href=href),
        "result": None if is_circuit else (given if job.status == JobStatus.COMPLETED else None),
    }


def quantum_view(
    stored: dict[str, Any],
    *,
    view: str = "full",
    include: Collection[str] = (),
    href: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """A stored ``quantum_result`` as a job document shows it: without the statevector
    unless included (the contract), the summary fields only in the ``summary`` view, and
    ``artifacts`` (a reference per artifact, inline statevectors included) and ``omitted``
    (the fields left out, absent when none) added."""
    if view == "summary":
        shown = {k: stored[k] for k in SUMMARY_FIELDS if k in stored}
        omitted = [k for k in SUMMARY_OMITS if k not in include]
    else:
        shown = {k: v for k, v in stored.items() if k not in FULL_OMITS or k in include}
        omitted = [k for k in FULL_OMITS if k in stored and k not in shown]
    if "statevector" in include and "statevector" in stored:
        shown["statevector"] = stored["statevector"]
    reference = _statevector_reference(stored)
    if reference is not None:
        if href is not None:
            reference["href"] = href("statevector")
        shown["artifacts"] = {"statevector": reference}
        if isinstance(shown.get("statevector"), dict):
            shown["statevector"] = reference
    if omitted:
        shown["omitted"] = omitted
    return shown


def _statevector_reference(stored: dict[str, Any]) -> dict[str, Any] | None:
    """The reference of a result's statevector: the stored one for an artifact, made up from
    the inline list (or, in a summary, the number of qubits) otherwise."""
    statevector = stored.get("statevector")
    if isinstance(statevector, dict):
        return dict(statevector)
    if isinstance(statevector, list):
        amplitudes = len(statevector)
    elif isinstance(stored.get("num_qubits"), int):
        amplitudes = 2 ** stored["num_qubits"]
    else:
        return None
    return {
        "artifact": "statevector",
        "dtype": "complex128",
        "shape": [amplitudes],
        "bytes": amplitudes * STATEVECTOR_ITEM_BYTES,
    }


def summary_result(parts: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    """A circuit job's stored result rebuilt from the :data:`SUMMARY_PATHS` read of it
    (``None`` where a path is absent): enough for the ``summary`` view."""
    quantum = {
        name: parts[("quantum_result", name)]
        for name in SUMMARY_FIELDS
        if parts.get(("quantum_result", name)) is not None
    }
    if "measured_all_implicitly" in quantum:  # SQLite's json_extract reads false as 0
        quantum["measured_all_implicitly"] = bool(quantum["measured_all_implicitly"])
    digest = parts.get(("quantum_result", "statevector", "sha256"))
    n = quantum.get("num_qubits")
    if isinstance(digest, str) and isinstance(n, int):  # the statevector is an artifact
        quantum["statevector"] = {
            "artifact": "statevector",
            "dtype": "complex128",
            "shape": [2**n],
            "bytes": 2**n * STATEVECTOR_ITEM_BYTES,
            "sha256": digest,
        }
    return {
        "fragment_results": parts.get(("fragment_results",)) or [],
        "quantum_result": quantum or None,
    }


def _advanced(
    session: Session,
    job_id: str,
    expected: JobStatus,
    steps: list[JobStatus],
    **last: Any,
) -> list[tuple[Job, JobStatus, int]] | None:
    """``steps`` (the last one with ``last``'s fields) as ``repo.advance_job`` moves, one
    statement each; ``None`` (nothing changed) where it does not apply: not PostgreSQL, a
    chain the transition table does not allow, or the job not in ``expected``."""
    current = expected
    for step in steps:
        if not may_move(current, step):
            return None
        current = step
    moves: list[tuple[Job, JobStatus, int]] = []
    current = expected
    for n, step in enumerate(steps):
        fields = last if n == len(steps) - 1 else {}
        moved = repo.advance_job(session, job_id=job_id, expected=current, to=step, **fields)
        if moved is None:
            if moves:  # the row is locked by the first move: nothing else can change it
                raise RuntimeError(f"job {job_id} left {current} while it was being moved")
            return None
        job, seq = moved
        moves.append((job, step, seq))
        current = step
    return moves


def _append_checkpoint(session: Session, *, job_id: str, state: dict[str, Any]) -> None:
    repo.append_event(session, job_id=job_id, event_type="checkpoint", payload={"state": state})


def _snapshot(job: Job) -> Job:
    """A copy of a detached job row as it is now (one state of several in one write)."""
    return Job(**{c: getattr(job, c) for c in _JOB_COLUMNS})


_JOB_COLUMNS = tuple(c.key for c in cast(Table, Job.__table__).columns)


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


class JobHandle:
    """What a processor may do with its job: read the request, report progress, keep
    checkpoints, run units of mesh work, use the worker pools, notice cancellation."""

    def __init__(self, manager: JobManager, job: Job) -> None:
        self._manager = manager
        self.job_id = job.job_id
        self.kind = job.kind
        self.request: dict[str, Any] = dict(job.request)
        self.status = JobStatus(job.status)
        self.compute = manager.compute
        #: Distinguishes unit ids of this (re)start from those of a run before a crash.
        self.run_token = uuid.uuid4().hex[:6]
        self._units = 0
        #: Big arrays the result refers to, written with the COMPLETED transition.
        self.artifacts: list[ResultArtifact] = []
        #: Writes waiting for the job's next transition (``write_with_next_transition``).
        self.staged: list[WriteOp] = []
        #: Records committed with COMPLETED, each with its after-commit step
        #: (``record_with_completion``).
        self.completion_records: list[tuple[WriteOp, Callable[[], None]]] = []

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or has ended otherwise (nothing more to send)."""
        return self._manager.has_ended(self.job_id)

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise JobCancelled(f"Job {self.job_id} was cancelled")

    def new_unit_id(self, method: str) -> str:
        self._units += 1
        return f"{method}/{self.run_token}/{self._units}"

    async def progress(self, progress: dict[str, Any], *, also: WriteOp | None = None) -> Any:
        """Report progress; ``also`` (the record it reflects) is committed with it and what
        it returns is returned."""
        return await self._manager.report_progress(self.job_id, progress, also=also)

    def write_with_next_transition(self, op: WriteOp) -> None:
        """Commit ``op`` with the job's next state change (a plan with the move to RESERVING):
        one write instead of two, and the record is durable exactly when the state says so."""
        self.staged.append(op)

    def record_with_completion(self, op: WriteOp, then: Callable[[], None]) -> None:
        """Commit ``op`` (the record of the job's last work) with its COMPLETED transition and
        call ``then`` once committed: one write less on every job's way out, and the result
        becomes durable together with the record of what produced it. Should the job end
        otherwise (cancelled, failed), ``op`` is still committed, on its own: what the nodes
        did is recorded whatever became of the job."""
        self.completion_records.append((op, then))

    def keep_artifacts(self, artifacts: Sequence[ResultArtifact]) -> None:
        """Arrays the result refers to (``job_artifacts``), stored in the same transaction
        as the job's COMPLETED transition: a completed job always has them."""
        self.artifacts = list(artifacts)

    async def checkpoint(self, state: dict[str, Any]) -> None:
        await self._manager.save_checkpoint(self.job_id, state)

    def checkpoint_behind(self, state: dict[str, Any]) -> None:
        """:meth:`checkpoint` queued, not waited for (``JobManager.save_checkpoint_behind``)."""
        self._manager.save_checkpoint_behind(self.job_id, state)

    async def last_checkpoint(self) -> dict[str, Any] | None:
        return await self._manager.last_checkpoint(self.job_id)

    async def run_unit(self, unit: WorkUnit) -> UnitOutcome:
        self.check_cancelled()
        return await self._manager.scheduler.run(unit)

    async def run_units(
        self,
        units: Sequence[WorkUnit],
        *,
        on_done: Callable[[int, int], Awaitable[None]] | None = None,
    ) -> list[UnitOutcome]:
        self.check_cancelled()
        return await self._manager.scheduler.run_many(units, on_done=on_done)

    def nodes_offering(self, service_type: str) -> list[str]:
        """Usable nodes offering ``service_type`` now, by peer ID."""
        registry = self._manager.scheduler.registry
        return sorted(v.peer_id for v in registry.usable_snapshot() if service_type in v.services)

    def units_in_flight(self, node_id: str) -> int:
        """Units placed on ``node_id`` now (every job's)."""
        return self._manager.scheduler.in_flight().get(node_id, 0)

    def kill_node(self, peer_id: str) -> bool:
        """Stop an embedded node as a crash would (its supervisor restarts it); False for a
        node this coordinator does not run."""
        kill = self._manager.kill_node
        return kill(peer_id) if kill is not None else False

    @property
    def joiner(self) -> EmbeddedJoiner | None:
        """The spare embedded node that can join mid-run (None: no embedded nodes)."""
        return self._manager.joiner

    async def call_node(self, peer_id: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A control call to one node (benchmark scenarios: ``degrade``); mesh errors raise."""
        scheduler = self._manager.scheduler
        return await scheduler.mesh.invoke(
            peer_id,
            method,
            params,
            timeout=NODE_CALL_TIMEOUT_S,
            addrs=scheduler.registry.addrs_of(peer_id),
        )

    def worker_slots(self, service_type: str, nodes: frozenset[str] | None = None) -> int:
        """Worker processes of the usable nodes offering ``service_type`` (among ``nodes``)."""
        registry = self._manager.scheduler.registry
        return sum(
            max(1, int(registry.advert_of(peer).get("workers", 1)))
            for peer in self.nodes_offering(service_type)
            if nodes is None or peer in nodes
        )

    @property
    def sizer(self) -> CallSizer:
        return self._manager.scheduler.sizer


class _ExecutingOnFirstUnit:
    """RESERVING ends when the job's first unit has its reservation committed: the move to
    EXECUTING is written in the same transaction (one write, not two, on every unit's way to
    a node). A unit of a job that has ended (cancelled while its driver still runs) is not
    reserved, or, when the job ends during the reservation, not sent."""

    def __init__(self, manager: JobManager) -> None:
        self._manager = manager

    def write(self, job_id: str) -> WriteOp | None:
        if self._manager.has_ended(job_id):
            raise JobCancelled(f"Job {job_id} has ended; its work is not sent")
        if self._manager.status_of(job_id) != JobStatus.RESERVING:
            return None

        def executing(session: Session) -> tuple[Job, int] | JobStatus:
            job = repo.lock_job(session, job_id=job_id)
            if job.status != JobStatus.RESERVING:
                return JobStatus(job.status)  # another unit was first, or the job ended
            return job, repo.transition_job(session, job=job, to=JobStatus.EXECUTING)

        return executing

    async def started(self, job_id: str, written: Any) -> None:
        manager = self._manager
        ended = manager.has_ended(job_id) or (
            isinstance(written, JobStatus) and written in TERMINAL_JOB_STATES
        )
        if ended:
            raise JobCancelled(f"Job {job_id} ended before its work was sent")
        if isinstance(written, tuple):
            job, seq = written
            manager._moved(job, JobStatus.EXECUTING, seq)


class JobManager:
    def __init__(
        self,
        *,
        db: Database,
        bus: JobEventBus,
        scheduler: WorkScheduler,
        compute: ComputePools,
        settings: Settings,
    ) -> None:
        self.db = db
        self.bus = bus
        self.scheduler = scheduler
        self.compute = compute
        self.settings = settings
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Jobs past QUEUED at once; the rest wait QUEUED, in the order they came (an
        #: asyncio semaphore wakes its waiters first come, first served).
        self._running = asyncio.Semaphore(settings.max_running_jobs)
        #: Submits admitted whose job is not written and started yet.
        self._admitting = 0
        #: Jobs cancelled while running: driver threads poll this to stop dispatching.
        self.cancelled: set[str] = set()
        self._processors: dict[str, Processor] = {}
        self._status: dict[str, JobStatus] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._finished_at: deque[float] = deque(maxlen=10_000)
        self.on_transition: list[Callable[[dict[str, Any]], None]] = []
        #: Stops a node as a crash would (embedded nodes, for benchmark scenarios); None
        #: where the coordinator runs none.
        self.kill_node: Callable[[str], bool] | None = None
        #: Starts a spare embedded node that joins mid-run (benchmarks' node_join); None
        #: where the coordinator runs no embedded nodes.
        self.joiner: EmbeddedJoiner | None = None
        scheduler.starts = _ExecutingOnFirstUnit(self)

    def register_processor(self, kind: str, processor: Processor) -> None:
        self._processors[kind] = processor

    # --- submission ----------------------------------------------------------------------
    @property
    def active(self) -> int:
        """Jobs accepted and not yet finished (the admission-control queue), counting those
        admitted and still being written: a burst of submits cannot overshoot the bound
        while their writes wait for the database."""
        return len(self._tasks) + self._admitting

    def admit(self, idempotency_key: str | None = None) -> None:
        """Refuse new work with 429 while the queue is full, with an honest Retry-After.

        A request with an Idempotency-Key is let through here: ``submit`` answers a replay
        from the database and checks admission only for new work."""
        if idempotency_key:
            return
        refusal = admission_refusal(
            active=self.active,
            write_backlog=self.db.write_backlog,
            completion_rate=self.completion_rate,
            settings=self.settings,
        )
        if refusal is not None:
            metrics.job_rejected()
            raise refusal

    @property
    def completion_rate(self) -> float:
        """Jobs finished per second over the last ``_RATE_WINDOW_S``. Older times are dropped
        as they age (they arrive in order), so a refused submit costs no scan of them: under
        overload hundreds of submits a second are refused."""
        finished, horizon = self._finished_at, time.monotonic() - _RATE_WINDOW_S
        while finished and finished[0] < horizon:
            finished.popleft()
        return len(finished) / _RATE_WINDOW_S

    async def submit(
        self,
        *,
        kind: str,
        request: dict[str, Any],
        idempotency_key: str | None,
        owner: str | None = None,
        max_active: int | None = None,
    ) -> tuple[Job, bool]:
        """Persist a QUEUED job owned by ``owner`` and start it. Returns (job, created).

        Idempotency keys are scoped per owner; with ``max_active`` the owner may have at most
        that many unfinished jobs (``QuotaExceeded``, checked in the write that creates it)."""
        if idempotency_key:
            async with self.db.transaction() as session:
                existing = await repo.get_job_by_idempotency_key(
                    session, key=idempotency_key, owner=owner
                )
            if existing is not None:
                self._check_same_request(existing, kind, request)
                return existing, False
        self.admit(None)
        job_id = str(uuid.uuid4())

        def create(session: Session) -> Job:
            return repo.create_job(
                session,
                job_id=job_id,
                kind=kind,
                request=request,
                idempotency_key=idempotency_key,
                owner=owner,
                max_unfinished=max_active,
            )

        # Admitted, the job holds its place in the queue while it is written: a burst of
        # submits cannot overshoot the bound while their writes wait for the database.
        self._admitting += 1
        try:
            job = await self.db.write(create, urgent=True)
        except IntegrityError:
            # A concurrent request with the same key won the race: return its job.
            async with self.db.transaction() as session:
                existing = await repo.get_job_by_idempotency_key(
                    session, key=idempotency_key or "", owner=owner
                )
            if existing is None:
                raise
            self._check_same_request(existing, kind, request)
            return existing, False
        finally:
            self._admitting -= 1
        self._start_queued(job)
        return job, True

    async def ingest(self, accepted: Sequence[AcceptedJob]) -> list[str]:
        """Write and start jobs another process has accepted already (the API front, from
        its fsync'd intake journal). Idempotent: a job whose row exists (a replay of the
        journal after a crash) is skipped. Returns the ids written now."""
        if not accepted:
            return []

        def create(session: Session) -> list[Job]:
            known = repo.existing_job_ids(session, [a.job_id for a in accepted])
            return [
                repo.create_job(
                    session,
                    job_id=a.job_id,
                    kind=a.kind,
                    request=a.request,
                    idempotency_key=None,
                    owner=a.owner,
                    created_at=a.accepted_at,
                )
                for a in accepted
                if a.job_id not in known
            ]

        self._admitting += len(accepted)
        try:
            jobs = await self.db.write(create)
        finally:
            self._admitting -= len(accepted)
        for job in jobs:
            self._start_queued(job)
        return [job.job_id for job in jobs]

    def _start_queued(self, job: Job) -> None:
        """A job just written QUEUED: announce it and start running it."""
        self._status[job.job_id] = JobStatus.QUEUED
        self._publish(job, seq=None)
        self._spawn(job.job_id, job)

    @staticmethod
    def _check_same_request(existing: Job, kind: str, request: dict[str, Any]) -> None:
        if existing.kind != kind or existing.request != request:
            raise Conflict(
                "Idempotency-Key was already used for a different request",
                details={"job_id": existing.job_id},
            )

    # --- reads ---------------------------------------------------------------------------
    async def get(self, job_id: str) -> Job:
        async with self.db.transaction() as session:
            return await repo.get_job(session, job_id=job_id)

    # --- transitions (the only writers of job state) -------------------------------------
    async def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        error: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        progress: dict[str, Any] | None = None,
        plan_id: str | None = None,
        artifacts: Sequence[ResultArtifact] = (),
        also: Sequence[WriteOp] = (),
        through: Sequence[JobStatus] = (),
    ) -> Job:
        """Move a job to ``to`` (committed before it is published); ``artifacts`` (the
        arrays its result refers to) and the writes in ``also`` are committed with it.
        ``through``: states passed on the way, each with its own status event, in the same
        write (a step too short to be worth a write of its own)."""

        # What this manager last committed for the job: on PostgreSQL each move is then one
        # statement (``repo.advance_job``); a stale belief changes nothing and falls back.
        expected = self._status.get(job_id)

        def op(session: Session) -> list[tuple[Job, JobStatus, int]]:
            for write in also:
                write(session)
            fast = (
                None
                if expected is None
                else _advanced(
                    session,
                    job_id,
                    expected,
                    [*through, to],
                    error=error,
                    result=result,
                    progress=progress,
                    plan_id=plan_id,
                )
            )
            if fast is not None:
                if artifacts:
                    repo.save_artifacts(session, job_id=job_id, artifacts=artifacts)
                return fast
            job = repo.lock_job(session, job_id=job_id)
            moves = []
            for step in through:
                seq = repo.transition_job(session, job=job, to=step)
                moves.append((_snapshot(job), step, seq))
            seq = repo.transition_job(
                session,
                job=job,
                to=to,
                error=error,
                result=result,
                progress=progress,
                plan_id=plan_id,
            )
            if artifacts:
                repo.save_artifacts(session, job_id=job_id, artifacts=artifacts)
            return [*moves, (job, to, seq)]

        moves = await self.db.write(op)
        for job, status, seq in moves:
            self._moved(job, status, seq)
        return moves[-1][0]

    def _moved(self, job: Job, to: JobStatus, seq: int) -> None:
        """A committed transition: remember it, then publish it."""
        if to in TERMINAL_JOB_STATES:
            self._status.pop(job.job_id, None)
            self._locks.pop(job.job_id, None)
        else:
            self._status[job.job_id] = to
        self._publish(job, seq=seq)

    async def report_progress(
        self, job_id: str, progress: dict[str, Any], *, also: WriteOp | None = None
    ) -> Any:
        """Persist progress (same status), then publish it. ``also`` (a record the progress
        reflects) is committed in the same write, even when the job has ended; returns what
        it returned."""

        def op(session: Session) -> tuple[Any, tuple[Job, int] | None]:
            extra = None if also is None else also(session)
            job = repo.lock_job(session, job_id=job_id)
            if JobStatus(job.status) in TERMINAL_JOB_STATES:
                return extra, None
            repo.set_progress(session, job=job, progress=progress)
            seq = repo.append_event(
                session, job_id=job_id, event_type="progress", payload={"progress": progress}
            )
            return extra, (job, seq)

        extra, written = await self.db.write(op)
        if written is not None:
            self._publish(written[0], seq=written[1])
        return extra

    def save_checkpoint_behind(self, job_id: str, state: dict[str, Any]) -> None:
        """Queue a driver's resumable state without waiting for its commit (any thread): it
        is durable before the job's next state change or progress, whatever comes first. A
        crash may lose the newest checkpoints; the run then resumes from an older one."""
        self.db.write_behind(partial(_append_checkpoint, job_id=job_id, state=state))

    async def save_checkpoint(self, job_id: str, state: dict[str, Any]) -> None:
        """Persist a workload driver's resumable state (an append-only event)."""

        def op(session: Session) -> None:
            _append_checkpoint(session, job_id=job_id, state=state)

        await self.db.write(op)

    async def last_checkpoint(self, job_id: str) -> dict[str, Any] | None:
        async with self.db.transaction() as session:
            event = await repo.latest_event(session, job_id=job_id, event_type="checkpoint")
        return None if event is None else dict(event.payload["state"])

    def status_of(self, job_id: str) -> JobStatus | None:
        """The job's status as this manager last committed it (None: not running here)."""
        return self._status.get(job_id)

    def has_ended(self, job_id: str) -> bool:
        return job_id in self.cancelled or job_id not in self._status

    async def _pass_through_executing(self, job_id: str) -> None:
        """The EXECUTING step of a job that sent no unit (recovered with everything done, or
        run locally): every job shows the same lifecycle."""
        if self.has_ended(job_id):
            raise JobCancelled(f"Job {job_id} has ended; its work is not sent")
        if self._status.get(job_id) != JobStatus.RESERVING:
            return
        async with self._lock(job_id):
            if self._status.get(job_id) == JobStatus.RESERVING:
                try:
                    await self.transition(job_id, JobStatus.EXECUTING)
                except Conflict as exc:
                    # Cancelled (or failed) between our check and the write: send nothing.
                    raise JobCancelled(f"Job {job_id} ended before its work was sent") from exc

    def _lock(self, job_id: str) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

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
        self.scheduler.cancel_job(job_id)
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
        return job

    # --- the lifecycle template ------------------------------------------------------------
    def _spawn(self, job_id: str, job: Job | None = None) -> None:
        """Run the job's lifecycle; ``job``: the row as just written (spares reading it)."""
        if job_id in self._tasks:
            return
        task = asyncio.create_task(self._guarded(job_id, job), name=f"job-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _t: self._finished(job_id))

    def _finished(self, job_id: str) -> None:
        self._tasks.pop(job_id, None)
        self.scheduler.forget_job(job_id)
        self._finished_at.append(time.monotonic())
        self.cancelled.discard(job_id)

    async def _guarded(self, job_id: str, job: Job | None) -> None:
        try:
            queued_at = time.monotonic()
            async with self._running:
                metrics.job_start_wait(time.monotonic() - queued_at)
                await self._lifecycle(job_id, job)
        except asyncio.CancelledError:
            raise
        except JobCancelled:
            log.info("job.driver_stopped_after_cancel", job_id=job_id)
        except QMeshError as exc:
            await self._fail(
                job_id, {"code": exc.code, "message": exc.message, "details": exc.details}
            )
        except Exception as exc:
            log.exception("job.crashed", job_id=job_id)
            await self._fail(
                job_id, {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
            )

    async def _lifecycle(self, job_id: str, job: Job | None = None) -> None:
        """QUEUED → COMPILING → RESERVING → (first committed unit) EXECUTING → COMPLETED.

        A recovered job re-enters here in whatever state it was persisted in."""
        if job is None:
            job = await self.get(job_id)
        status = JobStatus(job.status)
        if status in TERMINAL_JOB_STATES:
            return
        self._status[job_id] = status
        processor = self._processors.get(job.kind)
        if processor is None:
            raise QMeshError(f"No processor for job kind '{job.kind}'")
        handle = JobHandle(self, job)
        process = processor(handle)
        if status == JobStatus.QUEUED:
            plan_id = await self._compile_queued(job_id, process)
        else:
            plan_id = await process.compile()
        staged, handle.staged = handle.staged, []
        current = self._status.get(job_id)
        if current in (JobStatus.QUEUED, JobStatus.COMPILING):
            await self.transition(
                job_id,
                JobStatus.RESERVING,
                plan_id=plan_id,
                also=staged,
                through=[JobStatus.COMPILING] if current == JobStatus.QUEUED else [],
            )
        elif current is not None and (plan_id is not None or staged):
            # A recovered job past COMPILING: its new plan joins the state it is in.
            await self.transition(job_id, current, plan_id=plan_id, also=staged)
        try:
            result, progress = await process.execute()
            await self._pass_through_executing(job_id)
            await self.transition(
                job_id,
                JobStatus.COMPLETED,
                result=result,
                progress=progress,
                artifacts=handle.artifacts,
                also=[record for record, _ in handle.completion_records],
            )
        except BaseException:
            for record, then in handle.completion_records:
                self.db.write_behind(record, then=then)
            raise
        for _, then in handle.completion_records:
            then()

    async def _compile_queued(self, job_id: str, process: JobProcess) -> str | None:
        """Compile a QUEUED job. COMPILING is written on its own only when compiling takes
        longer than ``COMPILING_WRITE_AFTER_S`` (a big circuit, a wait for capacity);
        otherwise it is written with RESERVING, both events in one write: a small job's
        compile step is shorter than a write, and under load every write is on the path.
        Nothing is published before it is committed; a crash while compiling leaves the
        job QUEUED, and compiling again is harmless."""
        compiling = asyncio.ensure_future(process.compile())
        try:
            done, _ = await asyncio.wait({compiling}, timeout=COMPILING_WRITE_AFTER_S)
            if not done:
                await self.transition(job_id, JobStatus.COMPILING)
            return await compiling
        finally:
            compiling.cancel()

    async def _fail(self, job_id: str, error: dict[str, Any]) -> None:
        # Units of this job still waiting for a node are dropped; those on nodes finish.
        self.scheduler.cancel_job(job_id)
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
            self._spawn(job.job_id)
        return [j.job_id for j in jobs]

    async def wait_idle(self, timeout: float) -> None:
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def shutdown(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
