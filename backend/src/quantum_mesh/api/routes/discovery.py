"""What the coordinator hears on the mesh: peers, services, topology, fidelity history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import func, select

from quantum_mesh.api.deps import CoordinatorDep, LimitQ, OffsetQ, page
from quantum_mesh.errors import NotFound, Unavailable
from quantum_mesh.store.tables import FidelitySample, FragmentExecution

router = APIRouter(tags=["discovery"])


@router.get("/discovery/peers")
async def list_peers(
    coord: CoordinatorDep, limit: LimitQ = 100, offset: OffsetQ = 0, fresh: bool | None = None
) -> dict[str, Any]:
    views = coord.registry.snapshot()
    if fresh is not None:
        views = [v for v in views if v.fresh == fresh]
    views.sort(key=lambda v: v.updated_at, reverse=True)
    return page([v.to_dict() for v in views[offset : offset + limit]], len(views), limit, offset)


@router.get("/discovery/peers/{peer_id}")
async def get_peer(peer_id: str, coord: CoordinatorDep) -> dict[str, Any]:
    view = coord.registry.view(peer_id)
    if view is None:
        raise NotFound(
            f"Peer {peer_id} has not been heard on the mesh", details={"peer_id": peer_id}
        )
    return view.to_dict()


@router.get("/discovery/topology")
@router.get("/discovery/network/topology")  # the reference architecture's name for it
async def topology(coord: CoordinatorDep) -> dict[str, Any]:
    """The latest topology projection (refreshed every few seconds from the registry: the
    coordinator's links with the latency of its calls, and the links between nodes with the
    round trips the nodes measure among themselves). While the document store is down, the
    live registry view is returned instead and ``source`` says so."""
    try:
        snapshot = await coord.docstore.read("latest_topology")
    except Unavailable:
        return {
            **coord.topology(),
            "source": "registry",
            "document_store": coord.document_store_status(),
        }
    if snapshot is None:
        return {**coord.topology(), "source": "registry"}
    return {**snapshot, "source": "projection"}


@router.get("/services")
async def list_services(
    coord: CoordinatorDep, limit: LimitQ = 100, offset: OffsetQ = 0
) -> dict[str, Any]:
    by_service: dict[str, list[str]] = {}
    for v in coord.registry.usable_snapshot():
        for s in v.services:
            by_service.setdefault(s, []).append(v.peer_id)
    items = [{"service_type": s, "peers": sorted(p)} for s, p in sorted(by_service.items())]
    return page(items[offset : offset + limit], len(items), limit, offset)


@router.get("/metrics/fidelity/{node_id}")
async def fidelity_history(
    node_id: str, coord: CoordinatorDep, limit: LimitQ = 200, offset: OffsetQ = 0
) -> dict[str, Any]:
    view = coord.registry.view(node_id)
    async with coord.db.transaction() as session:
        samples = await session.execute(
            select(FidelitySample)
            .where(FidelitySample.node_id == node_id)
            .order_by(FidelitySample.seq.desc())
            .limit(limit)
            .offset(offset)
        )
        executions = await session.execute(
            select(FragmentExecution)
            .where(FragmentExecution.node_id == node_id)
            .order_by(FragmentExecution.finished_at.desc())
            .limit(limit)
        )
        total = (
            await session.execute(
                select(func.count())
                .select_from(FidelitySample)
                .where(FidelitySample.node_id == node_id)
            )
        ).scalar_one()
        sample_rows = list(samples.scalars())
        exec_rows = list(executions.scalars())
    if view is None and not sample_rows and not exec_rows:
        raise NotFound(f"No fidelity history for node {node_id}", details={"node_id": node_id})
    observed: list[dict[str, Any]] = [
        {
            "at": r.finished_at.isoformat(),
            "job_id": r.job_id,
            "fragment_id": r.fragment_id,
            "observed": r.observed_fidelity,
        }
        for r in exec_rows
    ]
    return {
        "node_id": node_id,
        "advertised": view.fidelity if view else None,
        "observed_mean": (
            sum(o["observed"] for o in observed if o["observed"] is not None) / len(observed)
            if observed
            else None
        ),
        "items": [
            {"at": r.at.isoformat(), "advertised": r.advertised, "observed": r.observed}
            for r in sample_rows
        ],
        "observed_executions": observed,
        "total": int(total),
        "limit": limit,
        "offset": offset,
    }
