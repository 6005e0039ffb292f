"""A node that joins the mesh mid-run: the benchmarks' ``node_join`` scenario.

The coordinator's supervisor keeps a spare embedded node (``node-join``): ``prepare`` enrolls
it (approved, embedded) and starts it warm but off the mesh; ``join`` tells it to dial the
coordinator, after which its first advert makes it usable and the scheduler places work on
it like on any other node; ``retire`` stops it and waits until the registry no longer counts
it usable, so the next run starts without it. The link scenarios start it behind a relay,
in a network namespace of its own where the machine allows (``prepare_linked``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from quantum_mesh.control import netns
from quantum_mesh.control.enrollment import EnrollmentService
from quantum_mesh.control.linkrelay import LinkRelay
from quantum_mesh.control.netns import Link, LinkNamespaces, NetnsError
from quantum_mesh.control.registry import PeerRegistry
from quantum_mesh.control.states import EnrollmentStatus
from quantum_mesh.mesh.hostlocal import SHARED_MEMORY_ENV
from quantum_mesh.node.supervisor import NodeSupervisor

#: Bounds of the spare's start (imports, warm workers) and of its leaving the registry.
SPARE_READY_S = 120.0
RETIRE_WAIT_S = 15.0
POLL_S = 0.05


@dataclass
class LinkedSpare:
    """The spare of one link-scenario run: its relay and, where made, its namespace."""

    peer_id: str
    relay: LinkRelay
    link: Link | None = None


class EmbeddedJoiner:
    def __init__(
        self, *, supervisor: NodeSupervisor, enrollment: EnrollmentService, registry: PeerRegistry
    ) -> None:
        self._supervisor = supervisor
        self._enrollment = enrollment
        self._registry = registry
        self._namespaces = LinkNamespaces()

    @property
    def peer_id(self) -> str:
        return self._supervisor.spare_peer_id

    async def _enrol(self) -> None:
        """Enroll the spare (approved) and make sure no earlier copy of it still runs."""
        await self._enrollment.create(
            peer_id=self.peer_id,
            name="embedded-join",
            status=EnrollmentStatus.APPROVED,
            embedded=True,
        )
        await self.retire()

    async def prepare(self) -> str:
        """Enroll the spare and start it, warm, off the mesh; returns its peer ID."""
        await self._enrol()
        return await self._supervisor.start_spare(within_s=SPARE_READY_S)

    def join(self) -> bool:
        return self._supervisor.join_spare()

    def running(self) -> bool:
        return self._supervisor.spare_running()

    async def restart(self) -> bool:
        """Start the spare again and let it join at once (it crashed mid-run)."""
        await self._supervisor.start_spare(within_s=SPARE_READY_S)
        return self.join()

    def usable(self) -> bool:
        return self._registry.is_usable(self.peer_id)

    async def open_namespace(self, *, rate_bps: float | None = None) -> tuple[Link | None, str]:
        """A network namespace for the next linked spare (``control/netns.py``), tbf-shaped
        at ``rate_bps`` bytes a second both ways when given; ``(None, why)`` where this
        machine cannot make one (not root, no ``ip``/``tc``, or a step failed)."""
        reason = netns.unavailable_reason()
        if reason is not None:
            return None, reason
        try:
            return await asyncio.to_thread(self._namespaces.create, rate_bps=rate_bps), ""
        except NetnsError as error:
            return None, str(error)

    async def prepare_linked(self, link: Link | None = None, **impairments: Any) -> LinkedSpare:
        """The spare on the mesh through a relay that impairs its link (``LinkRelay``'s
        settings: the ``latency``, ``bandwidth`` and ``loss`` scenarios): started, joined at
        once through the relay, and usable. With ``link`` (``open_namespace``) the spare runs
        inside that namespace, listening on its own loopback only, without shared memory,
        and the relay listens on the veth's root side: the connection it dials is its only
        path to the coordinator. Without, both are on 127.0.0.1. ``release`` undoes it all."""
        host, port, coordinator = _split(self._supervisor.bootstrap_addr)
        relay = LinkRelay(host, port, **impairments)
        linked = LinkedSpare(peer_id=self.peer_id, relay=relay, link=link)
        try:
            await self._enrol()
            listen = link.host_addr if link is not None else "127.0.0.1"
            relay_port = await relay.start(listen)
            await self._supervisor.start_spare(
                within_s=SPARE_READY_S,
                bootstrap=f"/ip4/{listen}/tcp/{relay_port}/p2p/{coordinator}",
                prefix=link.exec_prefix() if link is not None else None,
                env={SHARED_MEMORY_ENV: "false"} if link is not None else None,
            )
            self.join()
            for _ in range(int(SPARE_READY_S / POLL_S)):
                if self.usable():
                    break
                await asyncio.sleep(POLL_S)
        except BaseException:
            await self.release(linked)
            raise
        return linked

    async def release(self, linked: LinkedSpare) -> None:
        """Stop a linked spare, its relay and its namespace (idempotent)."""
        try:
            await self.retire()
        finally:
            await linked.relay.stop()
            if linked.link is not None:
                await asyncio.to_thread(self._namespaces.remove, linked.link)

    async def close(self) -> None:
        """On the coordinator's shutdown: no namespace of ours outlives it."""
        await asyncio.to_thread(self._namespaces.remove_all)

    async def retire(self) -> None:
        await self._supervisor.stop_spare()
        for _ in range(int(RETIRE_WAIT_S / POLL_S)):  # bounded: it disconnects on exit
            if not self.usable():
                return
            await asyncio.sleep(POLL_S)


def _split(multiaddr: str) -> tuple[str, int, str]:
    """``/ip4/H/tcp/P/p2p/ID`` -> ``(H, P, ID)``."""
    parts = multiaddr.strip("/").split("/")
    return parts[1], int(parts[3]), parts[5]
