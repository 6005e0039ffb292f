"""What the front and the runtime behind it agree on: who the client is, and which headers
belong to one connection only."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

#: Where the API's routes live (``api/app.py``).
API_PREFIX = "/api/v1"
#: Where the runtime takes over jobs the front accepted (never forwarded from clients).
INTAKE_PATH = "/internal/intake"
#: Paths of the runtime that only the front may call.
INTERNAL_PREFIX = "/internal/"

#: The front passes the client's address to the runtime in this header ("host port").
CLIENT_HEADER = b"x-qmesh-client"

#: Headers of one hop (RFC 9110 7.6.1), never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def forwarded_headers(
    headers: Iterable[tuple[bytes, bytes]], client: Any, *, drop: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """A request's headers for the runtime: without hop-by-hop headers, ``drop`` or any
    client-sent :data:`CLIENT_HEADER`, with the front's own :data:`CLIENT_HEADER`."""
    kept = [
        (name, value)
        for name, value in headers
        if name not in HOP_BY_HOP and name not in drop and name != CLIENT_HEADER
    ]
    if client:
        kept.append((CLIENT_HEADER, f"{client[0]} {client[1]}".encode("latin-1")))
    return kept


class ClientFromFront:
    """Runtime side: the client of a forwarded request is the one the front names. Trusted
    because the runtime's socket lies in a directory only the coordinator's user can open."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            named = [value for name, value in scope["headers"] if name == CLIENT_HEADER]
            if named:
                host, _, port = named[-1].decode("latin-1").rpartition(" ")
                scope = {
                    **scope,
                    "client": (host, int(port) if port.isdigit() else 0),
                    "headers": [(n, v) for n, v in scope["headers"] if n != CLIENT_HEADER],
                }
        await self.app(scope, receive, send)
