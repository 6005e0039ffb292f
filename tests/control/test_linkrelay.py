"""The link scenarios' relay (control/linkrelay.py): bytes pass unchanged, in order, each
direction held at least the delay; a reset share cuts connections with an RST."""

from __future__ import annotations

import asyncio
import time

import pytest

from quantum_mesh.control.linkrelay import LinkRelay


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def test_a_round_trip_through_the_relay_takes_at_least_twice_the_delay() -> None:
    server, port = await _echo_server()
    relay = LinkRelay("127.0.0.1", port, delay_s=0.05, jitter_s=0.02)
    relay_port = await relay.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
        sent = b"".join(i.to_bytes(4, "big") for i in range(20_000))  # 80 kB, many chunks
        started = time.monotonic()
        writer.write(sent)
        await writer.drain()
        received = await reader.readexactly(len(sent))
        elapsed = time.monotonic() - started
        assert received == sent  # unchanged and in order, jitter or not
        assert elapsed >= 2 * (0.05 - 0.02)  # held each way: a lower bound only
        writer.close()
        assert relay.stats.connections == 1 and relay.stats.bytes >= len(sent)
    finally:
        await relay.stop()
        server.close()


async def test_a_rate_limit_and_loss_slow_the_link_but_keep_every_byte() -> None:
    server, port = await _echo_server()
    relay = LinkRelay("127.0.0.1", port, rate_bps=400_000, loss=0.5, rto_s=0.05)
    relay_port = await relay.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
        sent = bytes(range(256)) * 400  # 100 kB
        started = time.monotonic()
        writer.write(sent)
        await writer.drain()
        assert await reader.readexactly(len(sent)) == sent
        # 100 kB at 400 kB/s: a quarter second at least (the two directions overlap).
        assert time.monotonic() - started >= len(sent) / 400_000 * 0.9
        assert relay.stats.lost >= 1  # held a retransmission timeout longer, not dropped
        writer.close()
    finally:
        await relay.stop()
        server.close()


async def test_a_reset_share_resets_both_sides_with_an_rst() -> None:
    upstream_resets: list[int] = []

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass
        except ConnectionResetError:
            upstream_resets.append(1)
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    relay = LinkRelay("127.0.0.1", port, reset_share=1.0, reset_grace_s=0.0)  # all, at once
    relay_port = await relay.start()
    try:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay_port)
            writer.write(b"x" * 1000)
            await writer.drain()
            with pytest.raises(ConnectionResetError):  # an RST, not an orderly close
                await reader.read(65536)
            writer.close()
        assert relay.stats.resets == 2 and relay.stats.bytes == 0
        for _ in range(100):  # the upstream side was reset too
            if len(upstream_resets) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(upstream_resets) == 2
    finally:
        await relay.stop()
        server.close()
