"""A second, hand-driven libp2p peer for tests, run with ``asyncio.to_thread(trio.run, ...)``.

It speaks to a MeshBridge the way a (possibly misbehaving) node would: publishing raw advert
bytes and writing raw invoke frames, which the production node never does.
"""

from __future__ import annotations

import struct
from typing import Any

import trio
from libp2p import generate_new_ed25519_identity, new_host
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from quantum_mesh.mesh import codec
from quantum_mesh.mesh.host import run_mesh_host, split_p2p_addr
from quantum_mesh.mesh.identity import peer_id_of
from quantum_mesh.mesh.invoke import DIAL_ERRORS
from quantum_mesh.mesh.protocol import ADVERT_TOPIC, INVOKE_PROTOCOL

#: Bound on every wait in these helpers.
STEP_TIMEOUT_S = 10.0
#: Spacing between raw publishes, well under GossipSub's 10 msg/s per-peer limit.
PUBLISH_SPACING_S = 0.15


def new_key_pair() -> KeyPair:
    return generate_new_ed25519_identity()


async def publish_raw(bootstrap: str, payloads: list[bytes] | Any, *, key_pair: KeyPair) -> None:
    """Connect to ``bootstrap`` and publish each payload (bytes, or a callable making bytes)
    on the advert topic once the coordinator's subscription is known."""
    peer, addr = split_p2p_addr(bootstrap)
    async with run_mesh_host(key_pair=key_pair, listen_host="127.0.0.1", listen_port=0) as mesh:
        with trio.fail_after(STEP_TIMEOUT_S):
            await mesh.host.connect(PeerInfo(peer, [addr]))
            # GossipSub only forwards to peers whose subscription it has heard.
            while True:
                if peer in mesh.pubsub.peer_topics.get(ADVERT_TOPIC, set()):
                    break
                await trio.sleep(0.02)
        for payload in payloads:
            data = payload() if callable(payload) else payload
            await mesh.pubsub.publish(ADVERT_TOPIC, data)
            await trio.sleep(PUBLISH_SPACING_S)


async def raw_invoke(bootstrap: str, frame_bytes: bytes) -> dict[str, Any]:
    """Open an invoke stream, write ``frame_bytes`` verbatim and return the decoded reply."""
    peer, addr = split_p2p_addr(bootstrap)
    async with run_mesh_host(
        key_pair=new_key_pair(), listen_host="127.0.0.1", listen_port=0
    ) as mesh:
        with trio.fail_after(STEP_TIMEOUT_S):
            await mesh.host.connect(PeerInfo(peer, [addr]))
            stream = await mesh.host.new_stream(peer, [TProtocol(INVOKE_PROTOCOL)])
            await stream.write(frame_bytes)
            reply = await codec.read_frame(stream)
            await stream.close()
            return reply


def length_prefix(n: int) -> bytes:
    return struct.pack(">I", n)


async def dial_offering(bootstrap: str, security: str) -> bool:
    """True if a host offering only ``security`` ("plaintext" or "noise") gets connected."""
    key_pair = new_key_pair()
    transport: Any
    if security == "plaintext":
        transport = {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)}
    else:
        noise_key = create_x25519_key_pair().private_key
        transport = {
            TProtocol(NOISE_PROTOCOL_ID): NoiseTransport(key_pair, noise_privkey=noise_key)
        }
    host = new_host(key_pair=key_pair, sec_opt=transport)
    peer, addr = split_p2p_addr(bootstrap)
    async with host.run(listen_addrs=[]):
        try:
            with trio.fail_after(STEP_TIMEOUT_S):
                await host.connect(PeerInfo(peer, [addr]))
        except DIAL_ERRORS:
            return False
        return peer in host.get_network().connections


def peer_id_for(key_pair: KeyPair) -> str:
    return peer_id_of(key_pair)
