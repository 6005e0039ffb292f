"""Job reads, cancellation and the live WebSocket stream."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request, Response, WebSocket, WebSocketDisconnect

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
from quantum_mesh.control.jobs import (
    CIRCUIT_KIND,
    SUMMARY_PATHS,
    job_message,
    job_to_dict,
    summary_result,
)
from quantum_mesh.control.states import TERMINAL_JOB_STATES, JobStatus
from quantum_mesh.errors import NotFound
from quantum_mesh.schemas.jobs import JobOut
from quantum_mesh.store.tables import Job

router = APIRouter(tags=["jobs"])

WS_IDLE_PING_S = 15.0

ViewQ = Annotated[
    Literal["full", "summary"],
    Query(
        description="full: every result field but the statevector; summary: only what does "
        "not grow with the number of basis states (what lists show)"
    ),
]
IncludeQ = Annotated[
    list[Literal["statevector"]] | None,
    Query(
        description="heavy fields to add: statevector (the inline list of [re, im] up to "
        "12 qubits, else the reference of the statevector artifact)"
    ),
]
ARTIFACT_ROUTE = "job_artifact"


async def owned_job(coord: Coordinator, principal: Principal, job_id: str) -> Job:
    """The job, when ``principal`` may see it (403 ``forbidden`` otherwise)."""
    job = await coord.jobs.get(job_id)
    ensure_owner(principal, job.owner, job_id=job_id)
    return job


def artifact_href(request: Request, job_id: str) -> Callable[[str], str]:
    """URL paths of a job's artifacts, by name."""

    def href(name: str) -> str:
        return str(request.app.url_path_for(ARTIFACT_ROUTE, job_id=job_id, name=name))

    return href


def job_out(job: Job, **view: Any) -> dict[str, Any]:
    """The job document (``view``: :func:`job_to_dict`'s keywords) and its owner."""
    return {**job_to_dict(job, **view), "owner": job.owner}


@router.get("/jobs")
async def list_jobs(
    request: Request,
    coord: CoordinatorDep,
    principal: PrincipalDep,
    limit: LimitQ = 50,
    offset: OffsetQ = 0,
    kind: str | None = None,
) -> dict[str, Any]:
    """Newest first; a ``user`` principal lists its own jobs only. Items are summaries:
    circuit results are read only as far as the summary goes, in the database."""
    async with coord.db.transaction() as session:
        jobs, total = await repo.list_jobs_light(
            session,
            kinds=[kind] if kind else None,
            limit=limit,
            offset=offset,
            owner=owner_filter(principal),
            path_kinds=[CIRCUIT_KIND],
            paths=SUMMARY_PATHS,
        )
    items = [
        job_out(
            j.job,
            view="summary",
            href=artifact_href(request, j.job.job_id),
            result=summary_result(j.parts) if j.job.kind == CIRCUIT_KIND else j.result,
        )
        for j in jobs
    ]
    return page(items, total, limit, offset)


@router.get("/jobs/{job_id}", response_model=JobOut)
async def get_job(
    job_id: str,
    request: Request,
    coord: CoordinatorDep,
    principal: PrincipalDep,
    view: ViewQ = "full",
    include: IncludeQ = None,
) -> dict[str, Any]:
    """The job document; its ``quantum_result`` in the ``view`` asked for, with the heavy
    fields in ``include`` added (docs/api.md, "Job documents")."""
    href = artifact_href(request, job_id)
    if view == "summary" and not include:
        async with coord.db.transaction() as session:
            head = await repo.get_job_head(session, job_id=job_id)
            ensure_owner(principal, head.owner, job_id=job_id)
            if head.kind == CIRCUIT_KIND:
                parts = await repo.job_result_parts(session, job_id=job_id, paths=SUMMARY_PATHS)
                return job_out(head, view=view, href=href, result=summary_result(parts))
    job = await owned_job(coord, principal, job_id)
    return job_out(job, view=view, include=include or (), href=href)


@router.get(
    "/jobs/{job_id}/artifacts/{name}",
    name=ARTIFACT_ROUTE,
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "raw little-endian bytes; X-Dtype, X-Shape, X-Sha256 describe them",
        }
    },
)
async def get_job_artifact(
    job_id: str,
    name: str,
    coord: CoordinatorDep,
    principal: PrincipalDep,
    format: Annotated[
        Literal["raw", "npy"],
        Query(description="raw: the bytes alone (X-Dtype, X-Shape); npy: a NumPy .npy file"),
    ] = "raw",
) -> Response:
    """A big array of a job's result (``statevector``), as raw little-endian bytes of numpy
    dtype ``X-Dtype`` and shape ``X-Shape``, or (``?format=npy``) as a ``.npy`` file that
    ``numpy.load`` reads as is; the same access rule as the job."""
    async with coord.db.transaction() as session:
        job = await repo.get_job_head(session, job_id=job_id)
        ensure_owner(principal, job.owner, job_id=job_id)
        artifact = await repo.read_artifact(session, job=job, name=name)
    if artifact is None:
        raise NotFound(
            f"Job {job_id} has no artifact '{name}' (status {job.status}); a completed "
            "circuit job has 'statevector'",
            details={"job_id": job_id, "artifact": name, "status": job.status},
        )
    content, suffix = artifact.data, "bin"
    if format == "npy":
        suffix = "npy"
        # Header plus a copy of the bytes: milliseconds for a 16 MiB state, off the loop.
        content = await coord.compute.run(
            npy_bytes, artifact.data, artifact.dtype, tuple(artifact.shape)
        )
    return Response(
        content=content,
        media_type="application/octet-stream",
        headers={
            "X-Dtype": artifact.dtype,
            "X-Shape": ",".join(str(d) for d in artifact.shape),
            "X-Byte-Order": "little",
            # Of the array's bytes, whichever wrapping was asked for.
            "X-Sha256": artifact.sha256,
            "Content-Disposition": f'attachment; filename="{job_id}-{name}.{suffix}"',
        },
    )


def format_suffix(format: str) -> str:
    return "npy" if format == "npy" else "bin"


def npy_bytes(data: bytes, dtype: str, shape: tuple[int, ...]) -> bytes:
    """``data`` (little-endian ``dtype``) as the bytes of a ``.npy`` file."""
    array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


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
