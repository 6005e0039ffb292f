"""Job reads, cancellation and the live WebSocket stream."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from quantum_mesh.api.deps import (
    CoordinatorDep,
    LimitQ,
    OffsetQ,
    PrincipalDep,
    ensure_owner,
    may_see,
    owner_filter,
    page,
    principal_of,
)
from quantum_mesh.api.security import WS_CLOSE_FORBIDDEN, Principal, select_subprotocol
from quantum_mesh.control import repository as repo
from quantum_mesh.control.coordinator import Coordinator
from quantum_mesh.control.jobs import job_message, job_to_dict
from quantum_mesh.control.states import TERMINAL_JOB_STATES, JobStatus
from quantum_mesh.errors import NotFound
from quantum_mesh.schemas.jobs import JobOut
from quantum_mesh.store.tables import Job

router = APIRouter(tags=["jobs"])

WS_IDLE_PING_S = 15.0


async def owned_job(coord: Coordinator, principal: Principal, job_id: str) -> Job:
    """The job, when ``principal`` may see it (403 ``forbidden`` otherwise)."""
    job = await coord.jobs.get(job_id)
    ensure_owner(principal, job.owner, job_id=job_id)
    return job


def job_out(job: Job) -> dict[str, Any]:
    return {**job_to_dict(job), "owner": job.owner}


@router.get("/jobs")
async def list_jobs(
    coord: CoordinatorDep,
    principal: PrincipalDep,
    limit: LimitQ = 50,
    offset: OffsetQ = 0,
    kind: str | None = None,
) -> dict[str, Any]:
    """Newest first; a ``user`` principal lists its own jobs only."""
    async with coord.db.transaction() as session:
        jobs, total = await repo.list_jobs(
            session,
            kinds=[kind] if kind else None,
            limit=limit,
            offset=offset,
            owner=owner_filter(principal),
        )
    return page([job_out(j) for j in jobs], total, limit, offset)


@router.get("/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: str, coord: CoordinatorDep, principal: PrincipalDep) -> dict[str, Any]:
    return job_out(await owned_job(coord, principal, job_id))


@router.get("/jobs/{job_id}/events")
async def list_job_events(
    job_id: str, coord: CoordinatorDep, principal: PrincipalDep
) -> dict[str, Any]:
    """The append-only execution events of a job (every attempt, retry and transition)."""
    await owned_job(coord, principal, job_id)
    async with coord.db.transaction() as session:
        events = await repo.list_events(session, job_id=job_id)
    items = [
        {
            "seq": e.seq,
            "event_type": e.event_type,
            "fragment_id": e.fragment_id,
            "node_id": e.node_id,
            "attempt": e.attempt,
            "payload": e.payload,
            "at": e.at.isoformat(),
        }
        for e in events
    ]
    return page(items, len(items), len(items), 0)


@router.get("/jobs/{job_id}/provenance")
async def job_provenance(
    job_id: str, coord: CoordinatorDep, principal: PrincipalDep
) -> dict[str, Any]:
    """The provenance bundle of a finished job: input, plan, every event, node identities,
    seeds, library versions and the result hash (a MongoDB projection)."""
    job = await owned_job(coord, principal, job_id)
    bundle = await coord.docstore.read("get_provenance", job_id)
    if bundle is None:
        raise NotFound(
            f"No provenance bundle for job {job_id} yet (status {job.status}); bundles are "
            "projected shortly after a job finishes",
            details={"job_id": job_id, "status": job.status},
        )
    return bundle  # type: ignore[no-any-return]


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, coord: CoordinatorDep, principal: PrincipalDep) -> dict[str, Any]:
    await owned_job(coord, principal, job_id)
    return job_out(await coord.jobs.cancel(job_id))


@router.websocket("/jobs/{job_id}/events")
async def job_events(websocket: WebSocket, job_id: str) -> None:
    coord = websocket.app.state.coordinator
    principal = principal_of(websocket)
    await websocket.accept(subprotocol=select_subprotocol(websocket.scope))
    # Subscribe before reading the current state so no transition can fall in between.
    queue = coord.bus.subscribe(job_id)
    try:
        try:
            job = await coord.jobs.get(job_id)
        except NotFound as exc:
            await websocket.send_json(
                {"error": {"code": exc.code, "message": exc.message, "details": {}}}
            )
            await websocket.close(code=4404)
            return
        if principal is None or not may_see(principal, job.owner):
            await websocket.send_json(
                {
                    "error": {
                        "code": "forbidden",
                        "message": f"job_id {job_id} belongs to another principal",
                        "details": {"job_id": job_id},
                    }
                }
            )
            await websocket.close(code=WS_CLOSE_FORBIDDEN)
            return
        current = {**job_message(job, seq=None), "initial": True}
        await websocket.send_json(current)
        last_status = job.status
        while JobStatus(last_status) not in TERMINAL_JOB_STATES:
            try:
                message = await asyncio.wait_for(queue.get(), timeout=WS_IDLE_PING_S)
            except TimeoutError:
                await websocket.send_json({"job_id": job_id, "type": "keepalive"})
                continue
            await websocket.send_json(message)
            last_status = message["status"]
        await websocket.close(code=1000)
    except WebSocketDisconnect:
        pass
    finally:
        coord.bus.unsubscribe(job_id, queue)
