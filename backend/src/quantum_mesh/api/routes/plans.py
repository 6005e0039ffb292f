"""Execution plans."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from quantum_mesh.api.deps import CoordinatorDep
from quantum_mesh.control import repository as repo

router = APIRouter(tags=["plans"])


@router.get("/plans/{plan_id}")
async def get_plan(plan_id: str, coord: CoordinatorDep) -> dict[str, Any]:
    async with coord.db.transaction() as session:
        row = await repo.get_plan(session, plan_id=plan_id)
    return {**row.plan, "created_at": row.created_at.isoformat()}
