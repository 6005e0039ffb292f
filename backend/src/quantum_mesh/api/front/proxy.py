"""Forwards requests and WebSockets from the front to the runtime over its Unix socket.

Bodies stream both ways, so an artifact download or a large submit is never held whole in
the front. Before forwarding, a request waits until every job the front had answered 202 is
with the runtime, so a client that reads its job right after submitting finds it (at most
``ORDER_WAIT_S``); only the readiness and metrics paths skip that wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
from starlette.types import Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from quantum_mesh.api.errors import error_response
from quantum_mesh.api.front.forwarding import API_PREFIX, INTERNAL_PREFIX, forwarded_headers
from quantum_mesh.api.front.handover import Handover
from quantum_mesh.logs import get_logger

log = get_logger(__name__)

#: Paths answered without waiting for the hand-over (they read no job).
UNORDERED_PATHS = frozenset({"/ready", "/metrics", f"{API_PREFIX}/ready"})
#: Longest wait for the hand-over before a request is forwarded anyway.
ORDER_WAIT_S = 30.0
#: Seconds to open a connection to the runtime.
CONNECT_TIMEOUT_S = 10.0
#: Headers of a WebSocket handshake that the client library sets itself.
_HANDSHAKE_HEADERS = frozenset(
    {
        b"host",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)
#: WebSocket close code for "the server could not serve this" (RFC 6455 7.4.1).
_WS_INTERNAL_ERROR = 1011


class RuntimeProxy:
    def __init__(
        self, socket_path: str, handover: Handover, accepted_seq: Callable[[], int]
    ) -> None:
        self.socket_path = socket_path
        self.handover = handover
        #: The seq of the last job answered 202.
        self.accepted_seq = accepted_seq
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            base_url="http://runtime",
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _in_order(self, scope: Scope) -> None:
        if scope["path"] in UNORDERED_PATHS:
            return
        try:
            await asyncio.wait_for(self.handover.caught_up(self.accepted_seq()), ORDER_WAIT_S)
        except TimeoutError:
            # A runtime this far behind is failing anyway (``/health`` says so from 10 s
            # on): forward, rather than hold every request for as long as it lasts.
            log.warning("front.forwarded_before_hand_over", path=scope["path"])

    # --- HTTP ---------------------------------------------------------------------------
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward one HTTP request, its body streamed."""
        if scope["path"].startswith(INTERNAL_PREFIX):
            await error_response(404, "not_found", "Not Found")(scope, receive, send)
            return
        await self._in_order(scope)
        target = _target(scope)
        request = self.client.build_request(
            scope["method"],
            target,
            headers=forwarded_headers(scope["headers"], scope.get("client")),
            content=_request_body(receive),
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            log.warning("front.runtime_unreachable", path=scope["path"], error=str(exc))
            refusal = error_response(
                503,
                "unavailable",
                "The coordinator's job runtime is not answering; retry shortly",
                {"reason": "runtime_unreachable"},
                headers={"Retry-After": "1"},
            )
            await refusal(scope, receive, send)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": forwarded_headers(response.headers.raw, None),
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    # --- WebSocket ----------------------------------------------------------------------
    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Open the same WebSocket on the runtime, then relay frames both ways until either
        side closes. A handshake the runtime refuses is refused here too (HTTP 403)."""
        if (await receive())["type"] != "websocket.connect":
            return
        await self._in_order(scope)
        target = _target(scope)
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in forwarded_headers(
                scope["headers"], scope.get("client"), drop=_HANDSHAKE_HEADERS
            )
        ]
        try:
            upstream = await unix_connect(
                self.socket_path,
                uri="ws://runtime" + target,
                additional_headers=headers,
                subprotocols=scope.get("subprotocols") or None,
                open_timeout=CONNECT_TIMEOUT_S,
                max_size=None,
                compression=None,
                ping_interval=None,
            )
        except InvalidStatus:
            await send({"type": "websocket.close", "code": 1008})
            return
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            log.warning("front.runtime_unreachable", path=scope["path"], error=str(exc))
            await send({"type": "websocket.close", "code": _WS_INTERNAL_ERROR})
            return
        async with upstream:
            await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
            await _relay(upstream, receive, send)


async def _relay(upstream: ClientConnection, receive: Receive, send: Send) -> None:
    async def client_to_runtime() -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close(message.get("code", 1000))
                return
            if message.get("text") is not None:
                await upstream.send(message["text"])
            elif message.get("bytes") is not None:
                await upstream.send(message["bytes"])

    async def runtime_to_client() -> None:
        try:
            async for frame in upstream:
                if isinstance(frame, str):
                    await send({"type": "websocket.send", "text": frame})
                else:
                    await send({"type": "websocket.send", "bytes": frame})
        except ConnectionClosed:
            pass
        await send(
            {
                "type": "websocket.close",
                "code": upstream.close_code or 1000,
                "reason": upstream.close_reason or "",
            }
        )

    tasks = [asyncio.create_task(client_to_runtime()), asyncio.create_task(runtime_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(
                asyncio.CancelledError, ConnectionClosed, OSError, RuntimeError
            ):
                await task


def _target(scope: Scope) -> str:
    """The request's path and query, as the client sent them."""
    target: bytes = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    return target.decode("latin-1")


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return
