"""A TCP relay that impairs one node's link: the ``latency``, ``bandwidth`` and ``loss``
scenarios.

The kernel here has no ``netem`` and no maintained user-space link emulator is installable
(docs/benchmarks.md, "Link scenarios"), so the coordinator runs this small relay itself, on
127.0.0.1: the node dials the coordinator through it, and since every call to the node rides
that one multiplexed connection, every byte between them passes it. Each direction holds each
chunk read until ``delay ± jitter`` after it arrived, in order (a later chunk never overtakes
an earlier one), without holding up the reading: a delayed link, not a slower one. With
``rate_bps`` each direction sends at most that many bytes a second (paced in 4 KiB slices);
with ``loss`` a share of the chunks is held one retransmission timeout longer, which is what
a lost segment costs a TCP connection (the bytes themselves are never dropped: the stream
above would break, not retry). With ``reset_share`` the relay instead resets the whole
connection on that share of the chunks it reads once the connection is ``reset_grace_s``
old (both sides closed with ``SO_LINGER`` 0, so each gets a TCP RST): what a middlebox
dropping the flow does; the node dials again.

On a machine that allows it the relay listens on the root side of a veth pair whose other
end is the node's network namespace (``control/netns.py``), else on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass

CHUNK_BYTES = 65_536
#: Pacing granularity of a rate-limited link.
SLICE_BYTES = 4096
#: Linux's minimum TCP retransmission timeout: what one lost segment costs at least.
DEFAULT_RTO_S = 0.2
#: A connection younger than this is never reset: each one gets to finish its handshakes
#: and carry work, so resets do not cascade (a fresh libp2p connection is busy).
RESET_GRACE_S = 1.0


@dataclass
class RelayStats:
    connections: int = 0
    chunks: int = 0
    bytes: int = 0
    #: Chunks held a retransmission timeout longer (``loss``).
    lost: int = 0
    #: Connections reset (``reset_share``).
    resets: int = 0


class LinkRelay:
    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        delay_s: float = 0.0,
        jitter_s: float = 0.0,
        rate_bps: float | None = None,
        loss: float = 0.0,
        rto_s: float = DEFAULT_RTO_S,
        reset_share: float = 0.0,
        reset_grace_s: float = RESET_GRACE_S,
    ) -> None:
        self._upstream = (upstream_host, upstream_port)
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.rate_bps = rate_bps
        self.loss = loss
        self.rto_s = rto_s
        self.reset_share = reset_share
        self.reset_grace_s = reset_grace_s
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
        pair = (writer, up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._direction(source, sink, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _release_after(self) -> float:
        jitter = self._random.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0
        held = max(0.0, self.delay_s + jitter)
        if self.loss and self._random.random() < self.loss:
            self.stats.lost += 1
            held += self.rto_s
        return held

    def _reset(self, pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        """Close both sides of a connection at once with a TCP RST (``SO_LINGER`` 0)."""
        self.stats.resets += 1
        for writer in pair:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    async def _direction(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(held, sink))
        resettable_at = time.monotonic() + self.reset_grace_s
        try:
            last = 0.0
            while data := await source.read(CHUNK_BYTES):
                if (
                    self.reset_share
                    and time.monotonic() >= resettable_at
                    and self._random.random() < self.reset_share
                ):
                    self._reset(pair)
                    return
                last = max(last, time.monotonic() + self._release_after())  # kept in order
                held.put_nowait((last, data))
            held.put_nowait((last, b""))  # end of stream, after what is held
            await sender
        except (ConnectionError, OSError, RuntimeError):
            pass  # either end went away (or was reset, its transport closed): so does the link
        finally:
            sender.cancel()
            with contextlib.suppress(Exception):
                sink.close()

    async def _send(
        self, held: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter
    ) -> None:
        free_at = 0.0  # when a rate-limited link has sent what it was given
        while True:
            release_at, data = await held.get()
            wait = release_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                return
            if self.rate_bps:
                for start in range(0, len(data), SLICE_BYTES):
                    piece = data[start : start + SLICE_BYTES]
                    free_at = max(free_at, time.monotonic()) + len(piece) / self.rate_bps
                    sink.write(piece)
                    await sink.drain()
                    await asyncio.sleep(max(0.0, free_at - time.monotonic()))
            else:
                sink.write(data)
                await sink.drain()
            self.stats.chunks += 1
            self.stats.bytes += len(data)
