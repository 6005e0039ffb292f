"""Advert validation, unit-level and through a real bridge fed by a misbehaving peer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import trio

from quantum_mesh.mesh.adverts import Advert, encode_advert, validate_advert
from quantum_mesh.mesh.bridge import MeshBridge
from quantum_mesh.mesh.codec import dumps
from quantum_mesh.mesh.errors import AdvertRejected
from tests.mesh import trio_peer

PEER = "12D3KooWPeerPeerPeerPeerPeerPeerPeerPeerPeerPeerPeer"


def advert_dict(peer_id: str = PEER, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "peer_id": peer_id,
        "name": "n0",
        "services": ["cnot", "bell_pair"],
        "qubit_min": 1,
        "qubit_max": 24,
        "fidelity": 0.99,
        "noise_level": 0.0,
        "load": 0.0,
        "availability": "AVAILABLE",
        "workers": 2,
        "listen_addrs": [f"/ip4/127.0.0.1/tcp/4001/p2p/{peer_id}"],
        "version": "0.1.0",
        "sent_at": time.time(),
        "seq": 1,
    }
    return {**base, **changes}


def reason_of(data: bytes, *, from_peer: str = PEER, now: float | None = None) -> str:
    with pytest.raises(AdvertRejected) as caught:
        validate_advert(data, from_peer=from_peer, now=now or time.time(), max_age_s=5.0)
    return caught.value.reason


def test_valid_advert_round_trips() -> None:
    advert = Advert.model_validate(advert_dict())
    parsed = validate_advert(
        encode_advert(advert), from_peer=PEER, now=advert.sent_at + 1, max_age_s=5.0
    )
    assert parsed == advert


def test_rejections_are_reason_coded() -> None:
    assert reason_of(b"{not json") == "malformed"
    assert reason_of(dumps({k: v for k, v in advert_dict().items() if k != "services"})) == (
        "malformed"
    )
    assert reason_of(dumps(advert_dict(availability="ASLEEP"))) == "malformed"
    assert reason_of(dumps(advert_dict(load=1.5))) == "malformed"
    assert reason_of(dumps(advert_dict(qubit_min=5, qubit_max=2))) == "malformed"
    assert reason_of(dumps(advert_dict(name="x" * 20_000))) == "oversized"
    assert reason_of(dumps(advert_dict(sent_at=time.time() - 60))) == "stale"
    assert reason_of(dumps(advert_dict(sent_at=time.time() + 60))) == "stale"
    assert reason_of(dumps(advert_dict()), from_peer="12D3KooWSomebodyElse") == "peer_mismatch"


def test_encode_refuses_an_advert_peers_would_reject() -> None:
    with pytest.raises(AdvertRejected):
        encode_advert(Advert.model_validate(advert_dict(services=["s" * 300] * 64)))


async def test_bridge_counts_bad_adverts_and_keeps_ingesting(bridge: MeshBridge) -> None:
    heard: list[Advert] = []
    bridge.on_advert = heard.append
    key_pair = trio_peer.new_key_pair()
    me = trio_peer.peer_id_for(key_pair)
    payloads = [
        b"\x00garbage",
        lambda: dumps(advert_dict(me, sent_at=time.time() - 3600)),
        lambda: dumps(advert_dict(me, name="y" * 17_000)),
        lambda: dumps(advert_dict(bridge.peer_id)),  # speaks for somebody else
        lambda: dumps(advert_dict(me, seq=7)),  # finally a good one
    ]
    await asyncio.to_thread(trio.run, _publish, bridge.listen_addrs[0], payloads, key_pair)
    for _ in range(100):  # bounded wait for delivery on this loop
        if heard:
            break
        await asyncio.sleep(0.05)
    assert [a.seq for a in heard] == [7]
    assert heard[0].peer_id == me
    assert bridge.advert_stats == {
        "accepted": 1,
        "malformed": 1,
        "oversized": 1,
        "stale": 1,
        "peer_mismatch": 1,
    }


async def _publish(bootstrap: str, payloads: list[Any], key_pair: Any) -> None:
    await trio_peer.publish_raw(bootstrap, payloads, key_pair=key_pair)
