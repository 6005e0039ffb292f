"""The one path every unit of mesh work takes: queue → node choice → reservation → invoke.

Units (circuit fragments, QAOA blocks, angle schedules, SQD batches) wait in one queue, first
come first served by *job* for a job's first units (see ``JOB_ORDERED_UNITS``) and by arrival
after that, and are placed only on a node with a free slot, known from the node's advertised
workers and from the coordinator's own count of what it has in flight there — so a
reservation is asked for only when it is likely to be granted. A node that is busy,
restarting or briefly stale means *wait*, never failure. A unit fails only for a real fault:
nothing offers its service, its deadline passed, a node rejected it as bad input, or it
failed with real errors on ``max_unit_attempts`` executions. ``attempts`` counts executions;
refused reservations are counted apart (``refusals``).

Every accepted result is recorded exactly once: the reservation moves to EXECUTED and the
job gets one ``unit_completed`` event (circuit fragments record their own rows instead).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from quantum_mesh.config import Settings
from quantum_mesh.control import repository as repo
from quantum_mesh.control.journal import NULL_JOURNAL, Journal
from quantum_mesh.control.planner import CostWeights, offers, rank_nodes
from quantum_mesh.control.ports import MeshPort
from quantum_mesh.control.registry import PeerRegistry, PeerView
from quantum_mesh.control.reservations import ReservationService, Settlement
from quantum_mesh.control.sizing import CallSizer, PipelineDepth, UnitLengths, compute_seconds
from quantum_mesh.errors import DeadlineExceeded, ExecutionFailed, NoCapacity
from quantum_mesh.logs import get_logger
from quantum_mesh.mesh.errors import (
    InvokeTimeout,
    MeshError,
    PeerNotReached,
    PeerUnreachable,
    RemoteError,
)
from quantum_mesh.mesh.protocol import (
    BUSY_CODES,
    BUSY_REASONS,
    ENVELOPE_JOB_ID,
    ENVELOPE_RESERVATION_ID,
    ENVELOPE_UNIT_ID,
    ERR_RESERVATION_REFUSED,
    FEATURE_INLINE_RESERVE,
    NON_RETRYABLE_CODES,
)
from quantum_mesh.node.reservations import SLOTS_PER_WORKER
from quantum_mesh.observability import metrics
from quantum_mesh.store.database import Database, WriteOp

log = get_logger(__name__)

#: How long a node that refused for lack of capacity is skipped (an advert or a finished
#: unit on it ends the pause sooner).
BUSY_PAUSE_S = 0.25
#: How long a node that could not be reached is skipped.
UNREACHABLE_PAUSE_S = 1.0
#: The queue is re-examined at least this often (deadlines, pauses ending).
PUMP_INTERVAL_S = 0.1
#: A job's first this many units queue at the job's own place (its first unit's arrival):
#: a small job's next fragment goes ahead of units of jobs that came after it. Queued by
#: unit arrival alone, the 2nd fragment of each of 300 queued Bell jobs waited behind the
#: 1st fragments of all the others: every job advanced in lockstep and they finished in
#: bursts of ~100 after seconds of none, which in turn freed the admission queue in bursts.
#: Past this many units a job queues by arrival, so a long workflow takes turns with
#: the jobs that came after it instead of holding the nodes until it ends.
JOB_ORDERED_UNITS = 8
#: Jobs whose queue place is remembered (the oldest is forgotten first; a job that ends is
#: forgotten at once, ``forget_job``).
_JOB_PLACES_KEPT = 10_000

#: Optional check of a reply: a dict (``outcome`` plus details) says why it is not acceptable
#: and the unit is tried elsewhere.
Acceptance = Callable[[str, Mapping[str, Any]], dict[str, Any] | None]


class UnitStarts(Protocol):
    """What the job manager does when one of its job's units gets a committed reservation."""

    def write(self, job_id: str) -> WriteOp | None:
        """A write to commit together with the reservation (the job's move to EXECUTING),
        or None. Raises when the job has ended: nothing is reserved for it."""
        ...

    async def started(self, job_id: str, written: Any) -> None:
        """After the commit, with what the write returned. Raises when the job ended
        meanwhile: the work is not sent."""
        ...


