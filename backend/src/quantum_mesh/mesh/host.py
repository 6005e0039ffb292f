"""Build and run a libp2p host configured for a private qmesh mesh (Trio only).

Every non-default setting here fixes a measured problem of py-libp2p 0.8.1 (see
shared/notes/libp2p-0.8.1.md): the default security list accepts plaintext, three
connections per peer add a 250 ms dial timer, a failed dial blocks the peer for 60 s, pubsub
seqnos restart from the wall-clock second, the auto-connector dials the whole peerstore,
and yamux answers every read with its own window-update frame.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from google.protobuf.message import DecodeError
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import ParseError
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig
from libp2p.network.exceptions import SwarmException
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from quantum_mesh.mesh.protocol import DIAL_TIMEOUT_S

#: How long dialled addresses stay in the peerstore; adverts refresh them every second.
PEERSTORE_ADDR_TTL_S = 300
#: GossipSub heartbeat: the mesh forms on heartbeats, so keep it short on a small mesh.
GOSSIP_HEARTBEAT_S = 1
GOSSIP_DEGREE, GOSSIP_DEGREE_LOW, GOSSIP_DEGREE_HIGH = 6, 4, 12
#: Connection budget of one host; pruning starts above the high watermark.
MAX_CONNECTIONS = 512

# py-libp2p's yamux credits the sender after nearly *every* read by default (release-on-read,
# and autotune growing the window): one extra encrypted frame per call on a long-lived
# channel, ~12 % of a node's CPU at 1,000 calls/s. With these documented knobs off, credit
# goes back in batches once half the window is consumed, as go-yamux does; channels get their
# large window from one up-front grant instead (``mesh/channel.py``). Read by yamux at call
# time; an operator's own setting wins.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
os.environ.setdefault("PY_YAMUX_ASSUME_RTT_MS", "0")


def configure_libp2p_logging(level: int = logging.WARNING) -> None:
    """libp2p sets ``propagate=False`` on its logger, which hides its warnings from ours.

    A level the application already chose (``quantum_mesh.logs``) is kept.
    """
    p2p = logging.getLogger("libp2p")
    p2p.propagate = True
    if p2p.level == logging.NOTSET:
        p2p.setLevel(level)


class _DisabledAutoConnector(AutoConnector):
    """An auto-connector that never starts: a private mesh dials only whom it means to."""

    async def start(self) -> None:
        self._started = False

    async def maybe_connect(self) -> None:
        return None


def connection_config() -> ConnectionConfig:
    return ConnectionConfig(
        max_connections_per_peer=1,  # one connection: no 250 ms multi-dial fallback timer
        min_connections=0,
        low_watermark=0,
        high_watermark=MAX_CONNECTIONS,
        max_connections=MAX_CONNECTIONS,
        dial_timeout=DIAL_TIMEOUT_S,
    )


def build_host(key_pair: KeyPair) -> IHost:
    """A Noise-only, yamux-only TCP host: a plaintext or secio dialer is refused."""
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        connection_config=connection_config(),
    )
    swarm = host.get_network()
    if not isinstance(swarm, Swarm):
        raise TypeError(f"expected a libp2p Swarm, got {type(swarm).__name__}")
    swarm.auto_connector = _DisabledAutoConnector(swarm)
    return host


class TolerantPubsub(Pubsub):
    """Pubsub whose stream reader treats an RPC that does not parse like any other bad
    input from that peer: py-libp2p's handler closes the stream on ``ParseError`` but lets
    protobuf's ``DecodeError`` escape and take the whole host down (seen on a node that
    rejoins the mesh under the same peer ID, the benchmarks' node_join spare)."""

    async def continuously_read_stream(self, stream: INetStream) -> None:
        try:
            await super().continuously_read_stream(stream)
        except DecodeError as error:
            raise ParseError(f"malformed pubsub RPC: {error}") from error


