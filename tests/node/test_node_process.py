"""A real node subprocess against a real coordinator bridge over 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import numpy as np
import pytest

from quantum_mesh.mesh import hostlocal
from quantum_mesh.mesh.bridge import MeshBridge
from quantum_mesh.mesh.errors import MeshError, RemoteError
from tests.node.conftest import WAIT_S, Heard, wait_for


async def test_node_joins_advertises_serves_and_drains(
    coordinator: tuple[MeshBridge, Heard], start_node: Any
) -> None:
    mesh, heard = coordinator
    node = await start_node(mesh.listen_addrs[0], "--workers", "1", "--noise-level", "0.1")
    advert = (await wait_for(lambda: heard.from_peer(node.peer_id), what="an advert"))[0]
    assert advert.listen_addrs == node.listen_addrs
    assert advert.noise_level == 0.1 and "cnot" in advert.services
    assert advert.availability == "AVAILABLE"
    assert node.peer_id in mesh.connected_peers()

    assert await mesh.ping(node.peer_id) > 0
    slept = await mesh.invoke(node.peer_id, "debug_sleep", {"seconds": 0.2}, timeout=WAIT_S)
    assert slept == {"slept": 0.2, "peer_id": node.peer_id}
    with pytest.raises(RemoteError) as caught:
        await mesh.invoke(node.peer_id, "no_such_method", {}, timeout=5)
    assert caught.value.code == "unknown_method"

    offer = {"reservation_id": "r1", "service_type": "cnot", "min_fidelity": 0.9, "ttl_s": 5}
    assert (await mesh.invoke(node.peer_id, "reserve", offer, timeout=5))["accepted"] is True
    refused = await mesh.invoke(
        node.peer_id, "reserve", {**offer, "reservation_id": "r2", "min_fidelity": 0.999},
        timeout=5,
    )  # fmt: skip
    assert refused["reason"] == "fidelity_below_minimum"
    no_minimum = {**offer, "reservation_id": "r3", "min_fidelity": None, "ttl_s": None}
    assert (await mesh.invoke(node.peer_id, "reserve", no_minimum, timeout=5))["accepted"]
    await mesh.invoke(node.peer_id, "release", {"reservation_id": "r3"}, timeout=5)
    with pytest.raises(RemoteError) as bad:
        await mesh.invoke(node.peer_id, "reserve", {**offer, "ttl_s": "long"}, timeout=5)
    assert bad.value.code == "bad_request"
    assert (await mesh.invoke(node.peer_id, "commit", {"reservation_id": "r1"}, timeout=5))[
        "committed"
    ]
    await mesh.invoke(node.peer_id, "echo", {"reservation_id": "r1"}, timeout=WAIT_S)
    status = await mesh.invoke(node.peer_id, "node_status", {}, timeout=5)
    assert status["reservations"] == 0  # consumed by the request that carried it

    node.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(node.process.wait(), WAIT_S) == 0
    await wait_for(lambda: node.peer_id in heard.disconnected, what="disconnect callback")
    assert node.peer_id not in mesh.connected_peers()
    assert heard.from_peer(node.peer_id)[-1].availability == "DRAINING"


async def test_a_work_call_carries_its_reservation(
    coordinator: tuple[MeshBridge, Heard], start_node: Any
) -> None:
    """``inline_reserve``: the reservation travels with the work; a refused one runs nothing."""
    mesh, heard = coordinator
    node = await start_node(mesh.listen_addrs[0], "--workers", "1")
    advert = (await wait_for(lambda: heard.from_peer(node.peer_id), what="an advert"))[0]
    assert "inline_reserve" in advert.features

    ask = {"service_type": "cnot", "min_fidelity": 0.9, "ttl_s": 5}
    echoed = await mesh.invoke(
        node.peer_id, "echo", {"x": 1, "reservation_id": "i1", "reserve": ask}, timeout=WAIT_S
    )
    assert echoed["params"] == {"x": 1}  # the handler sees its own payload only
    status = await mesh.invoke(node.peer_id, "node_status", {}, timeout=5)
    assert status["reservations"] == 0  # granted, committed and consumed by that call

    for bad_ask, code in [
        ({**ask, "min_fidelity": 0.999}, "reservation_refused"),
        ({**ask, "service_type": "no_such_service"}, "reservation_refused"),
        ({**ask, "ttl_s": "long"}, "bad_request"),
        ("cnot", "bad_request"),
    ]:
        with pytest.raises(RemoteError) as refused:
            await mesh.invoke(
                node.peer_id,
                "debug_sleep",
                {"seconds": 5, "reservation_id": "i2", "reserve": bad_ask},
                timeout=2,  # a refusal is answered at once: the 5 s sleep never ran
            )
        assert refused.value.code == code, bad_ask
    assert refused.value.code == "bad_request"
    with pytest.raises(RemoteError) as low:
        await mesh.invoke(
            node.peer_id,
            "echo",
            {"reservation_id": "i3", "reserve": {**ask, "min_fidelity": 0.999}},
            timeout=5,
        )
    assert low.value.message == "fidelity_below_minimum"


async def test_killing_a_node_mid_invoke_fails_fast(
    coordinator: tuple[MeshBridge, Heard], start_node: Any
) -> None:
    mesh, heard = coordinator
    node = await start_node(mesh.listen_addrs[0])
    await wait_for(lambda: heard.from_peer(node.peer_id), what="an advert")
    call = asyncio.create_task(
        mesh.invoke(node.peer_id, "debug_sleep", {"seconds": 20}, timeout=25)
    )
    await wait_for(
        lambda: any(a.availability == "BUSY" for a in heard.from_peer(node.peer_id)),
        what="the node to report the job",
    )
    node.process.kill()
    # Bounded: the call must fail on the dead connection, long before its own 25 s timeout.
    with pytest.raises(MeshError):
        await asyncio.wait_for(call, 10)
    await node.process.wait()
    await wait_for(lambda: node.peer_id in heard.disconnected, what="disconnect callback")
    with pytest.raises(MeshError):
        await mesh.invoke(node.peer_id, "ping", {}, timeout=3, addrs=node.listen_addrs)


async def test_big_arrays_to_a_node_on_this_host_go_through_shared_memory(
    coordinator: tuple[MeshBridge, Heard], start_node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first reply tells the bridge the node shares its host; from then on a 16 MiB
    statevector goes both ways as a shared-memory file, arrives intact, and no file stays."""
    if hostlocal.host_key() is None:
        pytest.skip("no /dev/shm here")
    mesh, _ = coordinator
    node = await start_node(mesh.listen_addrs[0], "--workers", "1")
    await wait_for(lambda: node.peer_id in mesh.connected_peers(), what="the node's dial")
    spilled: list[int] = []
    read: list[str] = []
    real_write, real_read = hostlocal.Spill.write, hostlocal.read_spilled

    def counting_write(self: hostlocal.Spill, data: memoryview) -> str:
        spilled.append(data.nbytes)
        return real_write(self, data)

    def counting_read(name: str, *args: Any) -> Any:
        read.append(name)
        return real_read(name, *args)

    monkeypatch.setattr(hostlocal.Spill, "write", counting_write)
    monkeypatch.setattr(hostlocal, "read_spilled", counting_read)
    directory = hostlocal.spill_dir()
    assert directory is not None
    before = set(os.listdir(directory))
    state = np.random.default_rng(3).normal(size=2**20) + 1j * np.random.default_rng(4).normal(
        size=2**20
    )
    first = await mesh.invoke(node.peer_id, "echo", {"state": state}, timeout=WAIT_S)
    assert np.array_equal(first["params"]["state"], state)
    assert spilled == []  # not yet known to share the host: the stream carried it
    assert len(read) == 1  # but the node already answered through shared memory
    second = await mesh.invoke(node.peer_id, "echo", {"state": state}, timeout=WAIT_S)
    assert np.array_equal(second["params"]["state"], state)
    assert spilled == [state.nbytes] and len(read) == 2
    small = await mesh.invoke(node.peer_id, "echo", {"v": np.arange(8.0)}, timeout=WAIT_S)
    assert np.array_equal(small["params"]["v"], np.arange(8.0)) and len(spilled) == 1
    assert set(os.listdir(directory)) == before


async def test_shared_memory_can_be_turned_off(tmp_path: Any, start_node: Any) -> None:
    mesh = MeshBridge(key_file=tmp_path / "off.key", shared_memory=False)
    await mesh.start()
    try:
        node = await start_node(mesh.listen_addrs[0], "--workers", "1", name="off")
        await wait_for(lambda: node.peer_id in mesh.connected_peers(), what="the node's dial")
        state = np.arange(2**18, dtype=np.complex128)
        for _ in range(2):
            reply = await mesh.invoke(node.peer_id, "echo", {"state": state}, timeout=WAIT_S)
            assert np.array_equal(reply["params"]["state"], state)
        assert mesh._same_host == set()
    finally:
        await mesh.stop()
