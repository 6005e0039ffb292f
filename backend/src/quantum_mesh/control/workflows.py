"""Workflow kinds (QAOA knapsack, SQD, portfolio…): validation and processors.

Filled in per workload; each kind registers a validator (runs before the job exists, so bad
params are a 422) and a processor (runs the workload over the mesh via the dispatcher).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from quantum_mesh.control.dispatch import MeshDispatcher
from quantum_mesh.control.jobs import JobManager
from quantum_mesh.errors import InvalidInput

Validator = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
VALIDATORS: dict[str, Validator] = {}


async def validate_workflow(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    validator = VALIDATORS.get(kind)
    if validator is None:
        raise InvalidInput(
            f"Unknown workflow kind '{kind}'; available: {sorted(VALIDATORS)}",
            details={"kind": kind, "available": sorted(VALIDATORS)},
        )
    return await validator(params)


def register_workflows(jobs: JobManager, dispatcher: MeshDispatcher) -> None:
    """Attach every workflow processor to the job manager."""
    return None
