"""Node-to-node links: which other nodes this node can reach, and how fast.

Nodes hear each other's adverts on ``ADVERT_TOPIC`` and, every ``PROBE_INTERVAL_S``, time a
few round trips to each on libp2p's standard ping protocol (``/ipfs/ping/1.0.0``: 32 bytes
echoed back; every libp2p host serves it). The results ride on the node's own advert
(``links``: peer ID → round trip in ms), so the coordinator can draw the mesh as the nodes
see it (``GET /discovery/network/topology``) without probing links it is not on.

libp2p's own ``PingService`` reports whole milliseconds, which is 0 on a LAN; the round trip
here is timed with ``perf_counter`` instead.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass

import trio
from libp2p.abc import IHost
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import PING_LENGTH
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from quantum_mesh.mesh.codec import read_exactly
from quantum_mesh.mesh.host import dial

logger = logging.getLogger(__name__)

#: Seconds between two rounds of probes.
PROBE_INTERVAL_S = 5.0
#: Round trips timed per probe (the median is kept).
PINGS_PER_PROBE = 3
#: Longest a probe (dial included) may take before the link counts as down.
PROBE_LIMIT_S = 2.0
#: A peer not heard in adverts for this long is forgotten.
FORGET_AFTER_S = 30.0
#: Most links one advert carries (adverts are bounded in size).
MAX_LINKS = 16


@dataclass
class _Peer:
    addrs: list[Multiaddr]
    heard: float
    rtt_ms: float | None = None


class LinkProber:
    """The nodes this node has heard of, and the round trip it last measured to each."""

    def __init__(self, own_peer_id: str) -> None:
        self._own = own_peer_id
        self._peers: dict[str, _Peer] = {}

    def heard(self, peer_id: str, listen_addrs: list[str], *, now: float | None = None) -> None:
        """A node's advert: remember where it listens (its own advert is ignored)."""
        if peer_id == self._own:
            return
        addrs = [Multiaddr(a) for a in listen_addrs]
        moment = time.monotonic() if now is None else now
        known = self._peers.get(peer_id)
        if known is None:
            self._peers[peer_id] = _Peer(addrs=addrs, heard=moment)
        else:
            known.addrs, known.heard = addrs, moment

    def links(self, *, now: float | None = None) -> dict[str, float]:
        """Peer ID → last measured round trip (ms) of the nodes heard recently, at most
        ``MAX_LINKS`` of them (the fastest)."""
        moment = time.monotonic() if now is None else now
        measured = {
            peer: round(p.rtt_ms, 3)
            for peer, p in self._peers.items()
            if p.rtt_ms is not None and moment - p.heard <= FORGET_AFTER_S
        }
        return dict(sorted(measured.items(), key=lambda item: item[1])[:MAX_LINKS])

    async def run(self, host: IHost) -> None:
        """Probe every known node, every ``PROBE_INTERVAL_S``, forever."""
        while True:
            now = time.monotonic()
            for peer_id in [p for p, v in self._peers.items() if now - v.heard > FORGET_AFTER_S]:
                del self._peers[peer_id]
            for peer_id, peer in list(self._peers.items()):
                peer.rtt_ms = await probe(host, ID.from_base58(peer_id), peer.addrs)
            await trio.sleep(PROBE_INTERVAL_S)


async def probe(host: IHost, peer: ID, addrs: list[Multiaddr]) -> float | None:
    """Median round trip (ms) of ``PINGS_PER_PROBE`` pings to ``peer``; None when it could
    not be reached within ``PROBE_LIMIT_S``."""
    try:
        with trio.fail_after(PROBE_LIMIT_S):
            await dial(host, peer, addrs, limit_s=PROBE_LIMIT_S)
            stream = await host.new_stream(peer, [PING_PROTOCOL])
            try:
                samples = []
                for _ in range(PINGS_PER_PROBE):
                    payload = os.urandom(PING_LENGTH)
                    started = time.perf_counter()
                    await stream.write(payload)
                    echoed = await read_exactly(stream, PING_LENGTH)
                    samples.append((time.perf_counter() - started) * 1000)
                    if echoed != payload:
                        return None
                return statistics.median(samples)
            finally:
                await stream.close()
    except Exception as error:  # a down link is a fact to report, not a failure of the node
        logger.debug("link probe to %s failed: %r", peer, error)
        return None
