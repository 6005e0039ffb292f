"""Maps domain errors and framework errors to the contract's error envelope.

An unexpected exception is a 500 ``internal_error``: it is caught by :class:`CatchAll` just
inside the security middleware (so the server does not log it a second time), and its plain
traceback — no local variables, secrets masked (``logs.py``) — is rendered and written in a
worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quantum_mesh.errors import (
    Conflict,
    ExecutionFailed,
    Forbidden,
    InvalidCircuit,
    InvalidInput,
    NoCapacity,
    NotFound,
    Overloaded,
    QMeshError,
    Unavailable,
)
from quantum_mesh.logs import get_logger

log = get_logger(__name__)

#: Longest exception message carried in the ``api.unhandled`` event's ``error`` field.
MAX_ERROR_CHARS = 500

_STATUS: list[tuple[type[QMeshError], int]] = [
    (InvalidCircuit, 400),
    (InvalidInput, 422),
    (NotFound, 404),
    (Forbidden, 403),
    (Overloaded, 429),
    (Conflict, 409),
    (NoCapacity, 503),
    (Unavailable, 503),
    (ExecutionFailed, 502),
]
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "details": details or {}}},
        headers=dict(headers) if headers else None,
    )


def _status_for(exc: QMeshError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(QMeshError)
    async def _domain(_request: Request, exc: QMeshError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Overloaded) else None
        return error_response(_status_for(exc), exc.code, exc.message, exc.details, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        if any(e["type"] == "json_invalid" for e in errors):
            return error_response(
                400, "invalid_json", "Request body is not valid JSON", {"errors": errors}
            )
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return error_response(
            422, "validation_error", f"{where}: {first['msg']}", {"errors": errors}
        )

    @app.exception_handler(DataError)
    async def _unstorable(_request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request carried (PostgreSQL: a NUL character in
        # text, a number out of range): bad input, and nothing was written.
        return error_response(
            422,
            "invalid_input",
            "A value in the request cannot be stored (for example a NUL character in text)",
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Only what escapes CatchAll lands here (an error in an outer middleware).
        await log_unexpected(exc, request.scope)
        return internal_error()

    app.add_middleware(CatchAll)  # type: ignore[arg-type]


def internal_error() -> JSONResponse:
    return error_response(500, "internal_error", "Internal server error")


def _log_unexpected_now(exc: BaseException, method: str, path: str) -> None:
    message = str(exc)
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "…"
    log.error(
        "api.unhandled",
        method=method,
        path=path,
        error=f"{type(exc).__name__}: {message}",
        exc_info=exc,
    )


async def log_unexpected(exc: BaseException, scope: Scope) -> None:
    """Log an unexpected exception from a worker thread (rendering a traceback is slow)."""
    method, path = str(scope.get("method", "")), str(scope.get("path", ""))
    await asyncio.to_thread(_log_unexpected_now, exc, method, path)


class CatchAll:
    """Pure ASGI: an exception a route lets escape becomes the 500 envelope here, logged off
    the loop. Starlette's outermost error middleware would re-raise it after answering, and
    the server would then log its traceback again, on the loop."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started:  # too late for an error response: let the server close the stream
                raise
            await log_unexpected(exc, scope)
            await internal_error()(scope, receive, send)