@dataclass(frozen=True)
class WorkUnit:
    """One piece of mesh work. ``params`` is the method's payload."""

    job_id: str
    unit_id: str
    method: str
    service_type: str
    params: Mapping[str, Any]
    #: Qubits the node must hold (0: any node offering the service).
    width: int = 0
    min_fidelity: float | None = None
    #: Restrict to these nodes (a benchmark's "N nodes").
    nodes: frozenset[str] | None = None
    #: The planner's order for this unit (first = primary); others follow by rank.
    preferred: tuple[str, ...] = ()
    timeout_s: float | None = None
    #: Record a ``unit_completed`` event (circuit fragments keep their own record).
    record: bool = True
    #: The caller commits the reservation's move to EXECUTED with its own record of the
    #: result (``UnitOutcome.settlement``): one write instead of two per unit.
    settle_with_record: bool = False
    accept: Acceptance | None = None
    #: A fused circuit fragment's services, ``service_type`` first: its node offers them all.
    services: tuple[str, ...] = ()


@dataclass
class UnitOutcome:
    unit_id: str
    node_id: str
    reply: dict[str, Any]
    attempts: int
    refusals: int
    reservation_id: str
    seconds: float
    #: Seconds the unit waited in the queue before its accepted placement.
    queued_s: float
    started_at: datetime
    finished_at: datetime
    history: list[dict[str, Any]]
    #: With ``WorkUnit.settle_with_record``: the reservation's EXECUTED write, to commit.
    settlement: Settlement | None = None


@dataclass
class _Ticket:
    seq: int
    #: Its place in the queue: its job's place for a job's first units, else ``seq``.
    place: int
    unit: WorkUnit
    future: asyncio.Future[UnitOutcome]
    enqueued: float
    deadline: float
    started_at: datetime
    attempts: int = 0
    refusals: int = 0
    #: Seconds in the queue before the latest placement (also in the job's events).
    queued_s: float = 0.0
    #: The latest placement found one of the node's workers idle (nothing queued before it
    #: there), so its round trip is the unit's own.
    to_idle_worker: bool = False
    failed_on: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


class _Slot:
    """One placement's hold on a node slot, given back exactly once."""

    def __init__(self, scheduler: WorkScheduler, node_id: str) -> None:
        self._scheduler = scheduler
        self._node_id = node_id
        self._held = True

    def free(self) -> None:
        if self._held:
            self._held = False
            counts = self._scheduler._in_flight
            counts[self._node_id] = max(0, counts.get(self._node_id, 0) - 1)
            self._scheduler._wake.set()


def _order(ticket: _Ticket) -> tuple[int, int]:
    return ticket.place, ticket.seq


@dataclass
class _JobPlace:
    """Where a job's units queue: its first unit's ``seq``, for its first units."""

    place: int
    units: int = 0


