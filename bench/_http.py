"""A lean HTTP/1.1 client for the load generator: keep-alive connections, httptools parsing.

The generator shares the machine with the service it measures. httpx (pure-Python h11, a
pool walked on every request) cost the generator ~35 % of one core at 200 submits/s on the
2-core machine, CPU the service then lacked, and its own lag counted against the service's
latency. Requests here are pre-encoded bytes on a pool of keep-alive connections and the
responses are parsed by httptools (llhttp, the parser uvicorn itself uses): a few percent of
a core for the same load.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools


class TransportError(Exception):
    """The connection failed or the response could not be parsed."""


@dataclass(frozen=True)
class Response:
    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.waiter: asyncio.Future[Response] | None = None
        self.reusable = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(TransportError(f"bad response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail(TransportError(f"connection lost: {exc or 'closed by the server'}"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        response = Response(self.parser.get_status_code(), b"".join(self.body))
        self.body = []
        if not self.parser.should_keep_alive():
            self.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(response)

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def request(self, raw: bytes) -> Response:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class LeanPool:
    """``post(path, json=...)`` on at most ``connections`` keep-alive connections to one
    server (``base_url`` such as ``http://127.0.0.1:8000/api/v1``)."""

    def __init__(self, base_url: str, connections: int) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.slots = asyncio.Semaphore(max(1, connections))
        self.idle: list[_Connection] = []
        self.opened: set[_Connection] = set()

    async def post(self, path: str, *, json: Any) -> Response:
        body = _dumps(json)
        raw = (
            f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        async with self.slots:
            conn = self.idle.pop() if self.idle else await self._connect()
            try:
                response = await conn.request(raw)
            except BaseException:
                # A timeout or a failure leaves the connection mid-response: never reuse it.
                conn.close()
                self.opened.discard(conn)
                raise
            if conn.reusable:
                self.idle.append(conn)
            else:
                self.opened.discard(conn)
            return response

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise TransportError(f"connect failed: {exc}") from exc
        self.opened.add(conn)
        return conn

    async def __aenter__(self) -> LeanPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.opened:
            conn.close()
        self.opened.clear()
        self.idle.clear()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
