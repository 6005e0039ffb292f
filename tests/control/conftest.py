"""A stand-in mesh for fast control-plane tests: no subprocesses, no libp2p.

``FakeMesh`` implements :class:`quantum_mesh.control.ports.MeshPort` over in-memory
``FakeNode`` objects that keep the real node's book: capacity is ``workers * SLOTS_PER_WORKER``
and counts live reservations plus in-flight work; a work request carrying a
``reservation_id`` consumes that reservation and then counts as in flight. Every call is
recorded, and each node remembers the most work it ever had in flight at once.

``control`` builds the real pieces around it: a migrated SQLite file, ``PeerRegistry``
(``require_enrollment=False``), ``ReservationService``, ``WorkScheduler`` (started, and stopped
at teardown) and, on request, a ``JobManager``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from quantum_mesh.config import Settings
from quantum_mesh.control.bus import JobEventBus
from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import JobManager
from quantum_mesh.control.registry import PeerRegistry
from quantum_mesh.control.reservations import ReservationService
from quantum_mesh.control.scheduler import WorkScheduler, WorkUnit
from quantum_mesh.mesh.errors import PeerNotReached, RemoteError
from quantum_mesh.mesh.protocol import (
    ENVELOPE_RESERVE,
    ERR_RESERVATION_REFUSED,
    FEATURE_INLINE_RESERVE,
    METHOD_COMMIT,
    METHOD_PING,
    METHOD_RELEASE,
    METHOD_RESERVE,
    REASON_SATURATED,
    REASON_SERVICE_NOT_OFFERED,
    REASON_UNKNOWN_RESERVATION,
)
from quantum_mesh.node.reservations import SLOTS_PER_WORKER
from quantum_mesh.store.database import Database, run_migrations

SERVICE = "qaoa_block"
WORK_METHODS = frozenset({"execute_fragment", "qaoa_block", "echo", "hold"})

#: A scripted outcome of one work call: an exception to raise, or None to succeed.
Script = BaseException | None


@dataclass
class Call:
    peer_id: str
    method: str
    params: dict[str, Any]
    #: ``time.monotonic()`` and wall-clock time of the call.
    at: float
    wall: datetime


@dataclass
class FakeNode:
    peer_id: str
    workers: int = 1
    services: tuple[str, ...] = (SERVICE,)
    fidelity: float = 0.99
    #: How long each work call takes.
    latency_s: float = 0.01
    #: Refuse this many ``reserve`` calls with ``saturated`` before behaving normally.
    refuse_first: int = 0
    #: Scripted outcomes of the next work calls, in order (then: success).
    script: list[Script] = field(default_factory=list)
    #: Raised by every work call (after the script runs out).
    always: BaseException | None = None
    #: Answer ``reserve`` without committing, so the coordinator must send ``commit``.
    legacy_commit: bool = False
    #: Advertise ``inline_reserve``: take a reservation with the work (``ENVELOPE_RESERVE``).
    inline: bool = False
    #: A dead node: every call fails as an undialable peer's does (``PeerNotReached``).
    dead: bool = False
    #: The next this many calls find no connection (a link that dropped and comes back).
    unreachable_next: int = 0
    #: Report ``seconds`` of compute (``latency_s``) in every work reply, as real nodes do.
    reports_seconds: bool = False
    #: Work calls of ``hold`` wait for this event.
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    #: Computes a work call's reply from its params instead of echoing ``value`` (the real
    #: ``execute_fragment``, say).
    handler: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # --- observed --------------------------------------------------------------------------
    reserved: dict[str, bool] = field(default_factory=dict)  # reservation_id -> committed
    in_flight: int = 0
    max_in_flight: int = 0
    max_occupancy: int = 0
    scripted_refusals: int = 0
    saturated_refusals: int = 0
    unreserved_work: int = 0
    executed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def capacity(self) -> int:
        return self.workers * SLOTS_PER_WORKER

    @property
    def occupancy(self) -> int:
        return len(self.reserved) + self.in_flight

    def advert(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "name": self.peer_id,
            "services": list(self.services),
            "qubit_min": 1,
            "qubit_max": 32,
            "fidelity": self.fidelity,
            "load": min(1.0, self.in_flight / self.workers),
            "availability": "AVAILABLE",
            "workers": self.workers,
            "listen_addrs": [f"/ip4/127.0.0.1/tcp/4001/p2p/{self.peer_id}"],
            "features": [FEATURE_INLINE_RESERVE] if self.inline else [],
        }


class FakeMesh:
    """In-memory ``MeshPort``."""

    def __init__(self) -> None:
        self.nodes: dict[str, FakeNode] = {}
        self.calls: list[Call] = []

    def add(self, peer_id: str, **kwargs: Any) -> FakeNode:
        node = FakeNode(peer_id, **kwargs)
        self.nodes[peer_id] = node
        return node

    def calls_of(self, method: str, peer_id: str | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == method and (peer_id is None or c.peer_id == peer_id)
        ]

    def work_calls(self, peer_id: str | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method in WORK_METHODS and (peer_id is None or c.peer_id == peer_id)
        ]

    @property
    def saturated_refusals(self) -> int:
        return sum(n.saturated_refusals for n in self.nodes.values())

    async def ping(self, peer_id: str, *, timeout: float = 5.0) -> float:
        await self.invoke(peer_id, METHOD_PING, {}, timeout=timeout)
        return 0.0

    async def invoke(
        self,
        peer_id: str,
        method: str,
        params: dict[str, Any],
        *,
        timeout: float,
        addrs: list[str] | None = None,
    ) -> dict[str, Any]:
        self.calls.append(Call(peer_id, method, dict(params), time.monotonic(), datetime.now(UTC)))
        node = self.nodes.get(peer_id)
        if node is None or node.dead:
            raise PeerNotReached(f"cannot dial {peer_id}")
        if node.unreachable_next > 0:
            node.unreachable_next -= 1
            raise PeerNotReached(f"cannot dial {peer_id}")
        await asyncio.sleep(0)  # a network hop: let other tasks run
        if method == METHOD_PING:
            return {"pong": True}
        if method == METHOD_RESERVE:
            return self._reserve(node, params)
        if method == METHOD_COMMIT:
            rid = params["reservation_id"]
            if rid not in node.reserved:
                return {"committed": False, "reason": REASON_UNKNOWN_RESERVATION}
            node.reserved[rid] = True
            return {"committed": True, "reason": None}
        if method == METHOD_RELEASE:
            return {"released": node.reserved.pop(params["reservation_id"], None) is not None}
        if method in WORK_METHODS:
            return await self._work(node, method, params)
        raise RemoteError("unknown_method", f"unknown method {method!r}")

    @staticmethod
    def _reserve(node: FakeNode, params: dict[str, Any]) -> dict[str, Any]:
        rid = params["reservation_id"]
        if params["service_type"] not in node.services:
            return {"accepted": False, "reason": REASON_SERVICE_NOT_OFFERED}
        if node.refuse_first > 0:
            node.refuse_first -= 1
            node.scripted_refusals += 1
            return {"accepted": False, "reason": REASON_SATURATED}
        if node.occupancy >= node.capacity:
            node.saturated_refusals += 1
            return {"accepted": False, "reason": REASON_SATURATED}
        commit = params.get("commit") is True and not node.legacy_commit
        node.reserved[rid] = commit
        node.max_occupancy = max(node.max_occupancy, node.occupancy)
        return {"accepted": True, "committed": commit, "reason": None}

    @classmethod
    async def _work(cls, node: FakeNode, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rid = params.get("reservation_id")
        inline = params.get(ENVELOPE_RESERVE)
        if inline is not None:  # as the real node: reserve and commit, or refuse unrun
            assert node.inline, "an inline reservation sent to a node that never offered it"
            answer = cls._reserve(node, {**inline, "reservation_id": rid, "commit": True})
            if not answer["accepted"]:
                raise RemoteError(ERR_RESERVATION_REFUSED, str(answer["reason"]))
        if node.reserved.pop(rid, None) is None:  # the real node consumes it on arrival
            node.unreserved_work += 1
        node.in_flight += 1
        node.max_in_flight = max(node.max_in_flight, node.in_flight)
        node.max_occupancy = max(node.max_occupancy, node.occupancy)
        try:
            outcome = node.script.pop(0) if node.script else node.always
            if method == "hold":
                await node.gate.wait()
            else:
                await asyncio.sleep(node.latency_s)
            if outcome is not None:
                raise outcome
            node.executed.append(dict(params))
            if node.handler is not None:
                return node.handler(params)
            if isinstance(params.get("jobs"), list):  # a group, as qaoa_block takes one
                share = node.latency_s / len(params["jobs"])
                results = [{"value": j.get("value"), "seconds": share} for j in params["jobs"]]
                return {"node": node.peer_id, "method": method, "results": results}
            reply = {"node": node.peer_id, "method": method, "value": params.get("value")}
            if node.reports_seconds:
                reply["seconds"] = node.latency_s
            return reply
        finally:
            node.in_flight -= 1


def unit(
    job_id: str,
    unit_id: str,
    *,
    method: str = "qaoa_block",
    service_type: str = SERVICE,
    **kwargs: Any,
) -> WorkUnit:
    return WorkUnit(
        job_id=job_id,
        unit_id=unit_id,
        method=method,
        service_type=service_type,
        params={"value": unit_id},
        **kwargs,
    )


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "max_unit_attempts": 3,
        "unit_deadline_s": 5.0,
        "capacity_wait_s": 0.3,
        "invoke_timeout_s": 2.0,
        "max_queued_jobs": 100,
        "compute_threads": 1,
        "driver_threads": 2,
    }
    base.update(overrides)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


async def wait_for(
    predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@dataclass
class Control:
    db: Database
    mesh: FakeMesh
    registry: PeerRegistry
    reservations: ReservationService
    scheduler: WorkScheduler
    settings: Settings
    managers: list[tuple[JobManager, ComputePools]] = field(default_factory=list)

    def announce(self, *peer_ids: str) -> None:
        """Each node's advert arrives (the node becomes fresh)."""
        for peer_id in peer_ids or tuple(self.mesh.nodes):
            self.registry.observe_advert(self.mesh.nodes[peer_id].advert())
            self.scheduler.node_heard(peer_id)

    def add_node(self, peer_id: str, *, announce: bool = True, **kwargs: Any) -> FakeNode:
        node = self.mesh.add(peer_id, **kwargs)
        if announce:
            self.announce(peer_id)
        return node

    def job_manager(self) -> JobManager:
        compute = ComputePools(self.settings)
        manager = JobManager(
            db=self.db,
            bus=JobEventBus(),
            scheduler=self.scheduler,
            compute=compute,
            settings=self.settings,
        )
        self.managers.append((manager, compute))
        return manager