class WorkScheduler:
    """Owns the work queue and each node's slots; runs on the API event loop."""

    def __init__(
        self,
        *,
        db: Database,
        mesh: MeshPort,
        registry: PeerRegistry,
        reservations: ReservationService,
        settings: Settings,
        journal: Journal = NULL_JOURNAL,
    ) -> None:
        self.db = db
        self.mesh = mesh
        self.registry = registry
        self.reservations = reservations
        self.settings = settings
        self.journal = journal
        self._queue: list[_Ticket] = []
        self._seq = itertools.count()
        self._job_places: OrderedDict[str, _JobPlace] = OrderedDict()
        self._in_flight: dict[str, int] = {}
        self._paused_until: dict[str, float] = {}
        #: Nodes paused because their connection died or none could be made: heard again,
        #: they have dialled back, and the pause ends (``node_heard``).
        self._unreached: set[str] = set()
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        #: Told of each unit whose reservation is committed, before it is sent.
        self.starts: UnitStarts | None = None
        #: What units have cost so far: sizes groups of small jobs (``control/sizing.py``).
        self.sizer = CallSizer()
        #: Units per worker to keep placed (at most what a node accepts).
        self.pipeline = PipelineDepth(most=SLOTS_PER_WORKER)
        #: Methods whose units wait for an idle worker rather than queue behind a busy one.
        self.lengths = UnitLengths()

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self._pump_task is None:
            self._pump_task = asyncio.create_task(self._pump(), name="work-scheduler")

    async def stop(self) -> None:
        tasks = [t for t in [self._pump_task, *self._running] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pump_task = None
        for ticket in self._queue:
            if not ticket.future.done():
                ticket.future.cancel()
        self._queue.clear()

    # --- public ----------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self._queue)

    def in_flight(self) -> dict[str, int]:
        return {k: v for k, v in self._in_flight.items() if v}

    async def run(self, unit: WorkUnit) -> UnitOutcome:
        """Queue ``unit`` and wait for its accepted result (or its real failure)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        seq = next(self._seq)
        ticket = _Ticket(
            seq=seq,
            place=self._place_of(unit.job_id, seq),
            unit=unit,
            future=loop.create_future(),
            enqueued=now,
            deadline=now + self.settings.unit_deadline_s,
            started_at=datetime.now(UTC),
        )
        self._push(ticket)
        try:
            return await asyncio.shield(ticket.future)
        except asyncio.CancelledError:
            self._drop(ticket)
            ticket.future.cancel()  # a placement still running sees nobody waits for it
            raise

    async def run_many(
        self,
        units: Sequence[WorkUnit],
        *,
        on_done: Callable[[int, int], Awaitable[None]] | None = None,
    ) -> list[UnitOutcome]:
        """Run every unit; results in input order. The first real failure cancels the rest."""
        done = 0

        async def one(unit: WorkUnit) -> UnitOutcome:
            nonlocal done
            outcome = await self.run(unit)
            done += 1
            if on_done is not None:
                await on_done(done, len(units))
            return outcome

        tasks = [asyncio.ensure_future(one(u)) for u in units]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    def forget_job(self, job_id: str) -> None:
        """The job has ended: units it may still send queue by arrival."""
        self._job_places.pop(job_id, None)

    def cancel_job(self, job_id: str) -> int:
        """Drop a cancelled job's waiting units; units already on a node finish there."""
        mine = [t for t in self._queue if t.unit.job_id == job_id]
        for ticket in mine:
            self._drop(ticket)
            if not ticket.future.done():
                ticket.future.cancel()
        return len(mine)

    # --- queue -----------------------------------------------------------------------------
    def _place_of(self, job_id: str, seq: int) -> int:
        job = self._job_places.get(job_id)
        if job is None:
            job = self._job_places[job_id] = _JobPlace(place=seq)
            if len(self._job_places) > _JOB_PLACES_KEPT:
                self._job_places.popitem(last=False)
        job.units += 1
        return job.place if job.units <= JOB_ORDERED_UNITS else seq

    def _push(self, ticket: _Ticket) -> None:
        # Kept in queue order; a requeued unit goes back to its original place.
        bisect.insort(self._queue, ticket, key=_order)
        metrics.set_queue_depth(len(self._queue))
        self._wake.set()

    def _drop(self, ticket: _Ticket) -> None:
        if ticket in self._queue:
            self._queue.remove(ticket)
            metrics.set_queue_depth(len(self._queue))

    async def _pump(self) -> None:
        last_check = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=PUMP_INTERVAL_S)
            self._wake.clear()
            now = time.monotonic()
            # Deadlines and vanished services are checked on a timer, not on every wake-up.
            check = now - last_check >= PUMP_INTERVAL_S
            if check:
                last_check = now
            try:
                self._place_waiting(check_faults=check)
            except Exception:  # the pump must survive anything a placement raises
                log.exception("scheduler.pump_failed")

    def _place_waiting(self, *, check_faults: bool = True) -> None:
        if not self._queue:
            return
        now = time.monotonic()
        known = self.registry.snapshot()
        usable = [v for v in known if v.fresh and self.registry.is_trusted(v.peer_id)]
        has_room = any(
            self.free_slots(v) > 0 and self._paused_until.get(v.peer_id, 0.0) <= now for v in usable
        )
        if not has_room and not check_faults:
            return
        keep: list[_Ticket] = []
        for ticket in self._queue:  # in queue order (module docstring)
            if ticket.future.done():
                continue
            node = self._choose(ticket, usable, now) if has_room else None
            if node is not None:
                held = self._in_flight.get(node, 0)
                ticket.to_idle_worker = held < self._workers_of(node)
                self._in_flight[node] = held + 1
                ticket.queued_s = now - ticket.enqueued
                metrics.queue_wait(ticket.queued_s)
                task = asyncio.create_task(self._execute(ticket, node))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
                has_room = any(
                    self.free_slots(v) > 0 and self._paused_until.get(v.peer_id, 0.0) <= now
                    for v in usable
                )
                continue
            failure = self._fault_while_waiting(ticket, now, known) if check_faults else None
            if failure is not None:
                ticket.future.set_exception(failure)
                continue
            keep.append(ticket)
        self._queue = keep
        metrics.set_queue_depth(len(keep))

    @staticmethod
    def _offers(view: PeerView, unit: WorkUnit) -> bool:
        return offers(view, unit.service_type, unit.width, *unit.services) and (
            unit.nodes is None or view.peer_id in unit.nodes
        )

    def _workers(self, view: PeerView) -> int:
        return self._workers_of(view.peer_id)

    def _workers_of(self, node_id: str) -> int:
        return max(1, int(self.registry.advert_of(node_id).get("workers", 1)))

    def free_slots(self, view: PeerView) -> int:
        """Units that may still be placed on the node (``pipeline``: per worker)."""
        depth = self.pipeline.per_worker()
        return self._workers(view) * depth - self._in_flight.get(view.peer_id, 0)

    def _choose(self, ticket: _Ticket, usable: list[PeerView], now: float) -> str | None:
        unit = ticket.unit
        able = [v for v in usable if self._offers(v, unit)]
        # While a node this unit has not failed on is usable, wait for it rather than retry
        # where the unit already failed (a noisy node stays noisy, a crashing handler crashes).
        if any(v.peer_id not in ticket.failed_on for v in able):
            able = [v for v in able if v.peer_id not in ticket.failed_on]
        # A long unit goes to an idle worker only (``UnitLengths``): queued on a node, it
        # could not move when another node's worker goes idle first.
        long_unit = self.lengths.is_long(unit.method)
        candidates = [
            v
            for v in able
            if self.free_slots(v) > 0
            and self._paused_until.get(v.peer_id, 0.0) <= now
            and not (long_unit and self._in_flight.get(v.peer_id, 0) >= self._workers(v))
        ]
        if not candidates:
            return None

        # The least loaded nodes first (units in flight per worker, in whole workers): a node
        # with an idle worker before any busy one, and when all are busy, the shortest
        # queue. The extra slots per worker hide round trips for tiny units; they must never
        # queue a long unit behind a busy worker while another node has less to do.
        def queue_depth(v: PeerView) -> int:
            return self._in_flight.get(v.peer_id, 0) // self._workers(v)

        lightest = min(queue_depth(v) for v in candidates)
        ranked = rank_nodes(
            [v for v in candidates if queue_depth(v) == lightest],
            weights=CostWeights.from_settings(self.settings),
            preferred=unit.preferred,
            min_fidelity=unit.min_fidelity,
            failed_on=ticket.failed_on,
            in_flight=self._in_flight,
        )
        return ranked[0].peer_id

    def _fault_while_waiting(
        self, ticket: _Ticket, now: float, known: list[PeerView]
    ) -> Exception | None:
        """Why a unit that cannot be placed now will never be, or ``None`` (keep waiting)."""
        unit = ticket.unit
        waited = now - ticket.enqueued
        offered = any(self._offers(v, unit) for v in known)
        if not offered and waited >= self.settings.capacity_wait_s:
            return NoCapacity(
                f"No enrolled node offers '{' + '.join(unit.services or (unit.service_type,))}'"
                + (f" for {unit.width} qubits" if unit.width else ""),
                details={"unit_id": unit.unit_id, "service_type": unit.service_type},
            )
        if now >= ticket.deadline:
            return DeadlineExceeded(
                f"Unit {unit.unit_id} waited {waited:.1f} s for a node with a free slot",
                details={
                    "unit_id": unit.unit_id,
                    "attempts": ticket.attempts,
                    "refusals": ticket.refusals,
                    "history": ticket.history[-20:],
                },
            )
        return None

    # --- one placement -------------------------------------------------------------------
    async def _execute(self, ticket: _Ticket, node_id: str) -> None:
        unit = ticket.unit
        slot = _Slot(self, node_id)
        try:
            outcome = await self._attempt(ticket, node_id, slot)
        except asyncio.CancelledError:
            if not ticket.future.done():
                ticket.future.cancel()
            raise
        except Exception as exc:  # a bug here must fail the unit, not hang it
            log.exception("scheduler.attempt_crashed", unit_id=unit.unit_id)
            outcome = exc
        finally:
            slot.free()
        if ticket.future.done():
            if isinstance(outcome, UnitOutcome) and outcome.settlement is not None:
                # Nobody waits for this result (its job was cancelled): the work was still
                # done, so its reservation is still settled.
                settlement = outcome.settlement
                self.db.write_behind(settlement.write, then=settlement.committed)
            return
        if isinstance(outcome, UnitOutcome):
            ticket.future.set_result(outcome)
        elif isinstance(outcome, Exception):
            ticket.future.set_exception(outcome)
        else:  # requeued: wait for the next placement
            self._push(ticket)

    async def _attempt(
        self, ticket: _Ticket, node_id: str, slot: _Slot
    ) -> UnitOutcome | Exception | None:
        """One reservation + invocation. Returns the outcome, a final error, or ``None`` to
        requeue the unit."""
        unit = ticket.unit
        placed = time.perf_counter()
        try:
            also = None if self.starts is None else self.starts.write(unit.job_id)
        except Exception as exc:  # the job has ended: reserve nothing
            return exc
        started_event = {
            "unit_id": unit.unit_id,
            "method": unit.method,
            "queued_s": round(ticket.queued_s, 6),
        }
        # A node that takes one gets the unit's reservation with the work: one round trip,
        # the negotiation recorded once the node has answered (with the job's move to
        # EXECUTING when this is its first unit). As with an early grant, the node works
        # while that record is written; nothing is accepted before it is durable.
        ask = (
            self.reservations.inline(
                service_type=unit.service_type,
                node_id=node_id,
                min_fidelity=unit.min_fidelity,
                job_id=unit.job_id,
                fragment_id=unit.unit_id,
            )
            if self._takes_inline(node_id)
            else None
        )
        negotiation = None
        if ask is None:
            negotiation = await self.reservations.negotiate(
                service_type=unit.service_type,
                node_id=node_id,
                min_fidelity=unit.min_fidelity,
                job_id=unit.job_id,
                fragment_id=unit.unit_id,
                started_event=started_event,
                also=also,
                early=True,
            )
            if not negotiation.granted:
                reservation, _ = await negotiation.recorded
                await self._refused(
                    ticket, node_id, reservation.reason or "refused", reservation.reservation_id
                )
                return None
            reservation_id = negotiation.reservation_id
            envelope: dict[str, Any] = {ENVELOPE_RESERVATION_ID: reservation_id}
        else:
            reservation_id = ask.reservation_id
            envelope = ask.envelope()
        ticket.attempts += 1
        t0 = time.perf_counter()
        payload = {
            **unit.params,
            **envelope,
            ENVELOPE_UNIT_ID: unit.unit_id,
            ENVELOPE_JOB_ID: unit.job_id,
        }
        # Sent while the reservation's record (and the job's move to EXECUTING) is being
        # committed: the node works during the commit. Nothing about the unit is recorded or
        # accepted before that record is durable.
        failure: MeshError | None = None
        try:
            reply = await self.mesh.invoke(
                node_id,
                unit.method,
                payload,
                timeout=unit.timeout_s or self.settings.invoke_timeout_s,
                addrs=self.registry.addrs_of(node_id),
            )
        except MeshError as exc:
            failure, reply = exc, {}
        # The node's round trip alone: what follows waits for the reservation's commit.
        seconds = time.perf_counter() - t0
        slot.free()
        if ask is not None:
            # Refused, or never delivered (no connection could be made: a node that lost its
            # link and has not dialled back yet). Neither ran the unit, so neither is an
            # attempt; as with a reservation asked apart, the node is paused and the unit
            # waits. Counted as attempts, a link that resets now and then failed units whose
            # node was back a second later.
            refusal: str | None = None
            if isinstance(failure, RemoteError) and failure.code == ERR_RESERVATION_REFUSED:
                refusal = failure.message
            elif isinstance(failure, PeerNotReached):
                refusal = f"unreachable: {failure}"
            if refusal is not None:
                ticket.attempts -= 1  # it never ran
                self.reservations.record_inline(ask, refused=refusal)
                if isinstance(failure, PeerNotReached):
                    self._unreached.add(node_id)
                await self._refused(ticket, node_id, refusal, reservation_id)
                return None
            if also is None:
                self.reservations.record_inline(ask, refused=None, started_event=started_event)
        try:
            written = None
            if negotiation is not None:
                written = (await negotiation.recorded)[1]
            elif ask is not None and also is not None:
                written = await self.reservations.record_inline_with(
                    ask, started_event=started_event, also=also
                )
            if self.starts is not None:
                await self.starts.started(unit.job_id, written)
        except Exception as ended:  # the job ended meanwhile: whatever the node did is unused
            await self._settle_unaccepted(reservation_id, failure, reason=f"not accepted: {ended}")
            return ended
        if isinstance(failure, RemoteError):
            await self._settle(reservation_id, failure, reason=failure.code)
            if failure.code in BUSY_CODES:
                ticket.attempts -= 1  # it never ran
                await self._refused(ticket, node_id, failure.code, reservation_id, busy=True)
                return None
            self.registry.record_outcome(node_id, ok=False)
            await self._setback(
                ticket,
                "attempt_failed",
                node_id=node_id,
                attempt=ticket.attempts,
                outcome="remote_error",
                code=failure.code,
                message=failure.message,
            )
            if failure.code in NON_RETRYABLE_CODES:
                return ExecutionFailed(
                    f"{unit.method} rejected by node {node_id}: {failure.message}",
                    details={"unit_id": unit.unit_id, "code": failure.code},
                )
            return self._retry_or_fail(ticket, node_id)
        if failure is not None:
            await self._settle(reservation_id, failure, reason=f"invocation failed: {failure}")
            self.registry.record_outcome(node_id, ok=False)
            self._pause(node_id, UNREACHABLE_PAUSE_S)
            if isinstance(failure, PeerUnreachable):  # its connection died (not a timeout)
                self._unreached.add(node_id)
            await self._setback(
                ticket,
                "attempt_failed",
                node_id=node_id,
                attempt=ticket.attempts,
                outcome="timeout" if isinstance(failure, InvokeTimeout) else "connection_lost",
                code=type(failure).__name__,
                message=str(failure),
            )
            return self._retry_or_fail(ticket, node_id)
        self.pipeline.observe(
            coordinator_s=t0 - placed,
            round_trip_s=seconds,
            node_s=_as_float(reply.get("seconds")),
        )
        if ticket.to_idle_worker:  # else the round trip includes the wait behind another unit
            compute = compute_seconds(reply)
            self.lengths.observe(
                unit.method,
                overhead_s=(t0 - placed) + max(0.0, seconds - compute),
                compute_s=compute,
            )
        self.registry.record_latency(node_id, seconds)
        rejected = unit.accept(node_id, reply) if unit.accept is not None else None
        if rejected is not None:
            outcome_name = str(rejected.get("outcome", "rejected"))
            await self._settle(reservation_id, None, reason=outcome_name)
            self.registry.record_outcome(
                node_id, ok=False, observed_fidelity=rejected.get("observed_fidelity")
            )
            await self._setback(
                ticket,
                outcome_name,
                node_id=node_id,
                attempt=ticket.attempts,
                **{**rejected, "seconds": round(seconds, 6)},
            )
            return self._retry_or_fail(ticket, node_id)
        self.registry.record_outcome(
            node_id, ok=True, observed_fidelity=_as_float(reply.get("observed_fidelity"))
        )
        ticket.history.append(
            {
                "node_id": node_id,
                "attempt": ticket.attempts,
                "outcome": "ok",
                "seconds": round(seconds, 6),
                "queued_s": round(ticket.queued_s, 6),
                "reservation_id": reservation_id,
            }
        )
        outcome = UnitOutcome(
            unit_id=unit.unit_id,
            node_id=node_id,
            reply=dict(reply),
            attempts=ticket.attempts,
            refusals=ticket.refusals,
            reservation_id=reservation_id,
            seconds=seconds,
            queued_s=ticket.queued_s,
            started_at=ticket.started_at,
            finished_at=datetime.now(UTC),
            history=ticket.history,
        )
        if unit.settle_with_record:
            outcome.settlement = self.reservations.executed_write(reservation_id)
        else:
            # Queued behind, not waited for: the result is accepted here, once, and nothing
            # is acknowledged on the strength of this record; the writer commits in order,
            # so it is durable before the job's next checkpoint or state change. A driver's
            # round does not wait a commit for it.
            settlement = self.reservations.executed_write(
                reservation_id,
                completed_event=self._completion_event(unit, outcome) if unit.record else None,
            )
            self.db.write_behind(settlement.write, then=settlement.committed)
        return outcome

    def _takes_inline(self, node_id: str) -> bool:
        features = self.registry.advert_of(node_id).get("features")
        return (
            self.settings.inline_reservations
            and isinstance(features, list)
            and FEATURE_INLINE_RESERVE in features
        )

    async def _refused(
        self,
        ticket: _Ticket,
        node_id: str,
        reason: str,
        reservation_id: str,
        *,
        busy: bool | None = None,
    ) -> None:
        """The node refused the unit (its reservation, or the work as ``busy``): wait (busy)
        or try elsewhere, no attempt counted; the unit goes back to the queue."""
        ticket.refusals += 1
        busy = reason in BUSY_REASONS if busy is None else busy
        self._pause(node_id, BUSY_PAUSE_S if busy else UNREACHABLE_PAUSE_S)
        if not busy:
            ticket.failed_on[node_id] = ticket.failed_on.get(node_id, 0) + 1
        await self._setback(
            ticket,
            "reservation_rejected",
            node_id=node_id,
            attempt=None,
            outcome="reservation_rejected",
            reason=reason,
            reservation_id=reservation_id,
        )

    @staticmethod
    def _completion_event(unit: WorkUnit, outcome: UnitOutcome) -> dict[str, Any]:
        return {
            "job_id": unit.job_id,
            "event_type": "unit_completed",
            "fragment_id": unit.unit_id,
            "node_id": outcome.node_id,
            "attempt": outcome.attempts,
            "payload": {
                "method": unit.method,
                "reservation_id": outcome.reservation_id,
                "attempts": outcome.attempts,
                "refusals": outcome.refusals,
                "seconds": round(outcome.seconds, 6),
                "queued_s": round(outcome.queued_s, 6),
            },
        }

    def _retry_or_fail(self, ticket: _Ticket, node_id: str) -> Exception | None:
        ticket.failed_on[node_id] = ticket.failed_on.get(node_id, 0) + 1
        if ticket.attempts >= self.settings.max_unit_attempts:
            unit = ticket.unit
            return ExecutionFailed(
                f"{unit.method} unit {unit.unit_id} failed {ticket.attempts} times",
                details={"unit_id": unit.unit_id, "history": ticket.history[-20:]},
            )
        return None

    async def _settle(self, reservation_id: str, failure: MeshError | None, *, reason: str) -> None:
        """The reservation of a unit whose result is not accepted, settled as what the node
        did with the work: never ran it (busy; or unknown after a lost call, when the TTL
        frees a live node's slot) or ran it (``failure`` is ``None`` or a real error)."""
        never_ran = failure is not None and not (
            isinstance(failure, RemoteError) and failure.code not in BUSY_CODES
        )
        if never_ran:
            await self.reservations.mark_unused(reservation_id, reason=reason)
        else:
            await self.reservations.mark_executed(reservation_id, reason=reason)

    async def _settle_unaccepted(
        self, reservation_id: str, failure: MeshError | None, *, reason: str
    ) -> None:
        """A unit sent for a job that ended meanwhile: its reservation is settled and nothing
        else is recorded."""
        try:
            await self._settle(reservation_id, failure, reason=reason)
        except Exception as exc:  # e.g. its record never committed: the node's TTL ends it
            log.info("scheduler.settle_failed", reservation_id=reservation_id, error=str(exc))

    def _pause(self, node_id: str, seconds: float) -> None:
        self._paused_until[node_id] = time.monotonic() + seconds

    def node_heard(self, node_id: str) -> None:
        """A fresh advert ends a busy pause early: the node says how loaded it is now. It
        also ends the pause of a node that could not be reached: a node introduces itself
        as soon as it has dialled back, so its units need not wait out the second."""
        until = self._paused_until.get(node_id)
        if until is not None and (
            node_id in self._unreached or until - time.monotonic() <= BUSY_PAUSE_S
        ):
            self._paused_until.pop(node_id, None)
        self._unreached.discard(node_id)
        self._wake.set()

    async def _setback(
        self,
        ticket: _Ticket,
        event_type: str,
        *,
        node_id: str,
        attempt: int | None,
        outcome: str,
        **details: Any,
    ) -> None:
        """A try that did not produce the unit: into its history, the events and metrics."""
        unit = ticket.unit
        details.pop("outcome", None)
        ticket.history.append(
            {"node_id": node_id, "attempt": attempt, "outcome": outcome, **details}
        )
        metrics.retry(outcome)

        def op(session: Session) -> None:
            repo.append_event(
                session,
                job_id=unit.job_id,
                event_type=event_type,
                fragment_id=unit.unit_id,
                node_id=node_id,
                attempt=attempt,
                payload={"outcome": outcome, **details},
            )

        await self.db.write(op)
        self.journal.record(
            f"execution.{event_type}",
            job_id=unit.job_id,
            fragment_id=unit.unit_id,
            node_id=node_id,
            attempt=attempt,
            **details,
        )


def _as_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
