"""Two real hosts on 127.0.0.1: invoke, errors, concurrency and transport security."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from quantum_mesh.mesh import codec
from quantum_mesh.mesh.bridge import MeshBridge
from quantum_mesh.mesh.errors import PeerNotReached, PeerUnreachable, RemoteError
from quantum_mesh.mesh.protocol import MAX_STREAMS_PER_PEER
from tests.mesh import trio_peer


@pytest.fixture
async def other(tmp_path: Path) -> AsyncIterator[MeshBridge]:
    mesh = MeshBridge(key_file=tmp_path / "other.key")
    await mesh.start()
    try:
        yield mesh
    finally:
        await mesh.stop()


def transport_addr(full: str) -> str:
    return full.rsplit("/p2p/", 1)[0]


async def test_invoke_dials_with_given_addrs_and_then_reuses_the_connection(
    bridge: MeshBridge, other: MeshBridge
) -> None:
    assert bridge.listen_addrs[0].startswith("/ip4/127.0.0.1/tcp/")
    assert bridge.listen_addrs[0].endswith(f"/p2p/{bridge.peer_id}")
    addrs = [transport_addr(a) for a in bridge.listen_addrs]
    result = await other.invoke(bridge.peer_id, "ping", {}, timeout=5, addrs=addrs)
    assert result["pong"] is True and result["peer_id"] == bridge.peer_id
    assert bridge.peer_id in other.connected_peers()
    assert await other.ping(bridge.peer_id) > 0
    for _ in range(50):  # the listener's notifee runs on its own thread
        if other.peer_id in bridge.connected_peers():
            break
        await asyncio.sleep(0.02)
    # The listener can call back over the same connection, no addresses needed.
    assert (await bridge.invoke(other.peer_id, "ping", {}, timeout=5))["peer_id"] == other.peer_id


async def test_invoke_accepts_full_p2p_addrs_as_adverts_carry_them(
    bridge: MeshBridge, other: MeshBridge
) -> None:
    result = await other.invoke(bridge.peer_id, "ping", {}, timeout=5, addrs=bridge.listen_addrs)
    assert result["peer_id"] == bridge.peer_id


async def test_many_concurrent_invokes(bridge: MeshBridge, other: MeshBridge) -> None:
    addrs = [transport_addr(a) for a in bridge.listen_addrs]
    await other.invoke(bridge.peer_id, "ping", {}, timeout=5, addrs=addrs)
    results = await asyncio.gather(
        *(
            other.invoke(bridge.peer_id, "ping", {"i": i}, timeout=10)
            for i in range(MAX_STREAMS_PER_PEER)
        )
    )
    assert len(results) == MAX_STREAMS_PER_PEER and all(r["pong"] for r in results)
    # Beyond the per-peer cap a call may be refused as busy, never lost or failed otherwise.
    outcomes = await asyncio.gather(
        *(other.invoke(bridge.peer_id, "ping", {"i": i}, timeout=10) for i in range(40)),
        return_exceptions=True,
    )
    assert all(
        (isinstance(o, dict) and o["pong"]) or (isinstance(o, RemoteError) and o.code == "busy")
        for o in outcomes
    ), outcomes
    assert sum(isinstance(o, dict) for o in outcomes) >= MAX_STREAMS_PER_PEER


async def test_remote_errors_and_unreachable_peers(bridge: MeshBridge, other: MeshBridge) -> None:
    addrs = [transport_addr(a) for a in bridge.listen_addrs]
    with pytest.raises(RemoteError) as caught:
        await other.invoke(bridge.peer_id, "execute_fragment", {}, timeout=5, addrs=addrs)
    assert caught.value.code == "unknown_method"
    stranger = trio_peer.peer_id_for(trio_peer.new_key_pair())
    # No connection could be made: the request never left (the scheduler counts no attempt).
    with pytest.raises(PeerNotReached):
        await other.invoke(stranger, "ping", {}, timeout=5)
    with pytest.raises(PeerNotReached):  # nothing listens there
        await other.invoke(stranger, "ping", {}, timeout=5, addrs=["/ip4/127.0.0.1/tcp/9"])
    with pytest.raises(PeerNotReached):
        await other.invoke("not-a-peer-id", "ping", {}, timeout=5)


async def test_plaintext_dialer_is_rejected_but_noise_is_accepted(bridge: MeshBridge) -> None:
    target = bridge.listen_addrs[0]
    assert await asyncio.to_thread(trio.run, trio_peer.dial_offering, target, "noise")
    assert not await asyncio.to_thread(trio.run, trio_peer.dial_offering, target, "plaintext")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (
            codec.encode_frame({"v": 2, "id": "x", "method": "ping", "params": {}}),
            "unsupported_version",
        ),
        (codec.frame(b'{"v":1,"id":"x"'), "protocol_error"),
        (trio_peer.length_prefix(65 * 1024 * 1024), "frame_too_large"),
        (codec.encode_frame({"v": 1, "id": "x", "method": "ping", "params": 3}), "bad_request"),
    ],
    ids=["version", "bad-json", "too-large", "bad-params"],
)
async def test_bad_frames_get_error_replies(bridge: MeshBridge, frame: bytes, code: str) -> None:
    reply = await asyncio.to_thread(trio.run, trio_peer.raw_invoke, bridge.listen_addrs[0], frame)
    assert reply["ok"] is False and reply["error"]["code"] == code
    # The host keeps serving after every bad stream.
    good = codec.encode_frame(codec.make_request("ok-1", "ping", {}))
    reply = await asyncio.to_thread(trio.run, trio_peer.raw_invoke, bridge.listen_addrs[0], good)
    assert reply["ok"] is True and reply["id"] == "ok-1"


async def test_bridge_lifecycle(tmp_path: Path) -> None:
    mesh = MeshBridge(key_file=tmp_path / "c.key")
    peer_id = mesh.peer_id  # known before start
    await mesh.start()
    await mesh.hop()
    await mesh.stop()
    await mesh.stop()  # idempotent
    restarted = MeshBridge(key_file=tmp_path / "c.key")
    assert restarted.peer_id == peer_id
    with pytest.raises(Exception, match="not running"):
        await restarted.invoke(peer_id, "ping", {}, timeout=1)


async def test_a_restarted_peer_is_reachable_at_once_despite_a_failed_dial(
    other: MeshBridge, tmp_path: Path
) -> None:
    first = MeshBridge(key_file=tmp_path / "restarting.key")
    await first.start()
    addrs = list(first.listen_addrs)
    port = int(addrs[0].split("/tcp/")[1].split("/")[0])
    await other.invoke(first.peer_id, "ping", {}, timeout=5, addrs=addrs)
    await first.stop()
    with pytest.raises(PeerUnreachable):  # puts the peer in libp2p's negative dial cache
        await other.invoke(first.peer_id, "ping", {}, timeout=5, addrs=addrs)
    again = MeshBridge(key_file=tmp_path / "restarting.key", listen_port=port)
    await again.start()
    try:
        result = await other.invoke(again.peer_id, "ping", {}, timeout=5, addrs=addrs)
        assert result["peer_id"] == first.peer_id
    finally:
        await again.stop()