def build_pubsub(host: IHost) -> tuple[Pubsub, GossipSub]:
    gossipsub = GossipSub(
        protocols=[PROTOCOL_ID_V11],
        degree=GOSSIP_DEGREE,
        degree_low=GOSSIP_DEGREE_LOW,
        degree_high=GOSSIP_DEGREE_HIGH,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=GOSSIP_HEARTBEAT_S,
    )
    # strict_signing: every message is signed and checked, so from_id is authenticated.
    pubsub = TolerantPubsub(host, gossipsub, strict_signing=True)
    # Seqnos start at int(time.time()) by default: a node restarted within seconds reuses
    # seqnos and its first adverts are dropped as duplicates. Nanoseconds never repeat.
    pubsub.counter = time.time_ns()
    return pubsub, gossipsub


@dataclass(frozen=True, slots=True)
class MeshHost:
    """A running host plus its pubsub, as yielded by ``run_mesh_host``."""

    host: IHost
    pubsub: Pubsub
    gossipsub: GossipSub

    @property
    def peer_id(self) -> str:
        return self.host.get_id().to_base58()

    def listen_addrs(self) -> list[str]:
        """Full dialable addresses, ``/ip4/H/tcp/P/p2p/<peer id>``."""
        return [f"{addr}/p2p/{self.peer_id}" for addr in self.host.get_transport_addrs()]


@asynccontextmanager
async def run_mesh_host(
    *, key_pair: KeyPair, listen_host: str, listen_port: int
) -> AsyncIterator[MeshHost]:
    """Listen on ``listen_host:listen_port`` (0 picks a free port) with pubsub running."""
    configure_libp2p_logging()
    host = build_host(key_pair)
    pubsub, gossipsub = build_pubsub(host)
    listen = Multiaddr(f"/ip4/{listen_host}/tcp/{listen_port}")
    async with (
        host.run(listen_addrs=[listen]),
        background_trio_service(pubsub),
        background_trio_service(gossipsub),
    ):
        await pubsub.wait_until_ready()
        yield MeshHost(host=host, pubsub=pubsub, gossipsub=gossipsub)


def split_p2p_addr(addr: str) -> tuple[ID, Multiaddr]:
    """``/ip4/.../tcp/.../p2p/<id>`` -> (peer ID, transport address without /p2p)."""
    maddr = Multiaddr(addr)
    peer = maddr.value_for_protocol("p2p")
    if not peer:
        raise ValueError(f"address {addr!r} has no /p2p/<peer-id> part")
    return ID.from_base58(str(peer)), maddr.decapsulate(Multiaddr(f"/p2p/{peer}"))


def is_connected(host: IHost, peer: ID) -> bool:
    return any(not conn.is_closed for conn in host.get_network().get_connections(peer))


class ConnectionNotifee(INotifee):
    """A libp2p notifee that ignores every event; subclasses override the ones they need."""

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None


class ConnectionLost(ConnectionNotifee):
    """Sets ``lost`` (a ``trio.Event`` the owner replaces once it has looked) when a
    connection to ``peer`` closes, so that a node re-dials its coordinator at once instead of
    at its next periodic look: behind a relay or a NAT that connection is the only way the
    coordinator can reach it, and each second without it is work refused."""

    def __init__(self, peer: ID) -> None:
        self.peer = peer
        self.lost = trio.Event()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        if conn.muxed_conn.peer_id == self.peer:
            self.lost.set()


async def dial(host: IHost, peer: ID, addrs: list[Multiaddr], *, limit_s: float) -> None:
    """Connect to ``peer`` unless already connected.

    A failed dial puts the peer in a 60 s negative cache; a restarted node must be reachable
    at once, so the cache entry is dropped first.

    Raises:
        trio.TooSlowError: no connection within ``limit_s``.
        libp2p.network.exceptions.SwarmException: every address failed.
    """
    if is_connected(host, peer):
        return
    network = host.get_network()
    if network.get_connections(peer):
        # Only closed ones: a connection ended by a reset can stay listed, and
        # ``host.connect`` would take it for a live one and return without dialling (a
        # bootstrap loop then spins). Dropped, so that it dials.
        await network.close_peer(peer)
    network.unblock_peer(peer)  # type: ignore[attr-defined]
    with trio.fail_after(limit_s):
        await host.connect(PeerInfo(peer, addrs))
    if not is_connected(host, peer):
        raise SwarmException(f"dialling {peer} left no open connection")
