"""Reservations negotiated with nodes over the mesh: REQUESTED → PREPARED → COMMITTED → …

Each state is committed (row + append-only event) before the work it allows is sent, so a
crash leaves an honest record and the TTL sweeper can expire what was left behind. A direct
reservation's request is committed before the node is asked; the scheduler's are recorded
with the node's answer, in one write (see ``negotiate``).
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from quantum_mesh.control import repository as repo
from quantum_mesh.control.journal import NULL_JOURNAL, Journal
from quantum_mesh.control.planner import rank_nodes
from quantum_mesh.control.ports import MeshPort
from quantum_mesh.control.registry import PeerRegistry
from quantum_mesh.control.states import (
    RESERVATION_TRANSITIONS,
    TERMINAL_RESERVATION_STATES,
    ReservationStatus,
)
from quantum_mesh.errors import Conflict, InvalidInput, NoCapacity, NotFound, QuotaExceeded
from quantum_mesh.logs import get_logger
from quantum_mesh.mesh.errors import MeshError, RemoteError
from quantum_mesh.mesh.protocol import (
    ENVELOPE_RESERVATION_ID,
    ENVELOPE_RESERVE,
    METHOD_COMMIT,
    METHOD_RELEASE,
    METHOD_RESERVE,
)
from quantum_mesh.store.database import Database, WriteOp
from quantum_mesh.store.prepared import Prepared
from quantum_mesh.store.tables import Reservation, ReservationEvent, utcnow

log = get_logger(__name__)

DEFAULT_TTL_S = 30.0
NEGOTIATION_TIMEOUT_S = 5.0
#: Records a new reservation (REQUESTED) in a write: the row and its first event.
_Create = Callable[[Session], tuple[Reservation, list[dict[str, Any]]]]
_ACTIVE = (ReservationStatus.REQUESTED, ReservationStatus.PREPARED, ReservationStatus.COMMITTED)


def reservation_to_dict(r: Reservation) -> dict[str, Any]:
    return {
        "reservation_id": r.reservation_id,
        "service_type": r.service_type,
        "node_id": r.node_id,
        "status": r.status,
        "expires_at": r.expires_at.isoformat(),
        "min_fidelity": r.min_fidelity,
        "job_id": r.job_id,
        "fragment_id": r.fragment_id,
        "reason": r.reason,
        "owner": r.owner,
        "created_at": r.created_at.isoformat(),
        "updated_at": r.updated_at.isoformat(),
    }


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=moment.tzinfo or UTC)


def _check_reservation_quota(session: Session, owner: str, limit: int) -> None:
    """Refuse a direct reservation while ``owner`` holds ``limit`` unexpired active ones."""
    rows = session.execute(
        select(Reservation.expires_at).where(
            Reservation.owner == owner,
            Reservation.status.in_([s.value for s in _ACTIVE]),
        )
    )
    now = datetime.now(UTC)
    live = sorted(_aware(e) for e in rows.scalars() if _aware(e) > now)
    if len(live) < limit:
        return
    retry_after = max(1, math.ceil((live[0] - now).total_seconds()))
    raise QuotaExceeded(
        f"{owner} holds {len(live)} active reservations (quota {limit}); cancel one or wait "
        "for one to expire",
        retry_after_s=retry_after,
        details={
            "quota": "active_reservations",
            "principal": owner,
            "active": len(live),
            "limit": limit,
        },
    )


def _advance(
    r: Reservation, to: ReservationStatus, reason: str | None, events: list[dict[str, Any]]
) -> None:
    """One step of a reservation's life, with its append-only event (into ``events``)."""
    current = ReservationStatus(r.status)
    if to not in RESERVATION_TRANSITIONS.get(current, frozenset()):
        raise Conflict(
            f"Reservation {r.reservation_id} cannot move from {current} to {to}",
            details={"reservation_id": r.reservation_id, "status": current.value},
        )
    r.status = to.value
    r.updated_at = utcnow()
    if reason is not None:
        r.reason = reason
    events.append(
        {
            "reservation_id": r.reservation_id,
            "status": to.value,
            "node_id": r.node_id,
            "payload": {"reason": reason} if reason else {},
            "at": r.updated_at,
        }
    )


