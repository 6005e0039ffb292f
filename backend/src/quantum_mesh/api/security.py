"""Authentication (API keys of principals, WebSocket tokens), failed-attempt limits, request
size limits and per-principal rate limits: pure ASGI middleware, so it also covers WebSocket
handshakes and runs before any body is read. See docs/security.md, "Authentication" and
"Principals, roles and quotas"."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from quantum_mesh.config import PrincipalSpec, Settings
from quantum_mesh.control.principals import PrincipalRecord

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Where the middleware leaves the authenticated :class:`Principal` in the ASGI scope.
PRINCIPAL_SCOPE_KEY = "qmesh.principal"
#: The principal of every request when no key is configured (loopback only).
LOCAL_PRINCIPAL = "local"
ADMIN, USER = "admin", "user"
#: WebSocket subprotocols: a browser offers ``[WS_SUBPROTOCOL, "bearer.<token>"]``.
WS_SUBPROTOCOL = "qmesh"
BEARER_SUBPROTOCOL = "bearer."
#: WebSocket close codes of a refused handshake: 4000 + the HTTP status.
WS_CLOSE_UNAUTHORIZED, WS_CLOSE_FORBIDDEN, WS_CLOSE_RATE_LIMITED = 4401, 4403, 4429
#: Most clients (keys or addresses) whose buckets are kept; full buckets are dropped first.
MAX_TRACKED = 100_000


@dataclass(frozen=True)
class Principal:
    """Who made a request: its name (the ``owner`` of what it creates), role and quotas
    (``None``: no limit)."""

    name: str
    role: str
    max_active_jobs: int | None = None
    max_active_reservations: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


def presented_key(headers: dict[str, str]) -> str | None:
    """The API key a request presents (``Authorization: Bearer`` or ``X-API-Key``), from its
    lower-cased headers."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key")


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _limit(value: int | None) -> int | None:
    return value or None  # 0 means no limit


class Directory:
    """The configured principals, by the SHA-256 digest of each key (keys are not kept)."""

    def __init__(self, specs: Iterable[PrincipalSpec], settings: Settings) -> None:
        self._by_digest: dict[bytes, Principal] = {}
        self._by_name: dict[str, Principal] = {}
        self._digests: dict[str, tuple[bytes, ...]] = {}
        for spec in specs:
            jobs = spec.max_active_jobs
            if jobs is None:
                jobs = settings.quota_active_jobs if spec.role == USER else 0
            reservations = spec.max_active_reservations
            if reservations is None:
                reservations = settings.quota_active_reservations
            principal = Principal(spec.name, spec.role, _limit(jobs), _limit(reservations))
            self._by_name[spec.name] = principal
            self._digests[spec.name] = tuple(key_digest(k) for k in spec.keys)
            for digest in self._digests[spec.name]:
                self._by_digest[digest] = principal
        #: Everyone is this admin when no key is configured.
        self.local = Principal(
            LOCAL_PRINCIPAL, ADMIN, None, _limit(settings.quota_active_reservations)
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Directory:
        return cls(settings.principal_specs(), settings)

    @property
    def enabled(self) -> bool:
        """True when at least one key is configured (authentication is on)."""
        return bool(self._by_digest)

    def by_key(self, key: str) -> Principal | None:
        return self._by_digest.get(key_digest(key))

    def by_name(self, name: str) -> Principal | None:
        if not self.enabled:
            return self.local if name == LOCAL_PRINCIPAL else None
        return self._by_name.get(name)

    def principals(self) -> list[Principal]:
        return list(self._by_name.values()) if self.enabled else [self.local]

    def records(self) -> list[PrincipalRecord]:
        """What the ``principals`` and ``api_keys`` tables hold (digests, never keys)."""
        return [
            PrincipalRecord(
                name=p.name,
                role=p.role,
                key_sha256=tuple(d.hex() for d in self._digests.get(p.name, ())),
                max_active_jobs=p.max_active_jobs,
                max_active_reservations=p.max_active_reservations,
            )
            for p in self.principals()
        ]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class WsTokens:
    """Short-lived WebSocket tokens: ``<payload>.<HMAC-SHA256>``, base64url, bound to one
    principal. The secret is random per process, so a restart invalidates every token."""

    def __init__(self, *, secret: bytes | None = None, ttl_s: float = 60.0) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self.ttl_s = ttl_s

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, principal: str, *, now: float | None = None) -> tuple[str, float]:
        """A token for ``principal`` and the time (Unix seconds) it expires."""
        expires_at = round((time.time() if now is None else now) + self.ttl_s, 3)
        body = {"sub": principal, "exp": expires_at, "typ": "ws"}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}", expires_at

    def verify(self, token: str, *, now: float | None = None) -> str | None:
        """The principal's name when ``token`` is ours and unexpired, else None."""
        payload, _, signature = token.partition(".")
        if not payload or not signature:
            return None
        # Bytes: compare_digest refuses non-ASCII str, and a query string may carry any.
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        try:
            body = json.loads(_unb64(payload))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(body, dict) or body.get("typ") != "ws":
            return None
        expires_at, name = body.get("exp"), body.get("sub")
        if not isinstance(expires_at, int | float) or not isinstance(name, str):
            return None
        return name if (time.time() if now is None else now) < expires_at else None


