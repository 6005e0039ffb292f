"""Invoke protocol 2 between two real libp2p hosts on 127.0.0.1 (one Trio loop per test)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import PeerInfo

from quantum_mesh.mesh import codec, packing
from quantum_mesh.mesh.channel import Channels, call, serve_channel
from quantum_mesh.mesh.errors import InvokeTimeout, PeerUnreachable, RemoteError
from quantum_mesh.mesh.host import MeshHost, run_mesh_host, split_p2p_addr
from quantum_mesh.mesh.invoke import InboundGate
from quantum_mesh.mesh.protocol import CHANNEL_PROTOCOL
from tests.mesh.trio_peer import new_key_pair

LIMIT_S = 10.0
MAX_FRAME = 64 * 1024 * 1024


async def dispatch(request: codec.Request, remote: str) -> dict[str, Any]:
    """A callee whose methods make ordering and failure visible."""
    if request.method == "sleep":
        await trio.sleep(float(request.params["s"]))
        return {"slept": request.params["s"]}
    if request.method == "echo":
        return {"params": request.params}
    if request.method == "fail":
        raise RemoteError("handler_error", "asked to fail")
    raise RemoteError("unknown_method", request.method)


@asynccontextmanager
async def callee(
    gate: InboundGate | None = None,
) -> AsyncIterator[tuple[MeshHost, str, list[int]]]:
    """A host serving protocol 2; yields it, its address and a list counting its streams."""
    streams: list[int] = []

    async def handler(stream: Any) -> None:
        streams.append(1)
        await serve_channel(
            stream, dispatch=dispatch, max_frame_bytes=MAX_FRAME, gate=gate or InboundGate()
        )

    async with run_mesh_host(
        key_pair=new_key_pair(), listen_host="127.0.0.1", listen_port=0
    ) as mesh:
        mesh.host.set_stream_handler(TProtocol(CHANNEL_PROTOCOL), handler)
        yield mesh, mesh.listen_addrs()[0], streams


@asynccontextmanager
async def caller() -> AsyncIterator[Channels]:
    async with (
        run_mesh_host(key_pair=new_key_pair(), listen_host="127.0.0.1", listen_port=0) as mesh,
        trio.open_nursery() as nursery,
    ):
        yield Channels(mesh.host, nursery, max_frame_bytes=MAX_FRAME)
        nursery.cancel_scope.cancel()


def invoke(
    channels: Channels, addr: str, method: str, params: dict[str, Any], *, limit_s: float = LIMIT_S
) -> Awaitable[dict[str, Any]]:
    peer, _ = split_p2p_addr(addr)
    return call(
        channels,
        peer.to_base58(),
        method,
        params,
        limit_s=limit_s,
        addrs=[addr],
        max_frame_bytes=MAX_FRAME,
    )


def run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test)


def test_replies_come_back_as_they_finish_over_one_stream() -> None:
    async def scenario() -> None:
        finished: list[str] = []
        async with callee() as (_, addr, streams), caller() as channels:

            async def one(name: str, seconds: float) -> None:
                await invoke(channels, addr, "sleep", {"s": seconds})
                finished.append(name)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, "slow", 0.5)
                await trio.sleep(0.05)
                for i in range(10):
                    nursery.start_soon(one, f"fast{i}", 0.0)
            assert finished[-1] == "slow"
            assert len(finished) == 11
            assert len(streams) == 1

    run(scenario)


def test_arrays_travel_as_arrays_and_errors_as_remote_errors() -> None:
    async def scenario() -> None:
        state = np.arange(8, dtype=np.complex128) * (1 + 2j)
        async with callee() as (_, addr, _streams), caller() as channels:
            reply = await invoke(channels, addr, "echo", {"state": state, "n": np.int64(3)})
            echoed = reply["params"]["state"]
            assert isinstance(echoed, np.ndarray) and echoed.dtype == np.complex128
            assert np.array_equal(echoed, state) and reply["params"]["n"] == 3
            with pytest.raises(RemoteError) as caught:
                await invoke(channels, addr, "fail", {})
            assert caught.value.code == "handler_error"
            assert (await invoke(channels, addr, "echo", {"after": 1}))["params"] == {"after": 1}

    run(scenario)


def test_a_call_past_its_limit_times_out_and_the_channel_stays_usable() -> None:
    async def scenario() -> None:
        async with callee() as (_, addr, streams), caller() as channels:
            with pytest.raises(InvokeTimeout):
                await invoke(channels, addr, "sleep", {"s": 1.0}, limit_s=0.2)
            assert (await invoke(channels, addr, "echo", {"x": 1}))["params"] == {"x": 1}
            await trio.sleep(1.0)  # the late reply arrives and is dropped
            assert (await invoke(channels, addr, "echo", {"x": 2}))["params"] == {"x": 2}
            assert len(streams) == 1

    run(scenario)


def test_a_callee_that_dies_mid_call_fails_every_pending_call_at_once() -> None:
    async def scenario() -> None:
        errors: list[BaseException] = []
        async with caller() as channels:
            async with callee() as (mesh, addr, _streams):
                await invoke(channels, addr, "echo", {})

                async def pending() -> None:
                    try:
                        await invoke(channels, addr, "sleep", {"s": 30})
                    except PeerUnreachable as error:
                        errors.append(error)

                async with trio.open_nursery() as nursery:
                    for _ in range(3):
                        nursery.start_soon(pending)
                    await trio.sleep(0.3)
                    started = trio.current_time()
                    await mesh.host.close()
            assert len(errors) == 3
            assert trio.current_time() - started < 5.0

    run(scenario)


def test_calls_beyond_the_peers_quota_are_answered_busy() -> None:
    async def scenario() -> None:
        gate = InboundGate(max_streams_per_peer=2)
        outcomes: list[str] = []
        async with callee(gate) as (_, addr, _streams), caller() as channels:

            async def one() -> None:
                try:
                    await invoke(channels, addr, "sleep", {"s": 0.3})
                    outcomes.append("ok")
                except RemoteError as error:
                    outcomes.append(error.code)

            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(one)
            assert sorted(outcomes) == ["busy", "busy", "ok", "ok"]
            assert gate.in_flight(next(iter(gate._open), "")) == 0

    run(scenario)


def test_an_untrusted_caller_is_refused_before_its_request_is_read() -> None:
    async def scenario() -> None:
        gate = InboundGate(trusted=lambda peer: False)
        async with callee(gate) as (_, addr, _streams), caller() as channels:
            with pytest.raises(RemoteError) as caught:
                await invoke(channels, addr, "echo", {})
            assert caught.value.code == "not_enrolled"
            assert gate.refused["not_enrolled"] == 1

    run(scenario)


def test_a_garbage_frame_gets_an_error_frame_and_the_stream_ends() -> None:
    async def scenario() -> None:
        async with (
            callee() as (_, addr, _streams),
            run_mesh_host(key_pair=new_key_pair(), listen_host="127.0.0.1", listen_port=0) as me,
        ):
            peer, transport = split_p2p_addr(addr)
            with trio.fail_after(LIMIT_S):
                await me.host.connect(PeerInfo(peer, [transport]))
                stream = await me.host.new_stream(peer, [TProtocol(CHANNEL_PROTOCOL)])
                await stream.write(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
                reader = codec.FrameReader(stream)
                reply = packing.unpack(await reader.next_frame())
                assert reply["id"] == "" and reply["ok"] is False
                assert reply["error"]["code"] == "protocol_error"

    run(scenario)


def test_a_callee_lost_during_a_large_write_fails_the_call_and_spares_the_host() -> None:
    async def scenario() -> None:
        big = np.zeros(2**21, dtype=np.complex128)  # 32 MiB: many writes on the wire
        async with caller() as channels:
            async with callee() as (mesh, addr, _streams):
                await invoke(channels, addr, "echo", {})
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(mesh.host.close)
                    with pytest.raises((PeerUnreachable, InvokeTimeout)):
                        await invoke(channels, addr, "echo", {"big": big}, limit_s=20)
            # The caller's host lives on: another callee is served over a fresh channel.
            async with callee() as (_, other, _streams):
                assert (await invoke(channels, other, "echo", {"x": 1}))["params"] == {"x": 1}

    run(scenario)
