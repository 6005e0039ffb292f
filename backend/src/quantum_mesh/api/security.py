"""API-key authentication, request size limits and per-key rate limiting (pure ASGI middleware,
so it also covers WebSocket handshakes and runs before any body is read)."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/api/v1/health", "/health", "/docs", "/openapi.json", "/metrics"})


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class TokenBucket:
    """Per-key token bucket: ``rate_per_minute`` sustained, the same as burst."""

    def __init__(self, rate_per_minute: int) -> None:
        self.capacity = float(rate_per_minute)
        self.refill_per_s = rate_per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """Returns 0 when allowed, else seconds until a token is available."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.refill_per_s)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.refill_per_s


class SecurityMiddleware:
    def __init__(
        self, app: ASGIApp, *, api_keys: list[str], max_body_bytes: int, rate_per_minute: int
    ) -> None:
        self.app = app
        # Only digests are kept; comparison is constant-time on the digests.
        self.key_digests = [_digest(k) for k in api_keys]
        self.max_body_bytes = max_body_bytes
        self.bucket = TokenBucket(rate_per_minute) if rate_per_minute > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        identity = "anonymous"
        if self.key_digests and path not in OPEN_PATHS:
            key = self._presented_key(headers)
            if key is None or not self._valid(key):
                await self._reject(
                    scope,
                    send,
                    401,
                    "unauthorized",
                    "Missing or invalid API key (Authorization: Bearer <key> or X-API-Key)",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
            identity = hashlib.sha256(key.encode()).hexdigest()[:16]
        elif scope.get("client"):
            identity = str(scope["client"][0])
        if self.bucket is not None and path not in OPEN_PATHS:
            wait = self.bucket.take(identity)
            if wait > 0:
                await self._reject(
                    scope,
                    send,
                    429,
                    "rate_limited",
                    "Too many requests",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
                return
        if scope["type"] == "http":
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await self._too_large(scope, send)
                return
            receive = self._limited(receive)
        try:
            await self.app(scope, receive, send)
        except _BodyTooLarge:
            await self._too_large(scope, send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        message = f"Request body exceeds {self.max_body_bytes} bytes"
        await self._reject(scope, send, 413, "payload_too_large", message)

    @staticmethod
    def _presented_key(headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return headers.get("x-api-key")

    def _valid(self, key: str) -> bool:
        presented = _digest(key)
        return any(hmac.compare_digest(presented, d) for d in self.key_digests)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body_bytes

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge
            return message

        return wrapped

    @staticmethod
    async def _reject(
        scope: Scope,
        send: Send,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4000 + status, "reason": message})
            return
        body = json.dumps({"error": {"code": code, "message": message, "details": {}}}).encode()
        raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
