"""Request and response models for circuits and jobs (the public contract)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_SHOTS = 1_000_000


class CircuitSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    circuit: str = Field(min_length=1, max_length=200_000, description="OpenQASM 2 or 3 text")
    shots: int = Field(default=1024, ge=1, le=MAX_SHOTS)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    min_fidelity: float | None = Field(default=None, ge=0.0, le=1.0)


class JobAccepted(BaseModel):
    job_id: str
    status: str


class JobOut(BaseModel):
    job_id: str
    kind: str
    status: str
    created_at: str
    updated_at: str
    plan_id: str | None
    error: dict[str, Any] | None
    progress: dict[str, Any] | None = None
    fragment_results: list[dict[str, Any]]
    #: A circuit's result in the view asked for (docs/api.md, "Job documents"): without
    #: ``statevector`` unless ``?include=statevector``; with ``artifacts`` (references, each
    #: with its ``href``), ``omitted`` (fields left out) and ``truncated`` (distributions cut
    #: to their most likely entries, above 12 qubits).
    quantum_result: dict[str, Any] | None
    result: dict[str, Any] | None
    #: The principal that submitted the job (None on jobs from before principals).
    owner: str | None = None
