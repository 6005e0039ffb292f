"""FastAPI application factory: routers, error envelope, security, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from quantum_mesh import __version__
from quantum_mesh.api.errors import install_error_handlers
from quantum_mesh.api.routes import (
    circuits,
    discovery,
    enrollment,
    finance,
    jobs,
    plans,
    reservations,
    system,
    workflows,
)
from quantum_mesh.api.security import SecurityMiddleware
from quantum_mesh.config import Settings, get_settings
from quantum_mesh.control.coordinator import Coordinator
from quantum_mesh.observability.metrics import metrics_router

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        coordinator = Coordinator(settings)
        app.state.coordinator = coordinator
        await coordinator.start()
        try:
            yield
        finally:
            await coordinator.stop()

    app = FastAPI(title="quantum-mesh", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    for module in (
        system,
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
    app.add_middleware(
        SecurityMiddleware,  # type: ignore[arg-type]
        api_keys=settings.api_key_list,
        max_body_bytes=settings.max_request_bytes,
        rate_per_minute=settings.rate_limit_per_minute,
    )
    return app
