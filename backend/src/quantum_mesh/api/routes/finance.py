"""Portfolio selection by QAOA, compared with the exact classical optimum."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from quantum_mesh.api.admission import CREATES_JOB
from quantum_mesh.api.deps import (
    CoordinatorDep,
    LimitQ,
    OffsetQ,
    PrincipalDep,
    ensure_owner,
    owner_filter,
    page,
)
from quantum_mesh.api.security import Principal
from quantum_mesh.control import repository as repo
from quantum_mesh.control.workflows import PORTFOLIO_KIND, WORKFLOWS
from quantum_mesh.errors import Conflict, NotFound
from quantum_mesh.store.tables import Job

router = APIRouter(tags=["finance"])


class PortfolioIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assets: list[str] = Field(min_length=2, max_length=20)
    expected_returns: list[float]
    covariance: list[list[float]]
    budget: int = Field(ge=1)
    risk_aversion: float = Field(default=0.5, ge=0.0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)


def _finance_job(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "status": job.status,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
        "request": job.request["params"],
        "result": job.result if job.status == "COMPLETED" else None,
        "error": job.error,
        "owner": job.owner,
    }


async def _get(coord: Any, principal: Principal, job_id: str) -> Job:
    job = await coord.jobs.get(job_id)
    if job.kind != PORTFOLIO_KIND:
        raise NotFound(f"Portfolio job {job_id} does not exist", details={"job_id": job_id})
    ensure_owner(principal, job.owner, job_id=job_id)
    return job  # type: ignore[no-any-return]


@router.post("/finance/submit", status_code=202, openapi_extra=CREATES_JOB)
async def submit_portfolio(
    body: PortfolioIn,
    coord: CoordinatorDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    coord.jobs.admit(idempotency_key)
    params = await WORKFLOWS[PORTFOLIO_KIND].validate(
        body.model_dump(exclude_none=True), coord.compute
    )
    job, _ = await coord.jobs.submit(
        kind=PORTFOLIO_KIND,
        request={"params": params},
        idempotency_key=idempotency_key,
        owner=principal.name,
        max_active=principal.max_active_jobs,
    )
    return JSONResponse(status_code=202, content={"job_id": job.job_id, "status": job.status})


@router.get("/finance")
async def list_portfolios(
    coord: CoordinatorDep, principal: PrincipalDep, limit: LimitQ = 50, offset: OffsetQ = 0
) -> dict[str, Any]:
    async with coord.db.transaction() as session:
        jobs, total = await repo.list_jobs(
            session,
            kinds=[PORTFOLIO_KIND],
            limit=limit,
            offset=offset,
            owner=owner_filter(principal),
        )
    return page([_finance_job(j) for j in jobs], total, limit, offset)


@router.get("/finance/{job_id}")
async def get_portfolio(
    job_id: str, coord: CoordinatorDep, principal: PrincipalDep
) -> dict[str, Any]:
    return _finance_job(await _get(coord, principal, job_id))


@router.get("/finance/{job_id}/comparison")
async def compare_portfolio(
    job_id: str, coord: CoordinatorDep, principal: PrincipalDep
) -> dict[str, Any]:
    job = await _get(coord, principal, job_id)
    if job.status != "COMPLETED" or not job.result:
        raise Conflict(
            f"Portfolio job {job_id} is {job.status}; the comparison exists once it completes",
            details={"job_id": job_id, "status": job.status},
        )
    r = job.result
    assets = job.request["params"]["assets"]
    timing = r.get("timing", {})
    optimum_value = r["optimum_objective"]
    return {
        "job_id": job_id,
        "qaoa": {
            "selected": r["selected"],
            "objective": r["objective"],
            "node_id": r.get("node_id"),
            "encoding": r.get("encoding"),
            "wall_s": timing.get("wall_s"),
            "qaoa_s": timing.get("qaoa_s"),
        },
        "exact": {
            "selected": [assets[i] for i in r["optimum_selected"]],
            "objective": optimum_value,
            "method": "brute force over all budget-sized selections",
            "wall_s": timing.get("classical_s"),
        },
        "ratio": (r["objective"] / optimum_value) if optimum_value else None,
        "gap": r["gap"],
        "is_optimal": r["is_optimal"],
    }
