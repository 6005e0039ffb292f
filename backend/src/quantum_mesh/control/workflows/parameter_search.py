"""Distributed (gamma, beta) search for one QUBO: schedules evaluated across the nodes."""

from __future__ import annotations

from typing import Any

from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import JobHandle
from quantum_mesh.control.workflows.base import DriverPort, RunOptions, drive
from quantum_mesh.control.workflows.params import seed_of
from quantum_mesh.errors import InvalidInput
from quantum_mesh.mesh.protocol import METHOD_QAOA_SCHEDULES, SERVICE_QAOA_BLOCK

MAX_VARIABLES = 22


class ParameterSearchWorkflow:
    kind = "qaoa_parameter_search"
    service_type = SERVICE_QAOA_BLOCK

    async def validate(self, params: dict[str, Any], compute: ComputePools) -> dict[str, Any]:
        qubo = params.get("qubo")
        if (
            not isinstance(qubo, list)
            or not qubo
            or not all(isinstance(row, list) and len(row) == len(qubo) for row in qubo)
        ):
            raise InvalidInput("params.qubo must be a square matrix (list of lists)")
        if len(qubo) > MAX_VARIABLES:
            raise InvalidInput(
                f"params.qubo has {len(qubo)} variables; at most {MAX_VARIABLES} are supported"
            )
        return {
            "qubo": qubo,
            "offset": float(params.get("offset", 0.0)),
            "n_schedules": int(params.get("n_schedules", 64)),
            "p": int(params.get("p", 1)),
            "jobs": int(params.get("jobs", 4)),
            "refine_rounds": int(params.get("refine_rounds", 1)),
            "seed": seed_of(params),
        }

    async def run(
        self, handle: JobHandle, params: dict[str, Any], options: RunOptions
    ) -> dict[str, Any]:
        from quantum_mesh.quantum.qaoa import beam

        def driver(port: DriverPort) -> dict[str, Any]:
            return beam.search_parameters(
                {"qubo": {"matrix": params["qubo"], "offset": params["offset"]}},
                dispatch=port.dispatcher(METHOD_QAOA_SCHEDULES, SERVICE_QAOA_BLOCK),
                n_schedules=params["n_schedules"],
                seed=params["seed"],
                p=params["p"],
                jobs=params["jobs"],
                refine_rounds=params["refine_rounds"],
            )

        return await drive(handle, options, driver)