# The hot path's statements, past the ORM's unit of work (one reservation's life is written
# on every unit's way to a node): rows are read into detached objects and changed here only.
_RESERVATIONS = cast(Table, Reservation.__table__)
_EVENTS = cast(Table, ReservationEvent.__table__)
_LOCK = Prepared(
    select(_RESERVATIONS)
    .where(_RESERVATIONS.c.reservation_id == bindparam("reservation_id"))
    .with_for_update()
)
_INSERT = Prepared(insert(_RESERVATIONS))
_UPDATE = Prepared(
    update(_RESERVATIONS).where(_RESERVATIONS.c.reservation_id == bindparam("b_reservation_id"))
)
_INSERT_EVENTS = Prepared(insert(_EVENTS))
_COLUMNS = tuple(c.key for c in _RESERVATIONS.columns)


def _lock(session: Session, reservation_id: str) -> Reservation:
    found = _LOCK.first(session, {"reservation_id": reservation_id})
    if found is None:
        raise NotFound(f"Reservation {reservation_id} does not exist")
    return Reservation(**found)


def _store(
    session: Session, r: Reservation, events: list[dict[str, Any]], *, insert_row: bool
) -> None:
    if insert_row:
        _INSERT.execute(session, {k: getattr(r, k) for k in _COLUMNS})
    else:
        _UPDATE.execute(
            session,
            {
                "status": r.status,
                "updated_at": r.updated_at,
                "reason": r.reason,
                "b_reservation_id": r.reservation_id,
            },
        )
    _INSERT_EVENTS.execute_many(session, events)


@dataclass(frozen=True)
class Settlement:
    """A reservation's move to EXECUTED, committed by whoever records the unit's result."""

    write: WriteOp
    #: Call once ``write`` is committed.
    committed: Callable[[], None]


@dataclass(frozen=True)
class Negotiation:
    """What :meth:`ReservationService.negotiate` got from the node: ``granted`` (COMMITTED)
    or not (REJECTED), and ``recorded``, the reservation's record (the reservation and what
    ``also`` returned). A rejection, and any negotiation without ``early``, is returned
    recorded; an early grant while its record is still being written, so that the work may
    be sent meanwhile and its result accepted only once ``recorded`` is done."""

    reservation_id: str
    granted: bool
    recorded: asyncio.Future[tuple[Reservation, Any]]

    @classmethod
    def written(
        cls, reservation_id: str, record: tuple[Reservation, Any], *, granted: bool
    ) -> Negotiation:
        done: asyncio.Future[tuple[Reservation, Any]] = asyncio.get_running_loop().create_future()
        done.set_result(record)
        return cls(reservation_id=reservation_id, granted=granted, recorded=done)


def _requested(
    *,
    reservation_id: str,
    service_type: str,
    node_id: str,
    job_id: str | None,
    fragment_id: str | None,
    min_fidelity: float | None,
    ttl_s: float,
    expires_at: datetime,
    owner: str | None = None,
) -> tuple[Reservation, list[dict[str, Any]]]:
    """A new reservation row, REQUESTED, and its first event."""
    now = utcnow()
    r = Reservation(
        reservation_id=reservation_id,
        service_type=service_type,
        node_id=node_id,
        job_id=job_id,
        fragment_id=fragment_id,
        min_fidelity=min_fidelity,
        status=ReservationStatus.REQUESTED.value,
        reason=None,
        expires_at=expires_at,
        created_at=now,
        updated_at=now,
        owner=owner,
    )
    event = {
        "reservation_id": reservation_id,
        "status": ReservationStatus.REQUESTED.value,
        "node_id": node_id,
        "payload": {"service_type": service_type, "ttl_s": ttl_s, "job_id": job_id},
        "at": now,
    }
    return r, [event]


def _attempt_started(
    started_event: dict[str, Any] | None,
    *,
    job_id: str | None,
    fragment_id: str | None,
    node_id: str,
    reservation_id: str,
) -> dict[str, Any] | None:
    """The job's ``attempt_started`` event for a granted reservation (None without a job)."""
    if started_event is None or job_id is None:
        return None
    return {
        "job_id": job_id,
        "event_type": "attempt_started",
        "fragment_id": fragment_id,
        "node_id": node_id,
        "payload": {**started_event, "reservation_id": reservation_id},
    }