def _text(raw: bytes) -> str:
    """A header as text: UTF-8 when it is, else Latin-1 (never raises on odd bytes)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@functools.lru_cache(maxsize=1024)  # every request asks, for a handful of client addresses
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def bind_decision(settings: Settings) -> tuple[str, str | None]:
    """The HTTP bind address, and the start-up line to print when no key is configured."""
    host = settings.host
    if settings.auth_enabled:
        return host, None
    if is_loopback(host):
        return host, (
            f"No API keys configured: the API listens on loopback only ({host}) and every "
            "local caller is admin. Set QMESH_API_KEYS or QMESH_PRINCIPALS to serve other hosts."
        )
    if settings.allow_unauthenticated_bind:
        return host, (
            f"No API keys configured and QMESH_ALLOW_UNAUTHENTICATED_BIND=true: the API "
            f"listens on {host} and every client that reaches it is admin."
        )
    return "127.0.0.1", (
        f"No API keys configured: QMESH_HOST={host} is overridden and the API listens on "
        "127.0.0.1 only (every local caller is admin). Set QMESH_API_KEYS or "
        "QMESH_PRINCIPALS to serve other hosts (or QMESH_ALLOW_UNAUTHENTICATED_BIND=true "
        "on a network you trust)."
    )


def select_subprotocol(scope: Scope) -> str | None:
    """The subprotocol to accept a WebSocket with: ``qmesh`` when offered, else the offered
    ``bearer.<token>`` (a browser refuses a handshake that selects none of its offers)."""
    offered = [str(p) for p in scope.get("subprotocols") or []]
    if WS_SUBPROTOCOL in offered:
        return WS_SUBPROTOCOL
    return next((p for p in offered if p.startswith(BEARER_SUBPROTOCOL)), None)


class TokenBucket:
    """Per-client token bucket: ``rate_per_minute`` sustained, the same as burst."""

    def __init__(self, rate_per_minute: int) -> None:
        self.capacity = float(rate_per_minute)
        self.refill_per_s = rate_per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - last) * self.refill_per_s)

    def peek(self, key: str) -> float:
        """0 when a token is available, else seconds until one is (nothing is taken)."""
        tokens = self._level(key, time.monotonic())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.refill_per_s

    def take(self, key: str) -> float:
        """Returns 0 when allowed, else seconds until a token is available."""
        now = time.monotonic()
        tokens = self._level(key, now)
        if len(self._buckets) >= MAX_TRACKED and key not in self._buckets:
            self._prune(now)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.refill_per_s

    def _prune(self, now: float) -> None:
        full = [k for k in self._buckets if self._level(k, now) >= self.capacity]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= MAX_TRACKED:  # every bucket in use: forget the oldest half
            by_age = sorted(self._buckets, key=lambda k: self._buckets[k][1])
            for k in by_age[: len(by_age) // 2]:
                del self._buckets[k]


@dataclass(frozen=True)
class _Refusal:
    status: int
    code: str
    message: str
    headers: dict[str, str]
    details: dict[str, Any]


class SecurityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        directory: Directory,
        tokens: WsTokens,
        open_paths: Iterable[str],
        max_body_bytes: int,
        rate_per_minute: int,
        auth_failures_per_minute: int,
        loopback_only: bool,
    ) -> None:
        self.app = app
        self.directory = directory
        self.tokens = tokens
        self.open_paths = frozenset(open_paths)
        self.max_body_bytes = max_body_bytes
        self.bucket = TokenBucket(rate_per_minute) if rate_per_minute > 0 else None
        self.failures = (
            TokenBucket(auth_failures_per_minute) if auth_failures_per_minute > 0 else None
        )
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {_text(k).lower(): _text(v) for k, v in scope.get("headers", [])}
        address = str(scope["client"][0]) if scope.get("client") else None
        if path not in self.open_paths:
            principal_or_refusal = self._authenticate(scope, headers, address)
            if isinstance(principal_or_refusal, _Refusal):
                await self._refuse(scope, receive, send, principal_or_refusal)
                return
            principal = principal_or_refusal
            scope[PRINCIPAL_SCOPE_KEY] = principal
            identity = principal.name if self.directory.enabled else (address or "anonymous")
            if self.bucket is not None:
                wait = self.bucket.take(identity)
                if wait > 0:
                    refusal = _Refusal(
                        429,
                        "rate_limited",
                        "Too many requests",
                        {"Retry-After": str(max(1, math.ceil(wait)))},
                        {},
                    )
                    await self._refuse(scope, receive, send, refusal)
                    return
        if scope["type"] == "http":
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            receive = self._limited(receive)
        try:
            await self.app(scope, receive, send)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send)

    # --- authentication --------------------------------------------------------------------
    def _authenticate(
        self, scope: Scope, headers: dict[str, str], address: str | None
    ) -> Principal | _Refusal:
        if not self.directory.enabled:
            if self.loopback_only and address is not None and not is_loopback(address):
                return _Refusal(
                    403,
                    "forbidden",
                    "No API keys are configured: this coordinator serves loopback clients only",
                    {},
                    {},
                )
            return self.directory.local
        key = presented_key(headers)
        token = self._presented_token(scope) if key is None else None
        if key is None and token is None:
            return self._unauthorized()
        if self.failures is not None and address is not None:
            wait = self.failures.peek(address)
            if wait > 0:
                # Locked out: nothing from this address is checked, so a guess that happens
                # to be right learns nothing until the lock-out ends.
                return _Refusal(
                    429,
                    "rate_limited",
                    "Too many failed authentication attempts from this address; retry later",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                    {"reason": "failed_auth", "retry_after_s": max(1, math.ceil(wait))},
                )
        principal: Principal | None = None
        if key is not None:
            principal = self.directory.by_key(key)
        elif token is not None:
            name = self.tokens.verify(token)
            principal = self.directory.by_name(name) if name is not None else None
        if principal is None:
            if self.failures is not None and address is not None:
                self.failures.take(address)
            return self._unauthorized()
        return principal

    @staticmethod
    def _unauthorized() -> _Refusal:
        return _Refusal(
            401,
            "unauthorized",
            "Missing or invalid API key (Authorization: Bearer <key> or X-API-Key)",
            {"WWW-Authenticate": "Bearer"},
            {},
        )

    @staticmethod
    def _presented_token(scope: Scope) -> str | None:
        """A WebSocket token: ``?token=`` or the ``bearer.<token>`` subprotocol (handshakes
        only: a token is no key for HTTP)."""
        if scope["type"] != "websocket":
            return None
        query = parse_qs(scope.get("query_string", b"").decode(errors="replace"))
        if query.get("token"):
            return query["token"][0]
        for offered in scope.get("subprotocols") or []:
            if str(offered).startswith(BEARER_SUBPROTOCOL):
                return str(offered)[len(BEARER_SUBPROTOCOL) :]
        return None

    # --- bodies ----------------------------------------------------------------------------
    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"Request body exceeds {self.max_body_bytes} bytes"
        await self._refuse(
            scope, receive, send, _Refusal(413, "payload_too_large", message, {}, {})
        )

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

    # --- answers -----------------------------------------------------------------------------
    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, refusal: _Refusal) -> None:
        envelope = {
            "error": {"code": refusal.code, "message": refusal.message, "details": refusal.details}
        }
        if scope["type"] == "websocket":
            # Accept, then close with 4000 + status: a handshake refused over HTTP (403)
            # carries no code, and browsers show no reason for it at all.
            message = await receive()
            if message.get("type") != "websocket.connect":
                return
            accept: dict[str, Any] = {"type": "websocket.accept"}
            subprotocol = select_subprotocol(scope)
            if subprotocol is not None:
                accept["subprotocol"] = subprotocol
            await send(accept)
            await send({"type": "websocket.send", "text": json.dumps(envelope)})
            reason = refusal.message.encode()[:120].decode(errors="ignore")
            await send({"type": "websocket.close", "code": 4000 + refusal.status, "reason": reason})
            return
        body = json.dumps(envelope).encode()
        raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in refusal.headers.items()]
        await send(
            {"type": "http.response.start", "status": refusal.status, "headers": raw_headers}
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
