"""Jobs accepted outside the job runtime: what the API front journals and hands over.

The API front (``api/front``) answers a submit once the job is in its fsync'd intake journal;
the runtime writes the job's row and starts it when the entry reaches it
(``JobManager.ingest``). These are the documents both sides read and write: a journal line
is an ``AcceptedJob``, a hand-over an ``IntakeBatch`` answered by an ``IntakeReport``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AcceptedJob(BaseModel):
    """A job accepted (validated, answered 202) and not yet known to be written."""

    model_config = ConfigDict(frozen=True)

    seq: int
    job_id: str
    kind: str
    request: dict[str, Any]
    owner: str | None
    accepted_at: datetime


class IntakeBatch(BaseModel):
    """One hand-over from the front to the runtime."""

    #: In the order they were accepted.
    entries: list[AcceptedJob]
    #: Submits the front refused (429) since its last hand-over: counted in the runtime's
    #: metrics, which ``/metrics`` serves.
    refused: int = Field(default=0, ge=0)


class IntakeReport(BaseModel):
    """The runtime's answer to a hand-over: what it wrote, and its load, which the front's
    admission control reads."""

    #: The highest seq in the batch (None: an empty batch, a load report only).
    through: int | None
    #: Jobs written now (the others had rows already: a journal handed over again).
    written: int
    active: int
    write_backlog: int
    completed_per_s: float
