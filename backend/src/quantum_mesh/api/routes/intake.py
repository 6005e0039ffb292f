"""The job runtime's side of the API front's hand-over: jobs the front has accepted and
journalled are written and started here. Mounted only in a runtime behind the front
(``create_app(behind_front=True)``), which listens on a socket only the front can reach;
the front never forwards this path from clients."""

from __future__ import annotations

from fastapi import APIRouter

from quantum_mesh.api.deps import CoordinatorDep
from quantum_mesh.api.front.forwarding import INTAKE_PATH
from quantum_mesh.control.intake import IntakeBatch, IntakeReport
from quantum_mesh.observability import metrics

router = APIRouter(include_in_schema=False)


@router.post(INTAKE_PATH)
async def take_over(batch: IntakeBatch, coord: CoordinatorDep) -> IntakeReport:
    """Write and start the batch's jobs (those already written are skipped), then report the
    runtime's load, which the front's admission control reads."""
    if batch.refused:
        metrics.job_rejected(batch.refused)
    written = await coord.jobs.ingest(batch.entries)
    return IntakeReport(
        through=max((a.seq for a in batch.entries), default=None),
        written=len(written),
        active=coord.jobs.active,
        write_backlog=coord.db.write_backlog,
        completed_per_s=coord.jobs.completion_rate,
    )
