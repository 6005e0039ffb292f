"""A node serves its coordinator (the ``/p2p/<id>`` of ``--bootstrap``) and approved peers
only, validates reservation params whoever sends them, and caps streams per peer."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
import trio

from quantum_mesh.mesh import codec
from quantum_mesh.mesh.bridge import MeshBridge
from quantum_mesh.mesh.errors import RemoteError
from quantum_mesh.mesh.protocol import MAX_PARAM_ID_CHARS, MAX_STREAMS_PER_PEER
from quantum_mesh.node.reservations import MAX_TTL_S
from quantum_mesh.node.service import NodeConfig
from tests.mesh import trio_peer
from tests.node.conftest import Heard, wait_for

OFFER = {"reservation_id": "r1", "service_type": "cnot", "min_fidelity": 0.5, "ttl_s": 5}


def request(method: str, params: dict[str, Any], rid: str = "x-1") -> bytes:
    return codec.encode_frame(codec.make_request(rid, method, params))


async def test_a_stranger_is_refused_every_method(
    coordinator: tuple[MeshBridge, Heard], start_node: Any
) -> None:
    mesh, heard = coordinator
    node = await start_node(mesh.listen_addrs[0])
    await wait_for(lambda: heard.from_peer(node.peer_id), what="an advert")
    frames = [
        request("ping", {}),
        request("echo", {"hello": 1}),
        request("node_status", {}),
        request("reserve", {**OFFER, "ttl_s": math.nan}),
        request("reserve", OFFER),
        request("commit", {"reservation_id": "r1"}),
        request("release", {"reservation_id": "r1"}),
        request("debug_sleep", {"seconds": 1}),
        request("no_such_method", {}),
    ]
    replies = await asyncio.to_thread(trio.run, trio_peer.raw_calls, node.listen_addrs[0], frames)
    assert [r["error"]["code"] for r in replies] == ["not_enrolled"] * len(frames)
    # The coordinator is served as before, and the stranger booked nothing.
    status = await mesh.invoke(node.peer_id, "node_status", {}, timeout=5)
    assert status["reservations"] == 0
    assert (await mesh.invoke(node.peer_id, "reserve", OFFER, timeout=5))["accepted"] is True


@pytest.mark.parametrize(
    "change",
    [
        {"ttl_s": math.nan},
        {"ttl_s": math.inf},
        {"ttl_s": -math.inf},
        {"ttl_s": -1},
        {"ttl_s": 0},
        {"ttl_s": True},
        {"min_fidelity": math.nan},
        {"min_fidelity": 1.5},
        {"min_fidelity": -0.1},
        {"reservation_id": "r" * (MAX_PARAM_ID_CHARS + 1)},
        {"service_type": "s" * (MAX_PARAM_ID_CHARS + 1)},
        {"reservation_id": 7},
    ],
    ids=lambda c: "-".join(f"{k}={v!r}"[:40] for k, v in c.items()),
)
def test_reservation_params_are_validated(change: dict[str, Any]) -> None:
    """Unit level: the book refuses what the wire test below sends."""
    from quantum_mesh.node.reservations import ReservationBook

    book = ReservationBook(services=("cnot",), fidelity=0.99, workers=1)
    args: dict[str, Any] = {**OFFER, **change}
    with pytest.raises((TypeError, ValueError)):
        book.reserve(
            reservation_id=args["reservation_id"],
            service_type=args["service_type"],
            min_fidelity=args["min_fidelity"],
            ttl_s=args["ttl_s"],
            in_flight=0,
            now=100.0,
        )
    assert book.active_count(now=100.0) == 0


async def test_hostile_reservation_params_are_bad_requests_even_from_the_coordinator(
    coordinator: tuple[MeshBridge, Heard], start_node: Any
) -> None:
    mesh, heard = coordinator
    node = await start_node(mesh.listen_addrs[0], "--workers", "1")
    await wait_for(lambda: heard.from_peer(node.peer_id), what="an advert")
    hostile = [
        {"ttl_s": math.nan},
        {"ttl_s": math.inf},
        {"ttl_s": -5},
        {"min_fidelity": math.nan},
        {"min_fidelity": 2},
        {"reservation_id": "r" * (MAX_PARAM_ID_CHARS + 1)},
    ]
    for i, change in enumerate(hostile):
        offer = {**OFFER, "reservation_id": f"h{i}", **change}
        with pytest.raises(RemoteError) as caught:
            await mesh.invoke(node.peer_id, "reserve", offer, timeout=5)
        assert caught.value.code == "bad_request", change
    for method in ("commit", "release"):
        with pytest.raises(RemoteError) as caught:
            await mesh.invoke(node.peer_id, method, {"reservation_id": "r" * 1000}, timeout=5)
        assert caught.value.code == "bad_request"
    # Nothing was booked: the node still grants fresh reservations (TTL capped, not refused).
    for rid in ("a", "b"):
        granted = await mesh.invoke(
            node.peer_id, "reserve", {**OFFER, "reservation_id": rid, "ttl_s": 1e9}, timeout=5
        )
        assert granted["accepted"] is True
    status = await mesh.invoke(node.peer_id, "node_status", {}, timeout=5)
    assert status["reservations"] == 2
    assert MAX_TTL_S < 1e9  # the long TTL above was capped, not refused


async def test_an_approved_peer_is_served_and_its_streams_are_capped(
    coordinator: tuple[MeshBridge, Heard], start_node: Any, tmp_path: Path
) -> None:
    """``--allow-peer`` approves a peer besides the coordinator; it may hold at most the
    pool limit plus ``MAX_STREAMS_PER_PEER`` streams at once."""
    mesh, heard = coordinator
    key_pair = trio_peer.new_key_pair()
    friend = trio_peer.peer_id_for(key_pair)
    node = await start_node(mesh.listen_addrs[0], "--workers", "1", "--allow-peer", friend)
    await wait_for(lambda: heard.from_peer(node.peer_id), what="an advert")
    cap = NodeConfig(key_file=tmp_path / "unused.key", bootstrap=None).streams_per_peer()
    assert cap > MAX_STREAMS_PER_PEER
    ping = request("ping", {})

    async def attack() -> tuple[dict[str, Any], dict[str, Any]]:
        return await trio_peer.hold_streams_then_call(
            node.listen_addrs[0], cap, ping, key_pair=key_pair
        )

    while_held, after = await asyncio.to_thread(trio.run, attack)
    assert while_held["ok"] is False and while_held["error"]["code"] == "busy"
    assert after["ok"] is True and after["result"]["pong"] is True
    # Another peer's streams are not counted against the friend's (nor the reverse).
    assert (await mesh.invoke(node.peer_id, "ping", {}, timeout=5))["pong"] is True
