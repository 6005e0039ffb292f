"""Workloads the coordinator runs, each a processor of the job template (``control/jobs.py``).

Every kind validates its input before a job exists (bad input is a 4xx, never a FAILED job)
and runs through a narrow :class:`~quantum_mesh.control.jobs.JobHandle`; none of them
touches job state.
"""

from __future__ import annotations

from typing import Any

from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import JobHandle, JobManager
from quantum_mesh.control.workflows.base import Workflow, WorkflowProcess
from quantum_mesh.control.workflows.benchmark import BENCHMARK_KIND, BenchmarkWorkflow
from quantum_mesh.control.workflows.circuit import CIRCUIT_KIND, CircuitWorkload
from quantum_mesh.control.workflows.circuit_batch import CIRCUIT_BATCH_KIND, CircuitBatchWorkflow
from quantum_mesh.control.workflows.knapsack import KnapsackWorkflow
from quantum_mesh.control.workflows.knapsack_batch import KnapsackBatchWorkflow
from quantum_mesh.control.workflows.parameter_search import ParameterSearchWorkflow
from quantum_mesh.control.workflows.portfolio import PORTFOLIO_KIND, PortfolioWorkflow
from quantum_mesh.control.workflows.sqd import SQDWorkflow
from quantum_mesh.errors import InvalidInput

__all__ = [
    "BENCHMARK",
    "BENCHMARK_KIND",
    "CIRCUIT_KIND",
    "PORTFOLIO_KIND",
    "WORKFLOWS",
    "CircuitWorkload",
    "public_kinds",
    "register_processors",
    "validate_workflow",
]

_RUNS: dict[str, Workflow] = {
    w.kind: w
    for w in (
        KnapsackWorkflow(),
        KnapsackBatchWorkflow(),
        ParameterSearchWorkflow(),
        PortfolioWorkflow(),
        SQDWorkflow(),
    )
}
#: Every workflow kind, including the portfolio (submitted through ``/finance``).
WORKFLOWS: dict[str, Workflow] = dict(_RUNS)
#: Validates benchmark requests (its circuit workload never runs: each coordinator registers
#: a benchmark whose circuit workload is bound to its circuit machinery).
BENCHMARK = BenchmarkWorkflow({**WORKFLOWS, CIRCUIT_BATCH_KIND: CircuitBatchWorkflow()})


def public_kinds() -> list[str]:
    """Kinds a client submits through ``/workflows/runs``."""
    return sorted(k for k in WORKFLOWS if k != PORTFOLIO_KIND)


async def validate_workflow(
    kind: str, params: dict[str, Any], compute: ComputePools
) -> dict[str, Any]:
    if kind not in WORKFLOWS or kind == PORTFOLIO_KIND:
        available = public_kinds()
        raise InvalidInput(
            f"Unknown workflow kind '{kind}'; available: {available}",
            details={"kind": kind, "available": available},
        )
    return await WORKFLOWS[kind].validate(params, compute)


def register_processors(jobs: JobManager, circuits: CircuitWorkload) -> None:
    """Attach every workload (circuits, workflows, benchmarks) to the job template."""
    jobs.register_processor(CIRCUIT_KIND, circuits.process)
    benchmark = BenchmarkWorkflow({**WORKFLOWS, CIRCUIT_BATCH_KIND: CircuitBatchWorkflow(circuits)})
    for kind, workflow in [*WORKFLOWS.items(), (BENCHMARK_KIND, benchmark)]:
        jobs.register_processor(kind, _process_factory(workflow))


def _process_factory(workflow: Workflow) -> Any:
    def make(handle: JobHandle) -> WorkflowProcess:
        return WorkflowProcess(workflow, handle)

    return make
