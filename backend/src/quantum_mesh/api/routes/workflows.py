"""Workflow runs (QAOA knapsack, SQD, parameter search…)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from quantum_mesh.api.deps import CoordinatorDep, LimitQ, OffsetQ, page
from quantum_mesh.control import repository as repo
from quantum_mesh.control.workflows import VALIDATORS, validate_workflow
from quantum_mesh.store.tables import Job

router = APIRouter(tags=["workflows"])


class WorkflowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)


def run_to_dict(job: Job) -> dict[str, Any]:
    return {
        "run_id": job.job_id,
        "job_id": job.job_id,
        "kind": job.kind,
        "status": job.status,
        "progress": job.progress,
        "result": job.result if job.status == "COMPLETED" else None,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
    }


@router.post("/workflows/runs", status_code=202)
async def submit_run(
    body: WorkflowIn,
    coord: CoordinatorDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    params = await validate_workflow(body.kind, body.params)
    job, _ = await coord.jobs.submit(
        kind=body.kind, request={"params": params}, idempotency_key=idempotency_key
    )
    return JSONResponse(status_code=202, content={"run_id": job.job_id, "status": job.status})


@router.get("/workflows/runs")
async def list_runs(coord: CoordinatorDep, limit: LimitQ = 50, offset: OffsetQ = 0) -> dict[str, Any]:
    async with coord.db.transaction() as session:
        jobs, total = await repo.list_jobs(session, kinds=sorted(VALIDATORS), limit=limit, offset=offset)
    return page([run_to_dict(j) for j in jobs], total, limit, offset)


@router.get("/workflows/runs/{run_id}")
async def get_run(run_id: str, coord: CoordinatorDep) -> dict[str, Any]:
    return run_to_dict(await coord.jobs.get(run_id))