def _steps_write(
    reservation_id: str,
    path: Sequence[ReservationStatus],
    *,
    reason: str | None,
    job_event: dict[str, Any] | None,
    also: WriteOp | None,
    create: _Create | None,
) -> Callable[[Session], tuple[Reservation, Any]]:
    """One transaction moving a reservation through ``path`` (one event per step), with
    ``create`` recording it first (REQUESTED), the job event this step makes true and
    ``also``. The write returns the reservation and what ``also`` returned."""

    def op(session: Session) -> tuple[Reservation, Any]:
        if create is not None:
            r, events = create(session)
        else:
            r, events = _lock(session, reservation_id), []
        for to in path:
            _advance(r, to, reason, events)
        _store(session, r, events, insert_row=create is not None)
        if job_event is not None:
            repo.append_event(session, **job_event)
        return r, None if also is None else also(session)

    return op


@dataclass(frozen=True)
class InlineReservation:
    """A reservation asked for with the work itself (``ENVELOPE_RESERVE``, to nodes that
    advertise ``FEATURE_INLINE_RESERVE``): one round trip instead of a ``reserve`` and then
    the work. Nothing is written before the node answers; :meth:`ReservationService.
    record_inline` then queues the whole negotiation, granted or refused, as one write."""

    reservation_id: str
    service_type: str
    node_id: str
    min_fidelity: float | None
    ttl_s: float
    job_id: str | None
    fragment_id: str | None
    expires_at: datetime

    def envelope(self) -> dict[str, Any]:
        return {
            ENVELOPE_RESERVATION_ID: self.reservation_id,
            ENVELOPE_RESERVE: {
                "service_type": self.service_type,
                "min_fidelity": self.min_fidelity,
                "ttl_s": self.ttl_s,
            },
        }


def _retrieve_error(task: asyncio.Future[Any]) -> None:
    # Whoever holds the grant awaits it; this only keeps an abandoned one from being
    # reported as "exception never retrieved".
    if not task.cancelled():
        task.exception()


