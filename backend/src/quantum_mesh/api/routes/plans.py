"""Execution plans."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from quantum_mesh.api.deps import CoordinatorDep, PrincipalDep, ensure_owner
from quantum_mesh.control import repository as repo

router = APIRouter(tags=["plans"])


@router.get("/plans/{plan_id}")
async def get_plan(plan_id: str, coord: CoordinatorDep, principal: PrincipalDep) -> dict[str, Any]:
    async with coord.db.transaction() as session:
        row = await repo.get_plan(session, plan_id=plan_id)
        if not principal.is_admin:  # a plan is its job's: visible to the job's owner
            job = await repo.get_job(session, job_id=row.job_id)
            ensure_owner(principal, job.owner, plan_id=plan_id)
    return {**row.plan, "created_at": row.created_at.isoformat()}
