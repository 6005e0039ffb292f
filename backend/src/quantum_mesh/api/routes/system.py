"""Health, readiness and the mesh bootstrap record."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from quantum_mesh.api.deps import CoordinatorDep

router = APIRouter(tags=["system"])


#: What ``GET /`` points to, by name: each link's path and the method to use on it.
SERVICE_LINKS: dict[str, dict[str, str]] = {
    "health": {"href": "/api/v1/health", "method": "GET"},
    "ready": {"href": "/api/v1/ready", "method": "GET"},
    "docs": {"href": "/docs", "method": "GET"},
    "openapi": {"href": "/openapi.json", "method": "GET"},
    "metrics": {"href": "/metrics", "method": "GET"},
    "bootstrap": {"href": "/api/v1/bootstrap/libp2p", "method": "GET"},
    "runtime": {"href": "/api/v1/bootstrap/libp2p/runtime", "method": "GET"},
    "peers": {"href": "/api/v1/discovery/peers", "method": "GET"},
    "topology": {"href": "/api/v1/discovery/topology", "method": "GET"},
    "services": {"href": "/api/v1/services", "method": "GET"},
    "enrollment": {"href": "/api/v1/enrollment/peers", "method": "GET"},
    "submit_circuit": {"href": "/api/v1/circuits/submit", "method": "POST"},
    "jobs": {"href": "/api/v1/jobs", "method": "GET"},
    "reservations": {"href": "/api/v1/reservations", "method": "POST"},
    "workflow_runs": {"href": "/api/v1/workflows/runs", "method": "GET"},
    "benchmarks": {"href": "/api/v1/workflows/benchmarks", "method": "GET"},
    "finance": {"href": "/api/v1/finance", "method": "GET"},
}


@router.get("/")
async def index(coord: CoordinatorDep) -> dict[str, Any]:
    """Where everything is: the service's name and version, and links to its endpoints."""
    return {
        "service": "quantum-mesh",
        "version": version("quantum-mesh"),
        "peer_id": coord.mesh.peer_id,
        "links": SERVICE_LINKS,
    }


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={503: {"description": "not ready or degraded: the failing parts are named"}},
)
async def ready(coord: CoordinatorDep) -> JSONResponse:
    parts: dict[str, Any] = {}
    try:
        async with coord.db.transaction() as session:
            await session.execute(text("SELECT 1"))
        parts["database"] = "up"
    except Exception as exc:
        parts["database"] = f"down: {type(exc).__name__}"
    parts["mesh"] = "up" if coord.mesh_up else "down"
    parts["document_store"] = coord.document_store_status()
    nodes = _node_counts(coord)
    wanted = coord.settings.min_ready_nodes
    parts["nodes"] = (
        f"up: {nodes['usable']} usable"
        if nodes["usable"] >= wanted
        else f"down: {nodes['usable']} usable of {wanted} needed (QMESH_MIN_READY_NODES)"
    )
    failing = [k for k, v in parts.items() if not str(v).startswith(("up", "disabled"))]
    body = {
        "status": "ready" if not failing else "degraded",
        "parts": parts,
        "failing": failing,
        "usable_nodes": nodes["usable"],
        "nodes": {**nodes, "min_ready": wanted},
    }
    return JSONResponse(status_code=200 if not failing else 503, content=body)


def _node_counts(coord: Any) -> dict[str, int]:
    """Nodes the coordinator knows, by whether work can be placed on them now."""
    known = coord.registry.snapshot()
    usable = {v.peer_id for v in coord.registry.usable_snapshot()}
    fresh = sum(1 for v in known if v.fresh)
    return {
        "known": len(known),
        "fresh": fresh,
        "stale": len(known) - fresh,
        "usable": len(usable),
        "untrusted": sum(1 for v in known if v.fresh and v.peer_id not in usable),
    }


@router.get("/bootstrap/libp2p/runtime")
async def runtime(coord: CoordinatorDep) -> dict[str, Any]:
    """The coordinator's libp2p host right now: connections, channels and calls in flight,
    inbound calls and refusals, and the advert topic's pubsub mesh."""
    return coord.mesh.runtime_state()


@router.get("/bootstrap/libp2p")
async def bootstrap(coord: CoordinatorDep) -> dict[str, Any]:
    return {
        "peer_id": coord.mesh.peer_id,
        "listen_addrs": coord.mesh.listen_addrs,
        "advert_topic": coord.mesh.advert_topic,
        "protocols": coord.mesh.protocols,
        "require_enrollment": coord.settings.require_enrollment,
        # Adverts accepted and dropped by reason (malformed, oversized, stale, peer_mismatch).
        "advert_stats": dict(coord.mesh.advert_stats),
    }
