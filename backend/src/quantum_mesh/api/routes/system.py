"""Health, readiness and the mesh bootstrap record."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from quantum_mesh.api.deps import CoordinatorDep

router = APIRouter(tags=["system"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
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
