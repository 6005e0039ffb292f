"""A TCP relay that adds delay and jitter to one node's link: the ``latency`` scenario.

The kernel here has no ``netem`` and no maintained user-space link emulator is installable
(docs/benchmarks.md, "Link scenarios"), so the coordinator runs this small relay itself, on
127.0.0.1: the node dials the coordinator through it, and since every call to the node rides
that one multiplexed connection, every byte between them passes it. Each direction holds each
chunk read until ``delay ± jitter`` after it arrived, in order (a later chunk never overtakes
an earlier one), without holding up the reading: a delayed link, not a slower one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass

CHUNK_BYTES = 65_536


@dataclass
class RelayStats:
    connections: int = 0
    chunks: int = 0
    bytes: int = 0


class DelayRelay:
    def __init__(
        self, upstream_host: str, upstream_port: int, *, delay_s: float, jitter_s: float = 0.0
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.stats = RelayStats()
        self._random = random.Random(0)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1") -> int:
        """Listen on ``host`` (a free port); returns the port."""
        self._server = await asyncio.start_server(self._accept, host, 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._direction(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _release_after(self) -> float:
        jitter = self._random.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0
        return max(0.0, self.delay_s + jitter)

    async def _direction(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(held, sink))
        try:
            last = 0.0
            while data := await source.read(CHUNK_BYTES):
                last = max(last, time.monotonic() + self._release_after())  # kept in order
                held.put_nowait((last, data))
            held.put_nowait((last, b""))  # end of stream, after what is held
            await sender
        except (ConnectionError, OSError):
            pass  # either end went away: so does the link
        finally:
            sender.cancel()
            with contextlib.suppress(Exception):
                sink.close()

    async def _send(
        self, held: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter
    ) -> None:
        while True:
            release_at, data = await held.get()
            wait = release_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                return
            sink.write(data)
            await sink.drain()
            self.stats.chunks += 1
            self.stats.bytes += len(data)
