"""The job runtime's side of the API front's hand-over: jobs the front has accepted and
journalled are written and started here. Mounted only in a runtime behind the front
(``create_app(behind_front=True)``), which listens on a socket only the front can reach;
the front never forwards this path from clients."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from quantum_mesh.api.deps import CoordinatorDep
from quantum_mesh.api.front.forwarding import INTAKE_PATH
from quantum_mesh.control.intake import AcceptedJob
from quantum_mesh.observability import metrics

router = APIRouter(include_in_schema=False)


class IntakeBatch(BaseModel):
    #: ``AcceptedJob.to_json`` documents, in the order they were accepted.
    entries: list[dict[str, Any]]
    #: Submits the front refused (429) since its last hand-over: counted in this process's
    #: metrics, which ``/metrics`` serves.
    refused: int = Field(default=0, ge=0)


@router.post(INTAKE_PATH)
async def take_over(batch: IntakeBatch, coord: CoordinatorDep) -> dict[str, Any]:
    """Write and start the batch's jobs (those already written are skipped), then report the
    runtime's load, which the front's admission control reads."""
    if batch.refused:
        metrics.job_rejected(batch.refused)
    accepted = [AcceptedJob.from_json(entry) for entry in batch.entries]
    written = await coord.jobs.ingest(accepted)
    return {
        "through": max((a.seq for a in accepted), default=None),
        "written": len(written),
        "active": coord.jobs.active,
        "write_backlog": coord.db.write_backlog,
        "completed_per_s": coord.jobs.completion_rate,
    }
