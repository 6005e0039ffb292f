"""Workflow runs (QAOA knapsack, SQD, parameter search…)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response
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
from quantum_mesh.control import repository as repo
from quantum_mesh.control.reports import build_report
from quantum_mesh.control.states import JobStatus
from quantum_mesh.control.workflows import (
    BENCHMARK,
    BENCHMARK_KIND,
    public_kinds,
    validate_workflow,
)
from quantum_mesh.control.workflows.scenario_params import ADMIN_SCENARIOS
from quantum_mesh.errors import Conflict, Forbidden, NotFound
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
        "owner": job.owner,
    }


@router.post("/workflows/runs", status_code=202, openapi_extra=CREATES_JOB)
async def submit_run(
    body: WorkflowIn,
    coord: CoordinatorDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    coord.jobs.admit(idempotency_key)
    params = await validate_workflow(body.kind, body.params, coord.compute)
    job, _ = await coord.jobs.submit(
        kind=body.kind,
        request={"params": params},
        idempotency_key=idempotency_key,
        owner=principal.name,
        max_active=principal.max_active_jobs,
    )
    return JSONResponse(status_code=202, content={"run_id": job.job_id, "status": job.status})


@router.get("/workflows/runs")
async def list_runs(
    coord: CoordinatorDep, principal: PrincipalDep, limit: LimitQ = 50, offset: OffsetQ = 0
) -> dict[str, Any]:
    async with coord.db.transaction() as session:
        jobs, total = await repo.list_jobs(
            session,
            kinds=public_kinds(),
            limit=limit,
            offset=offset,
            owner=owner_filter(principal),
        )
    return page([run_to_dict(j) for j in jobs], total, limit, offset)


@router.get("/workflows/runs/{run_id}")
async def get_run(run_id: str, coord: CoordinatorDep, principal: PrincipalDep) -> dict[str, Any]:
    job = await coord.jobs.get(run_id)
    ensure_owner(principal, job.owner, job_id=run_id)
    return run_to_dict(job)


class WorkloadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(description="circuit, qaoa_knapsack or sqd")
    params: dict[str, Any] = Field(default_factory=dict)


class BenchmarkIn(BaseModel):
    """``{"workload": {"kind", "params"}, "modes", "node_counts", "repetitions", "scenarios"}``
    (shared/CONTRACT.md); ``{"workload": "<kind>", "params", "node_counts", "include_local"}``
    is the earlier shorthand, still accepted."""

    model_config = ConfigDict(extra="forbid")
    workload: WorkloadIn | str = Field(description="{kind, params}, or a kind (shorthand)")
    params: dict[str, Any] | None = Field(default=None, description="shorthand only")
    modes: list[str] | None = Field(default=None, description="centralized, distributed")
    node_counts: list[int] = Field(default_factory=lambda: [1, 2, 3], max_length=16)
    repetitions: int = Field(default=1, ge=1, le=10)
    scenarios: list[str] = Field(default_factory=lambda: ["baseline"], max_length=7)
    scenario_params: dict[str, Any] | None = Field(
        default=None,
        description='settings of a scenario: {"degraded_node": {"refuse_share", "slowdown", '
        '"noise_level"}, "latency": {"delay_ms", "jitter_ms"}, "bandwidth": {"rate_kbit"}, '
        '"loss": {"loss", "rto_ms", "reset_share"}}',
    )
    include_local: bool = Field(default=True, description="shorthand only")
    warmup: bool = Field(default=True, description="one untimed run per mode first")


def benchmark_to_dict(job: Job) -> dict[str, Any]:
    return {
        "benchmark_id": job.job_id,
        "status": job.status,
        "progress": job.progress,
        "request": job.request,
        "rows": (job.result or {}).get("rows") if job.status == "COMPLETED" else None,
        "summary": (job.result or {}).get("summary") if job.status == "COMPLETED" else None,
        # A fitted discrete-event model of larger meshes (labelled as a model; may be null).
        "model": (job.result or {}).get("model") if job.status == "COMPLETED" else None,
        "comparison": job.result if job.status == "COMPLETED" else None,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
        "owner": job.owner,
    }


def benchmark_summary(job: Job) -> dict[str, Any]:
    """A finished benchmark as the benchmark-results projection holds it."""
    result = job.result or {}
    return {
        "benchmark_id": job.job_id,
        "workload": result.get("workload") or "unknown",
        "modes": [str(m.get("mode")) for m in result.get("modes") or []],
        "figures": result,
        "details": {},
        "created_at": job.updated_at.isoformat(),
    }


@router.post("/workflows/benchmarks", status_code=202, openapi_extra=CREATES_JOB)
async def submit_benchmark(
    body: BenchmarkIn,
    coord: CoordinatorDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    disturbing = [s for s in body.scenarios if s in ADMIN_SCENARIOS]
    if disturbing and not principal.is_admin:
        # They stop, degrade or add nodes that every other job is using too.
        raise Forbidden(
            f"{principal.name} may not run the {disturbing[0]} scenario: it needs the admin role",
            details={
                "principal": principal.name,
                "required_role": "admin",
                "scenario": disturbing[0],
            },
        )
    coord.jobs.admit(idempotency_key)
    spec = await BENCHMARK.validate(body.model_dump(exclude_unset=True), coord.compute)
    job, _ = await coord.jobs.submit(
        kind=BENCHMARK_KIND,
        request={"params": spec},
        idempotency_key=idempotency_key,
        owner=principal.name,
        max_active=principal.max_active_jobs,
    )
    return JSONResponse(status_code=202, content={"benchmark_id": job.job_id, "status": job.status})


@router.get("/workflows/benchmarks")
async def list_benchmarks(
    coord: CoordinatorDep, principal: PrincipalDep, limit: LimitQ = 50, offset: OffsetQ = 0
) -> dict[str, Any]:
    """Finished benchmark comparisons: for admins, read from the benchmark-results projection;
    for a user, its own, read from the database in the same shape (the projection does not
    know owners)."""
    owner = owner_filter(principal)
    if owner is None:
        items, total = await coord.docstore.read("list_benchmarks", limit, offset)
        return page(items, total, limit, offset)
    async with coord.db.transaction() as session:
        jobs, total = await repo.list_jobs(
            session,
            kinds=[BENCHMARK_KIND],
            statuses=[JobStatus.COMPLETED.value],
            limit=limit,
            offset=offset,
            owner=owner,
        )
    return page([benchmark_summary(j) for j in jobs], total, limit, offset)


@router.get("/workflows/benchmarks/{benchmark_id}")
async def get_benchmark(
    benchmark_id: str, coord: CoordinatorDep, principal: PrincipalDep
) -> dict[str, Any]:
    job = await coord.jobs.get(benchmark_id)
    if job.kind != BENCHMARK_KIND:
        raise NotFound(
            f"Benchmark {benchmark_id} does not exist", details={"benchmark_id": benchmark_id}
        )
    ensure_owner(principal, job.owner, benchmark_id=benchmark_id)
    return benchmark_to_dict(job)


@router.get(
    "/workflows/benchmarks/{benchmark_id}/report",
    response_class=Response,
    responses={
        200: {"content": {"application/zip": {}}, "description": "report.json, rows.csv, plots"},
        409: {"description": "the benchmark has not completed"},
    },
)
async def benchmark_report(
    benchmark_id: str, coord: CoordinatorDep, principal: PrincipalDep
) -> Response:
    """The finished benchmark as a zip: ``report.json`` (rows, summary, request, versions,
    git commit), ``rows.csv`` and PNG plots (wall time per mode and scenario, speedup against
    node count, quality against time, mesh share)."""
    job = await coord.jobs.get(benchmark_id)
    if job.kind != BENCHMARK_KIND:
        raise NotFound(
            f"Benchmark {benchmark_id} does not exist", details={"benchmark_id": benchmark_id}
        )
    ensure_owner(principal, job.owner, benchmark_id=benchmark_id)
    if job.status != JobStatus.COMPLETED.value:
        raise Conflict(
            f"Benchmark {benchmark_id} is {job.status}; its report exists once it completes",
            details={"benchmark_id": benchmark_id, "status": job.status},
        )
    # Plotting is CPU work: in a worker, never on the API loop.
    bundle = await coord.compute.run(build_report, benchmark_to_dict(job))
    return Response(
        content=bundle,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="benchmark-{benchmark_id}.zip"'},
    )
