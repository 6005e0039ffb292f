"""Refuses a new job with 429 before its request is read while the work queue is full.

Under overload most submits are refused; answering them from the route meant reading the
body, parsing and validating it and resolving the route's dependencies first — the API loop's
time that the accepted jobs needed (measured at 200 offered submits/s: a quarter of the loop's
time went to requests, most of them refusals). Here the refusal costs a header scan. The route
still checks admission itself (a burst admitted together), and a request with an
Idempotency-Key always reaches it, since a replay of an accepted job is answered even when
full. A refused request's body is not validated: while the queue is full, a malformed submit
gets 429 too, and its 400/422 once it is retried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from quantum_mesh.api.errors import error_response
from quantum_mesh.errors import Overloaded

#: Raises ``Overloaded`` when no new job may be accepted now.
Admit = Callable[[], None]

#: ``openapi_extra`` of a route that creates a job: the middleware guards exactly the routes
#: marked so (``job_creating_paths``), and the OpenAPI schema says which they are.
_CREATES_JOB_KEY = "x-qmesh-creates-job"
CREATES_JOB: dict[str, Any] = {_CREATES_JOB_KEY: True}


def job_creating_paths(openapi: dict[str, Any]) -> tuple[str, ...]:
    """The paths whose POST operation is marked with :data:`CREATES_JOB`, read from the app's
    OpenAPI schema (the one public list of its routes, included routers and all)."""
    return tuple(
        path
        for path, operations in openapi.get("paths", {}).items()
        if operations.get("post", {}).get(_CREATES_JOB_KEY) is True
    )


_IDEMPOTENCY_HEADER = b"idempotency-key"


class AdmissionMiddleware:
    """Pure ASGI, inside the security middleware: only authenticated callers are answered.

    ``admit`` is looked up per request (``None`` until the coordinator has started)."""

    def __init__(
        self, app: ASGIApp, *, submit_paths: Iterable[str], admit: Callable[[], Admit | None]
    ) -> None:
        self.app = app
        self.submit_paths = frozenset(submit_paths)
        self.admit = admit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and scope.get("path") in self.submit_paths
            and not any(name == _IDEMPOTENCY_HEADER for name, _ in scope.get("headers", ()))
        ):
            admit = self.admit()
            if admit is not None:
                try:
                    admit()
                except Overloaded as exc:
                    refusal = error_response(
                        429,
                        exc.code,
                        exc.message,
                        exc.details,
                        headers={"Retry-After": str(exc.retry_after_s)},
                    )
                    await refusal(scope, receive, send)
                    return
        await self.app(scope, receive, send)
