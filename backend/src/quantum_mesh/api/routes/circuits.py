"""Circuit submission."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse

from quantum_mesh.api.admission import CREATES_JOB
from quantum_mesh.api.deps import CoordinatorDep, PrincipalDep
from quantum_mesh.schemas.jobs import CircuitSubmit, JobAccepted

router = APIRouter(tags=["circuits"])


@router.post(
    "/circuits/submit", status_code=202, response_model=JobAccepted, openapi_extra=CREATES_JOB
)
async def submit_circuit(
    body: CircuitSubmit,
    coord: CoordinatorDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    job, _created = await coord.circuits.submit(
        coord.jobs,
        request=body.model_dump(),
        idempotency_key=idempotency_key,
        owner=principal.name,
        max_active=principal.max_active_jobs,
    )
    return JSONResponse(status_code=202, content={"job_id": job.job_id, "status": job.status})