class ReservationService:
    def __init__(
        self,
        *,
        db: Database,
        mesh: MeshPort,
        registry: PeerRegistry,
        journal: Journal = NULL_JOURNAL,
    ) -> None:
        self.db = db
        self.mesh = mesh
        self.registry = registry
        self.journal = journal

    async def _move(
        self, reservation_id: str, to: ReservationStatus, *, reason: str | None = None
    ) -> Reservation:
        r, _ = await self._move_along(reservation_id, [to], reason=reason)
        return r

    async def _move_along(
        self,
        reservation_id: str,
        path: list[ReservationStatus],
        *,
        reason: str | None = None,
        job_event: dict[str, Any] | None = None,
        also: WriteOp | None = None,
        create: _Create | None = None,
    ) -> tuple[Reservation, Any]:
        """Move through ``path`` in one transaction (one event per step), optionally with the
        job event that this step makes true and ``also`` (another write that belongs with
        it). With ``create`` the reservation is first recorded (REQUESTED) in the same
        transaction. Returns the reservation and what ``also`` returned."""

        op = _steps_write(
            reservation_id, path, reason=reason, job_event=job_event, also=also, create=create
        )
        r, extra = await self.db.write(op)
        recorded = [ReservationStatus.REQUESTED, *path] if create is not None else path
        self._journal_steps(recorded, reservation_id, r.node_id, r.job_id, reason)
        return r, extra

    def _journal_steps(
        self,
        steps: Sequence[ReservationStatus],
        reservation_id: str,
        node_id: str | None,
        job_id: str | None,
        reason: str | None,
    ) -> None:
        """The peer log's record of committed steps (after their commit)."""
        for to in steps:
            self.journal.record(
                f"reservation.{to.value.lower()}",
                reservation_id=reservation_id,
                node_id=node_id,
                job_id=job_id,
                reason=reason,
            )

    def _choose_node(self, service_type: str, min_fidelity: float | None) -> str:
        peers = [
            p
            for p in self.registry.usable_snapshot()
            if service_type in p.services and (min_fidelity is None or p.fidelity >= min_fidelity)
        ]
        if not peers:
            raise NoCapacity(
                f"No fresh enrolled node offers '{service_type}'"
                + (f" with fidelity >= {min_fidelity}" if min_fidelity is not None else ""),
                details={"service_type": service_type},
            )
        return rank_nodes(peers, min_fidelity=min_fidelity)[0].peer_id

    async def reserve(
        self,
        *,
        service_type: str,
        node_id: str | None = None,
        min_fidelity: float | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        owner: str | None = None,
        max_active: int | None = None,
    ) -> Reservation:
        """A direct reservation (``POST /reservations``): :meth:`negotiate` for ``owner``."""
        outcome = await self.negotiate(
            service_type=service_type,
            node_id=node_id,
            min_fidelity=min_fidelity,
            ttl_s=ttl_s,
            owner=owner,
            max_active=max_active,
        )
        reservation, _ = await outcome.recorded
        return reservation

    async def negotiate(
        self,
        *,
        service_type: str,
        node_id: str | None = None,
        min_fidelity: float | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        job_id: str | None = None,
        fragment_id: str | None = None,
        started_event: dict[str, Any] | None = None,
        also: WriteOp | None = None,
        owner: str | None = None,
        max_active: int | None = None,
        early: bool = False,
    ) -> Negotiation:
        """Negotiate a reservation, COMMITTED or REJECTED (never raises for refusal); its record
        holds what ``also`` returned (a write committed together with COMMITTED; not run when
        the reservation is rejected).

        With ``early`` a grant is returned as soon as the node has answered, its record (with
        ``started_event`` and ``also``) being written meanwhile: the scheduler sends the work
        during the commit instead of after it, so a node slot is not held for the writer's
        latency. A rejection is returned recorded.

        The node is asked to reserve and commit in one round trip (``"commit": true``); a node
        that predates that answers the reserve alone and gets a separate ``commit``. With
        ``started_event`` (and a ``job_id``) the job's ``attempt_started`` event is written in
        the same transaction as the COMMITTED state (without ``early``: before any work is sent).

        ``owner`` is the principal of a direct reservation (the scheduler's have none); with
        ``max_active`` it may hold at most that many unexpired active ones (``QuotaExceeded``,
        checked in the write that records the request, before the node is asked). The
        scheduler's own are recorded once the node has answered, request and answer in one
        write: nothing waits on the request record, and a crash in between leaves at most an
        unrecorded node-side hold, which its TTL ends."""
        if node_id is None:
            node_id = self._choose_node(service_type, min_fidelity)
        if not math.isfinite(ttl_s) or ttl_s <= 0:
            raise InvalidInput("ttl_s must be a positive number", details={"ttl_s": ttl_s})
        reservation_id = str(uuid.uuid4())
        expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)

        def requested(session: Session) -> tuple[Reservation, list[dict[str, Any]]]:
            if owner is not None and max_active:
                _check_reservation_quota(session, owner, max_active)
            return _requested(
                reservation_id=reservation_id,
                service_type=service_type,
                node_id=node_id,
                job_id=job_id,
                fragment_id=fragment_id,
                min_fidelity=min_fidelity,
                ttl_s=ttl_s,
                expires_at=expires_at,
                owner=owner,
            )

        def requested_alone(session: Session) -> Reservation:
            r, events = requested(session)
            _store(session, r, events, insert_row=True)
            return r

        create: _Create | None = requested
        if owner is not None:
            await self.db.write(requested_alone)
            self.journal.record(
                "reservation.requested", reservation_id=reservation_id, node_id=node_id
            )
            create = None

        async def move(
            path: list[ReservationStatus], reason: str | None = None, **extra: Any
        ) -> tuple[Reservation, Any]:
            nonlocal create
            made, create = create, None
            return await self._move_along(reservation_id, path, reason=reason, create=made, **extra)

        async def refuse(reason: str) -> Negotiation:
            record = await move([ReservationStatus.REJECTED], reason)
            return Negotiation.written(reservation_id, record, granted=False)

        if not self.registry.is_usable(node_id):
            return await refuse("node not usable (stale or not enrolled)")
        try:
            answer = await self._ask_node(
                node_id, reservation_id, service_type, min_fidelity, ttl_s
            )
        except (MeshError, RemoteError) as exc:
            return await refuse(f"unreachable: {exc}")
        if not answer.get("accepted"):
            return await refuse(str(answer.get("reason") or "refused"))
        if not answer.get("committed"):
            await move([ReservationStatus.PREPARED])
            try:
                committed = await self.mesh.invoke(
                    node_id,
                    METHOD_COMMIT,
                    {"reservation_id": reservation_id},
                    timeout=NEGOTIATION_TIMEOUT_S,
                    addrs=self.registry.addrs_of(node_id),
                )
            except (MeshError, RemoteError) as exc:
                return await refuse(f"commit failed: {exc}")
            if not committed.get("committed", False):
                return await refuse(f"commit refused: {committed.get('reason') or 'unknown'}")
            path = [ReservationStatus.COMMITTED]
        else:
            path = [ReservationStatus.PREPARED, ReservationStatus.COMMITTED]
        job_event = _attempt_started(
            started_event,
            job_id=job_id,
            fragment_id=fragment_id,
            node_id=node_id,
            reservation_id=reservation_id,
        )
        if not early:
            record = await move(path, job_event=job_event, also=also)
            return Negotiation.written(reservation_id, record, granted=True)
        recorded = asyncio.ensure_future(move(path, job_event=job_event, also=also))
        recorded.add_done_callback(_retrieve_error)
        return Negotiation(reservation_id=reservation_id, granted=True, recorded=recorded)

    def inline(
        self,
        *,
        service_type: str,
        node_id: str,
        min_fidelity: float | None,
        job_id: str | None,
        fragment_id: str | None,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> InlineReservation:
        """A reservation to send with the work (the scheduler's, for nodes that take one)."""
        return InlineReservation(
            reservation_id=str(uuid.uuid4()),
            service_type=service_type,
            node_id=node_id,
            min_fidelity=min_fidelity,
            ttl_s=ttl_s,
            job_id=job_id,
            fragment_id=fragment_id,
            expires_at=datetime.now(UTC) + timedelta(seconds=ttl_s),
        )

    def record_inline(
        self,
        ask: InlineReservation,
        *,
        refused: str | None,
        started_event: dict[str, Any] | None = None,
    ) -> None:
        """Queue the record of an inline negotiation once the node has answered: REQUESTED,
        then REJECTED (``refused``: the node's reason) or PREPARED and COMMITTED with the
        job's ``attempt_started`` event. Queued behind (``Database.write_behind``), not
        waited for: the writer commits in order, so it is durable before the unit's own
        record (its settlement, queued after it) and before the job's next state change."""
        op, then = self._inline_write(ask, refused=refused, started_event=started_event)
        self.db.write_behind(op, then=then)

    async def record_inline_with(
        self, ask: InlineReservation, *, started_event: dict[str, Any] | None, also: WriteOp
    ) -> Any:
        """Record a granted inline negotiation together with ``also`` (the job's move to
        EXECUTING, which belongs with its first reservation) and wait for the commit.
        Returns what ``also`` returned."""
        op, then = self._inline_write(ask, refused=None, started_event=started_event, also=also)
        _, written = await self.db.write(op)
        then()
        return written

    def _inline_write(
        self,
        ask: InlineReservation,
        *,
        refused: str | None,
        started_event: dict[str, Any] | None,
        also: WriteOp | None = None,
    ) -> tuple[WriteOp, Callable[[], None]]:
        """An inline negotiation's whole record as one write (with ``also``; the write
        returns the reservation and what ``also`` returned), and the peer log's record of
        its steps, for after the commit."""
        path = (
            [ReservationStatus.REJECTED]
            if refused is not None
            else [ReservationStatus.PREPARED, ReservationStatus.COMMITTED]
        )
        op = _steps_write(
            ask.reservation_id,
            path,
            reason=refused,
            job_event=None
            if refused is not None
            else _attempt_started(
                started_event,
                job_id=ask.job_id,
                fragment_id=ask.fragment_id,
                node_id=ask.node_id,
                reservation_id=ask.reservation_id,
            ),
            also=also,
            create=lambda _session: _requested(
                reservation_id=ask.reservation_id,
                service_type=ask.service_type,
                node_id=ask.node_id,
                job_id=ask.job_id,
                fragment_id=ask.fragment_id,
                min_fidelity=ask.min_fidelity,
                ttl_s=ask.ttl_s,
                expires_at=ask.expires_at,
            ),
        )
        then = partial(
            self._journal_steps,
            [ReservationStatus.REQUESTED, *path],
            ask.reservation_id,
            ask.node_id,
            ask.job_id,
            refused,
        )
        return op, then

    async def _ask_node(
        self,
        node_id: str,
        reservation_id: str,
        service_type: str,
        min_fidelity: float | None,
        ttl_s: float,
    ) -> dict[str, Any]:
        return await self.mesh.invoke(
            node_id,
            METHOD_RESERVE,
            {
                "reservation_id": reservation_id,
                "service_type": service_type,
                "min_fidelity": min_fidelity,
                "ttl_s": ttl_s,
                "commit": True,
            },
            timeout=NEGOTIATION_TIMEOUT_S,
            addrs=self.registry.addrs_of(node_id),
        )

    async def get(self, reservation_id: str) -> Reservation:
        async with self.db.transaction() as session:
            r = await session.get(Reservation, reservation_id)
            if r is None:
                raise NotFound(
                    f"Reservation {reservation_id} does not exist",
                    details={"reservation_id": reservation_id},
                )
            return r

    async def mark_executed(self, reservation_id: str, *, reason: str | None = None) -> None:
        """The work this reservation held was sent (its result not accepted: ``reason``)."""
        settlement = self.executed_write(reservation_id, reason=reason)
        await self.db.write(settlement.write)
        settlement.committed()

    def executed_write(
        self,
        reservation_id: str,
        *,
        reason: str | None = None,
        completed_event: dict[str, Any] | None = None,
    ) -> Settlement:
        """The reservation's move to EXECUTED as a write: for the caller to commit with its
        own record of the result (one write instead of two on every unit's way back), to
        queue behind (``Database.write_behind``) or to await (:meth:`mark_executed`). A
        reservation that has ended meanwhile (its TTL swept it) is left as it is: the
        caller's record must not fail for it; the job's ``completed_event`` is written
        either way."""
        moved: list[Reservation] = []

        def op(session: Session) -> None:
            moved.clear()  # a group retried without another write runs this again
            if completed_event is not None:
                repo.append_event(session, **completed_event)
            r = _lock(session, reservation_id)
            if ReservationStatus.EXECUTED not in RESERVATION_TRANSITIONS.get(
                ReservationStatus(r.status), frozenset()
            ):
                log.info("reservation.execute_after_terminal", reservation_id=reservation_id)
                return
            events: list[dict[str, Any]] = []
            _advance(r, ReservationStatus.EXECUTED, reason, events)
            _store(session, r, events, insert_row=False)
            moved.append(r)

        def committed() -> None:
            for r in moved:
                self.journal.record(
                    "reservation.executed",
                    reservation_id=reservation_id,
                    node_id=r.node_id,
                    job_id=r.job_id,
                    reason=reason,
                )

        return Settlement(write=op, committed=committed)

    async def mark_unused(self, reservation_id: str, *, reason: str) -> None:
        """The node turned the work away (busy): the slot was never used."""
        try:
            await self._move(reservation_id, ReservationStatus.CANCELED, reason=reason)
        except Conflict:
            log.info("reservation.cancel_after_terminal", reservation_id=reservation_id)

    async def cancel(
        self, reservation_id: str, *, reason: str = "cancelled by client"
    ) -> Reservation:
        r = await self.get(reservation_id)
        if ReservationStatus(r.status) in TERMINAL_RESERVATION_STATES:
            raise Conflict(
                f"Reservation {reservation_id} is already {r.status}",
                details={"reservation_id": reservation_id, "status": r.status},
            )
        await self._release_on_node(r)
        return await self._move(reservation_id, ReservationStatus.CANCELED, reason=reason)

    async def _release_on_node(self, r: Reservation) -> None:
        if r.node_id is None:
            return
        try:
            await self.mesh.invoke(
                r.node_id,
                METHOD_RELEASE,
                {"reservation_id": r.reservation_id},
                timeout=NEGOTIATION_TIMEOUT_S,
                addrs=self.registry.addrs_of(r.node_id),
            )
        except (MeshError, RemoteError) as exc:
            log.info("reservation.release_failed", reservation_id=r.reservation_id, error=str(exc))

    async def expire_due(self) -> int:
        """Expire PREPARED/COMMITTED reservations past their TTL; returns how many."""
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            rows = await session.execute(
                select(Reservation).where(
                    Reservation.status.in_(
                        [ReservationStatus.PREPARED.value, ReservationStatus.COMMITTED.value]
                    )
                )
            )
            due = [
                r.reservation_id
                for r in rows.scalars()
                if r.expires_at.replace(tzinfo=r.expires_at.tzinfo or UTC) <= now
            ]
        for reservation_id in due:
            try:
                await self._move(reservation_id, ReservationStatus.EXPIRED, reason="ttl elapsed")
            except Conflict:
                continue
        return len(due)

    async def cancel_for_node(self, node_id: str, *, reason: str) -> int:
        """Suspension/revocation takes effect on in-flight reservations too."""
        async with self.db.transaction() as session:
            rows = await session.execute(
                select(Reservation.reservation_id).where(
                    Reservation.node_id == node_id,
                    Reservation.status.in_([s.value for s in _ACTIVE]),
                )
            )
            ids = list(rows.scalars())
        for reservation_id in ids:
            try:
                r = await self._move(reservation_id, ReservationStatus.CANCELED, reason=reason)
            except Conflict:
                continue
            await self._release_on_node(r)
        return len(ids)
