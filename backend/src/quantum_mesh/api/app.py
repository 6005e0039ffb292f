"""FastAPI application factory: routers, error envelope, security, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline

from quantum_mesh import __version__
from quantum_mesh.api.admission import AdmissionMiddleware, Admit, job_creating_paths
from quantum_mesh.api.errors import install_error_handlers
from quantum_mesh.api.front.forwarding import API_PREFIX, INTAKE_PATH, ClientFromFront
from quantum_mesh.api.routes import (
    auth,
    circuits,
    discovery,
    enrollment,
    finance,
    intake,
    jobs,
    plans,
    reservations,
    system,
    workflows,
)
from quantum_mesh.api.security import Directory, SecurityMiddleware, WsTokens, bind_decision
from quantum_mesh.config import Settings, get_settings
from quantum_mesh.control.coordinator import Coordinator
from quantum_mesh.control.principals import sync_principals
from quantum_mesh.logs import get_logger
from quantum_mesh.observability.metrics import metrics_router
from quantum_mesh.schemas.common import ErrorEnvelope

log = get_logger(__name__)


def create_app(settings: Settings | None = None, *, behind_front: bool = False) -> FastAPI:
    """The API and the job runtime in one app. ``behind_front``: the runtime process of a
    split coordinator (``QMESH_API_FRONT``): it also takes over jobs the front accepted, and
    it learns each client's address from the front (docs/operations.md, "The API front")."""
    settings = settings or get_settings()
    directory = Directory.from_settings(settings)
    tokens = WsTokens(ttl_s=settings.ws_token_ttl_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        coordinator = Coordinator(settings)
        app.state.coordinator = coordinator
        await coordinator.start()
        try:
            counts = await sync_principals(coordinator.db, directory.records())
            _log_auth(settings, directory, counts)
            yield
        finally:
            await coordinator.stop()

    # Swagger UI and ReDoc from the installed fastapi-offline package, not a CDN: /docs works
    # on a machine without internet access.
    app = FastAPIOffline(title="quantum-mesh", version=__version__, lifespan=lifespan)
    app.state.ws_tokens = tokens
    app.state.principals = directory
    install_error_handlers(app)
    for module in (
        system,
        auth,
        circuits,
        jobs,
        plans,
        discovery,
        enrollment,
        reservations,
        workflows,
        finance,
    ):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(system.router)  # /health and /ready also at the root for probes
    app.include_router(metrics_router)
    open_paths = settings.open_path_set
    if behind_front:
        app.include_router(intake.router)
        open_paths = open_paths | {INTAKE_PATH}

    def admission() -> Admit | None:
        coordinator: Coordinator | None = getattr(app.state, "coordinator", None)
        return None if coordinator is None else partial(coordinator.jobs.admit, None)

    app.add_middleware(
        AdmissionMiddleware,  # type: ignore[arg-type]
        # Read from a schema of its own: app.openapi() caches the schema before its error
        # envelope is added below.
        submit_paths=job_creating_paths(
            get_openapi(title=app.title, version=app.version, routes=app.routes)
        ),
        admit=admission,
    )
    app.add_middleware(
        SecurityMiddleware,  # type: ignore[arg-type]
        directory=directory,
        tokens=tokens,
        open_paths=open_paths,
        max_body_bytes=settings.max_request_bytes,
        rate_per_minute=settings.rate_limit_per_minute,
        auth_failures_per_minute=settings.auth_failures_per_minute,
        loopback_only=not settings.auth_enabled and not settings.allow_unauthenticated_bind,
    )
    if behind_front:
        app.add_middleware(ClientFromFront)  # type: ignore[arg-type]
    _document_auth(app)
    return app


def _log_auth(settings: Settings, directory: Directory, counts: dict[str, int]) -> None:
    if not directory.enabled:
        _host, note = bind_decision(settings)
        log.warning("api.no_auth", message=note)
        return
    roles = [p.role for p in directory.principals()]
    log.info(
        "api.auth",
        admins=roles.count("admin"),
        users=roles.count("user"),
        keys=counts["keys"],
        inactive_principals=counts["inactive"],
        open_paths=sorted(settings.open_path_set),
    )


def _document_auth(app: FastAPI) -> None:
    """Declare the key in the OpenAPI document, so /docs offers "Authorize"."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
            _document_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


#: The error answers any endpoint may give, all in the error envelope (docs/api.md).
ERROR_RESPONSES: dict[str, str] = {
    "400": "malformed input the service cannot read (an invalid circuit, a bad query value)",
    "401": "missing or wrong API key (keys configured)",
    "403": "the key's principal may not do this, or the resource is another principal's",
    "404": "no such resource",
    "409": "the resource is in a state that forbids this (e.g. cancelling a finished job)",
    "413": "request body over QMESH_MAX_REQUEST_BYTES",
    "422": "a parameter or field out of its bounds, or an unknown parameter; "
    "details name the field",
    "429": "rate limit, quota or full work queue; Retry-After says when to come back",
    "503": "a part the answer needs is unavailable now (no usable node for a reservation or a "
    "plan: no_capacity; the document store: document_store_unavailable); retry later",
}


def _document_errors(schema: dict[str, Any]) -> None:
    """Every operation documents the error envelope for every 4xx and for 503, instead of
    FastAPI's own 422 body (which this service never sends)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    envelope = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(envelope.pop("$defs", {}))
    components["ErrorEnvelope"] = envelope
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, description in ERROR_RESPONSES.items():
                if status == "503" and status in responses:
                    continue  # a route's own 503 answer (/ready names the failing parts)
                responses[status] = {"description": description, "content": content}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
