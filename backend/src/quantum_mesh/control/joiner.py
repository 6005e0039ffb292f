"""A node that joins the mesh mid-run: the benchmarks' ``node_join`` scenario.

The coordinator's supervisor keeps a spare embedded node (``node-join``): ``prepare`` enrolls
it (approved, embedded) and starts it warm but off the mesh; ``join`` tells it to dial the
coordinator, after which its first advert makes it usable and the scheduler places work on
it like on any other node; ``retire`` stops it and waits until the registry no longer counts
it usable, so the next run starts without it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from quantum_mesh.control.enrollment import EnrollmentService
from quantum_mesh.control.linkrelay import LinkRelay
from quantum_mesh.control.registry import PeerRegistry
from quantum_mesh.control.states import EnrollmentStatus
from quantum_mesh.node.supervisor import NodeSupervisor

#: Bounds of the spare's start (imports, warm workers) and of its leaving the registry.
SPARE_READY_S = 120.0
RETIRE_WAIT_S = 15.0
POLL_S = 0.05


class EmbeddedJoiner:
    def __init__(
        self, *, supervisor: NodeSupervisor, enrollment: EnrollmentService, registry: PeerRegistry
    ) -> None:
        self._supervisor = supervisor
        self._enrollment = enrollment
        self._registry = registry

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

    async def prepare_linked(self, **impairments: Any) -> tuple[str, LinkRelay]:
        """The spare on the mesh through a relay that impairs its link (``LinkRelay``'s
        settings: the ``latency``, ``bandwidth`` and ``loss`` scenarios): started, joined at
        once through the relay, and usable; returns its peer ID and the relay (the caller
        stops it after ``retire``)."""
        await self._enrol()
        host, port, coordinator = _split(self._supervisor.bootstrap_addr)
        relay = LinkRelay(host, port, **impairments)
        relay_port = await relay.start()
        try:
            await self._supervisor.start_spare(
                within_s=SPARE_READY_S,
                bootstrap=f"/ip4/127.0.0.1/tcp/{relay_port}/p2p/{coordinator}",
            )
            self.join()
            for _ in range(int(SPARE_READY_S / POLL_S)):
                if self.usable():
                    break
                await asyncio.sleep(POLL_S)
        except BaseException:
            await relay.stop()
            raise
        return self.peer_id, relay

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
