"""A second, hand-driven libp2p peer for tests, run with ``asyncio.to_thread(trio.run, ...)``.

It speaks to a MeshBridge the way a (possibly misbehaving) node would: publishing raw advert
bytes and writing raw invoke frames, which the production node never does.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
from libp2p import generate_new_ed25519_identity, new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from quantum_mesh.mesh import codec
from quantum_mesh.mesh.errors import FrameTooLarge, ProtocolError
from quantum_mesh.mesh.host import build_host, run_mesh_host, split_p2p_addr
from quantum_mesh.mesh.identity import peer_id_of
from quantum_mesh.mesh.invoke import DIAL_ERRORS, TRANSPORT_ERRORS
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


# --- an attacker's toolbox: raw streams to any peer, with any identity ---------------------

#: What ``oversized_frame`` returns when the target reset the stream instead of answering.
RESET = {"reset": True}
#: ... and when it served the frame with a reply over 1 MiB.
SERVED_HUGE = {"served": "a reply over 1 MiB"}


@asynccontextmanager
async def connected(target: str, key_pair: KeyPair | None = None) -> AsyncIterator[Any]:
    """A fresh host (random identity unless given) connected to ``target``: (host, peer ID).

    A plain host without pubsub: raw invoke streams need none, and a pubsub service torn
    down while the target still sends it subscriptions fails the test run on exit."""
    peer, addr = split_p2p_addr(target)
    host = build_host(key_pair or new_key_pair())
    async with host.run(listen_addrs=[]):
        with trio.fail_after(STEP_TIMEOUT_S):
            await host.connect(PeerInfo(peer, [addr]))
        yield host, peer


async def raw_calls(
    target: str, frames: list[bytes], *, key_pair: KeyPair | None = None
) -> list[dict[str, Any]]:
    """One connection to ``target``; each frame written verbatim on its own stream."""
    async with connected(target, key_pair) as (host, peer):
        replies = []
        for data in frames:
            with trio.fail_after(STEP_TIMEOUT_S):
                replies.append(await _call(host, peer, data))
        return replies


def padded_request(method: str, total_bytes: int) -> bytes:
    """A valid request frame of about ``total_bytes`` (a long string param)."""
    head = codec.dumps(codec.make_request("big-1", method, {"pad": ""}))
    pad = max(0, total_bytes - len(head))
    body = head.replace(b'"pad":""', b'"pad":"' + b"x" * pad + b'"')
    return codec.frame(body, max_bytes=len(body))


async def oversized_frame(
    target: str, data: bytes, *, key_pair: KeyPair | None = None
) -> dict[str, Any]:
    """Write ``data`` (a huge frame) while reading the reply; the reply, or ``RESET``.

    The reply is read from the muxed stream underneath: a refusal may come with a reset, and
    the writer task seeing that reset must not hide a reply that already arrived."""
    async with connected(target, key_pair) as (host, peer):
        stream = await host.new_stream(peer, [TProtocol(INVOKE_PROTOCOL)])
        reply: dict[str, Any] = RESET

        async def write_all() -> None:
            with contextlib.suppress(*TRANSPORT_ERRORS):
                for start in range(0, len(data), 1 << 20):
                    await stream.write(data[start : start + (1 << 20)])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_all)
            with trio.fail_after(4 * STEP_TIMEOUT_S):
                with contextlib.suppress(ProtocolError, *TRANSPORT_ERRORS):
                    try:
                        reply = await codec.read_frame(stream.muxed_stream, max_bytes=1 << 20)
                    except FrameTooLarge:
                        reply = SERVED_HUGE
            nursery.cancel_scope.cancel()
        with contextlib.suppress(*TRANSPORT_ERRORS):
            await stream.reset()
        return reply


async def hold_streams_then_call(
    target: str, held: int, frame_bytes: bytes, *, key_pair: KeyPair | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Open ``held`` invoke streams that send nothing, then call with ``frame_bytes`` on one
    more; then release the held ones and call again. Returns (reply while held, reply after)."""
    async with connected(target, key_pair) as (host, peer):
        streams: list[INetStream] = []
        with trio.fail_after(4 * STEP_TIMEOUT_S):
            for _ in range(held):
                streams.append(await host.new_stream(peer, [TProtocol(INVOKE_PROTOCOL)]))
            # Let the target's handlers start on every held stream before the extra call.
            await trio.sleep(0.5)
            while_held = await _call(host, peer, frame_bytes)
            for stream in streams:
                with contextlib.suppress(*TRANSPORT_ERRORS):
                    await stream.reset()
            await trio.sleep(0.2)
            after = await _call(host, peer, frame_bytes)
        return while_held, after


async def _call(host: IHost, peer: Any, frame_bytes: bytes) -> dict[str, Any]:
    stream = await host.new_stream(peer, [TProtocol(INVOKE_PROTOCOL)])
    await stream.write(frame_bytes)
    reply = await codec.read_frame(stream)
    with contextlib.suppress(*TRANSPORT_ERRORS):
        await stream.close()
    return reply


def forged_message(data: bytes, key_pair: KeyPair) -> rpc_pb2.Message:
    """A pubsub message originated and validly signed by ``key_pair`` (not the sender)."""
    msg = rpc_pb2.Message(
        data=data,
        topicIDs=[ADVERT_TOPIC],
        from_id=ID.from_pubkey(key_pair.public_key).to_bytes(),
        seqno=time.time_ns().to_bytes(8, "big"),
    )
    msg.signature = key_pair.private_key.sign(
        PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString()
    )
    msg.key = key_pair.public_key.serialize()
    return msg


async def relay_forged_adverts(
    bootstrap: str, make_payload: Callable[[str], bytes], count: int
) -> list[str]:
    """Connect once to ``bootstrap`` and relay ``count`` adverts, each originated and signed
    by a fresh random key (so each passes strict signing and ``peer_id == from_id``).
    Returns the made-up peer IDs."""
    peer, addr = split_p2p_addr(bootstrap)
    made_up: list[str] = []
    async with run_mesh_host(
        key_pair=new_key_pair(), listen_host="127.0.0.1", listen_port=0
    ) as mesh:
        with trio.fail_after(STEP_TIMEOUT_S):
            await mesh.host.connect(PeerInfo(peer, [addr]))
            while True:  # GossipSub only forwards to peers whose subscription it has heard
                if peer in mesh.pubsub.peer_topics.get(ADVERT_TOPIC, set()):
                    break
                await trio.sleep(0.02)
        for _ in range(count):
            fresh = new_key_pair()
            made_up.append(peer_id_of(fresh))
            msg = forged_message(make_payload(made_up[-1]), fresh)
            # As a relay: the message is forwarded, not published as our own.
            await mesh.pubsub.push_msg(mesh.host.get_id(), msg)
            await trio.sleep(PUBLISH_SPACING_S)
    return made_up
