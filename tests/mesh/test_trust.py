"""Trust before bytes: who may open invoke streams on a host, and how many at once.

A raw libp2p peer (``trio_peer``) plays the attacker against a real ``MeshBridge``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from quantum_mesh.mesh import codec
from quantum_mesh.mesh.bridge import MeshBridge
from quantum_mesh.mesh.errors import RemoteError
from quantum_mesh.mesh.invoke import InboundGate
from quantum_mesh.mesh.protocol import MAX_STREAMS_PER_PEER
from tests.mesh import trio_peer

PING = codec.encode_frame(codec.make_request("p-1", "ping", {}))


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[MeshBridge, set[str]]]:
    """A bridge that trusts only the peer IDs in the returned set."""
    trusted: set[str] = set()
    mesh = MeshBridge(key_file=tmp_path / "guarded.key")
    mesh.stream_filter = trusted.__contains__
    await mesh.start()
    try:
        yield mesh, trusted
    finally:
        await mesh.stop()


def run_trio(fn: Any, *args: Any) -> Any:
    return asyncio.to_thread(trio.run, fn, *args)


async def settled(gate: InboundGate) -> None:
    """Bounded wait until no refused stream lingers and no stream is counted in flight."""
    for _ in range(100):
        if gate.lingering == 0 and not gate._open:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gate did not settle: {gate.lingering} lingering, {gate._open}")


def test_the_gate_checks_trust_first_then_counts_per_peer() -> None:
    def trusted(peer: str) -> bool:
        if peer == "broken":
            raise RuntimeError("lookup failed")
        return peer != "stranger"

    gate = InboundGate(trusted, max_streams_per_peer=2)
    assert gate.admit("stranger") == ("not_enrolled", "this peer is not enrolled and approved")
    assert gate.admit("broken") is not None  # a failing lookup refuses (fails closed)
    assert gate.admit("a") is None and gate.admit("a") is None
    assert gate.admit("a") == ("busy", "this peer already has 2 calls in flight here")
    assert gate.admit("b") is None  # one peer's streams never count against another
    gate.release("a")
    assert gate.in_flight("a") == 1 and gate.admit("a") is None
    assert gate.refused == {"not_enrolled": 2, "busy": 1}
    assert InboundGate().is_trusted("anyone")  # no check: every peer is trusted


async def test_an_untrusted_peer_is_refused_and_a_trusted_one_served(
    guarded: tuple[MeshBridge, set[str]],
) -> None:
    mesh, trusted = guarded
    target = mesh.listen_addrs[0]
    [refused] = await run_trio(trio_peer.raw_calls, target, [PING])
    assert refused["ok"] is False and refused["error"]["code"] == "not_enrolled"

    key_pair = trio_peer.new_key_pair()
    trusted.add(trio_peer.peer_id_for(key_pair))
    [served] = await run_trio(lambda: trio_peer.raw_calls(target, [PING], key_pair=key_pair))
    assert served["ok"] is True and served["id"] == "p-1"
    assert mesh.inbound.refused["not_enrolled"] == 1
    await settled(mesh.inbound)


async def test_an_untrusted_peer_is_refused_before_its_body_is_read(
    guarded: tuple[MeshBridge, set[str]],
) -> None:
    """A prefix announcing 1 MiB and no body at all: answered at once, not after the
    read timeout (the refusal never waits for, or reads, the body)."""
    mesh, _ = guarded
    [reply] = await run_trio(
        trio_peer.raw_calls, mesh.listen_addrs[0], [trio_peer.length_prefix(1 << 20)]
    )
    assert reply["error"]["code"] == "not_enrolled"


async def test_an_untrusted_huge_frame_is_refused(guarded: tuple[MeshBridge, set[str]]) -> None:
    mesh, _ = guarded
    big = trio_peer.padded_request("ping", 8 << 20)
    reply = await run_trio(trio_peer.oversized_frame, mesh.listen_addrs[0], big)
    assert reply is trio_peer.RESET or reply["error"]["code"] == "not_enrolled"
    # Still serving.
    [again] = await run_trio(trio_peer.raw_calls, mesh.listen_addrs[0], [PING])
    assert again["error"]["code"] == "not_enrolled"
    await settled(mesh.inbound)


async def test_concurrent_streams_per_peer_are_capped(bridge: MeshBridge) -> None:
    """Streams held open without a request count against the peer's cap; one more is
    refused with ``busy`` at once; once they are gone the peer is served again."""
    while_held, after = await run_trio(
        trio_peer.hold_streams_then_call, bridge.listen_addrs[0], MAX_STREAMS_PER_PEER, PING
    )
    assert while_held["ok"] is False and while_held["error"]["code"] == "busy"
    assert after["ok"] is True
    assert bridge.inbound.refused["busy"] == 1
    await settled(bridge.inbound)


async def test_a_standard_caller_sees_the_refusal_as_a_remote_error(
    guarded: tuple[MeshBridge, set[str]], bridge: MeshBridge
) -> None:
    mesh, trusted = guarded
    with pytest.raises(RemoteError) as caught:
        await bridge.invoke(mesh.peer_id, "ping", {}, timeout=5, addrs=mesh.listen_addrs)
    assert caught.value.code == "not_enrolled"
    trusted.add(bridge.peer_id)
    assert (await bridge.invoke(mesh.peer_id, "ping", {}, timeout=5))["pong"] is True
