"""Jobs accepted outside the job runtime: what the API front journals and hands over.

The API front (``api/front``) answers a submit once the job is in its fsync'd intake journal;
the runtime writes the job's row and starts it when the entry reaches it
(``JobManager.ingest``). This is the entry both sides read and write, in its JSON form.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class AcceptedJob:
    """A job accepted (validated, answered 202) and not yet known to be written."""

    seq: int
    job_id: str
    kind: str
    request: dict[str, Any]
    owner: str | None
    accepted_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "job_id": self.job_id,
            "kind": self.kind,
            "request": self.request,
            "owner": self.owner,
            "accepted_at": self.accepted_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AcceptedJob:
        return cls(
            seq=int(data["seq"]),
            job_id=str(data["job_id"]),
            kind=str(data["kind"]),
            request=dict(data["request"]),
            owner=data.get("owner"),
            accepted_at=datetime.fromisoformat(data["accepted_at"]),
        )