MakeControl = Callable[..., Awaitable[Control]]


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy (migrating takes ~0.2 s)."""
    path = tmp_path_factory.mktemp("control-db") / "template.db"
    run_migrations(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
async def db(tmp_path: Path, migrated_template: Path) -> AsyncIterator[Database]:
    path = tmp_path / "t.db"
    await asyncio.to_thread(shutil.copyfile, migrated_template, path)
    database = Database(f"sqlite+aiosqlite:///{path}")
    yield database
    await database.dispose()


@pytest.fixture
async def control(db: Database) -> AsyncIterator[MakeControl]:
    """``await control(stale_after_s=..., **settings)`` builds the control plane once."""
    built: list[Control] = []

    async def make(*, stale_after_s: float = 30.0, **overrides: Any) -> Control:
        settings = make_settings(**overrides)
        mesh = FakeMesh()
        registry = PeerRegistry(stale_after_s=stale_after_s, require_enrollment=False)
        reservations = ReservationService(db=db, mesh=mesh, registry=registry)
        scheduler = WorkScheduler(
            db=db, mesh=mesh, registry=registry, reservations=reservations, settings=settings
        )
        scheduler.start()
        c = Control(db, mesh, registry, reservations, scheduler, settings)
        built.append(c)
        return c

    yield make
    for c in built:
        for node in c.mesh.nodes.values():
            node.gate.set()
        for manager, compute in c.managers:
            await manager.shutdown()
            compute.shutdown()
        await c.scheduler.stop()


def event_counts(events: list[Any], event_type: str) -> Counter[str | None]:
    return Counter(e.fragment_id for e in events if e.event_type == event_type)
