"""Distributed (gamma, beta) search for one QUBO: schedules evaluated across the nodes."""

from __future__ import annotations

from typing import Any

from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import JobHandle
from quantum_mesh.control.workflows.base import DriverPort, RunOptions, drive
from quantum_mesh.control.workflows.params import (
    check_storable,
    finite_number,
    int_param,
    number_param,
    reject_unknown,
    seed_of,
)
from quantum_mesh.errors import InvalidInput
from quantum_mesh.mesh.protocol import METHOD_QAOA_SCHEDULES, SERVICE_QAOA_BLOCK
from quantum_mesh.quantum.qaoa.angles import MAX_P
from quantum_mesh.quantum.qaoa.worker import MAX_SCHEDULES

MAX_VARIABLES = 22
#: Largest |entry| of the QUBO matrix and |offset| (energies stay exact in float64 sums).
MAX_QUBO_MAGNITUDE = 1e12
MAX_TOTAL_SCHEDULES = 20_000
MAX_JOBS = 64
MAX_REFINE_ROUNDS = 5
SEARCH_PARAMS = frozenset({"qubo", "offset", "seed", "jobs", "n_schedules", "p", "refine_rounds"})


class ParameterSearchWorkflow:
    kind = "qaoa_parameter_search"
    service_type = SERVICE_QAOA_BLOCK

    async def validate(self, params: dict[str, Any], compute: ComputePools) -> dict[str, Any]:
        check_storable(params)
        reject_unknown(params, SEARCH_PARAMS, self.kind)
        qubo = params.get("qubo")
        if (
            not isinstance(qubo, list)
            or not qubo
            or not all(isinstance(row, list) and len(row) == len(qubo) for row in qubo)
        ):
            raise InvalidInput(
                "params.qubo must be a square matrix (list of lists)", details={"field": "qubo"}
            )
        if len(qubo) > MAX_VARIABLES:
            raise InvalidInput(
                f"params.qubo has {len(qubo)} variables; at most {MAX_VARIABLES} are supported",
                details={"field": "qubo", "variables": len(qubo)},
            )
        matrix: list[list[float]] = []
        for i, row in enumerate(qubo):
            matrix.append([])
            for j, entry in enumerate(row):
                number = finite_number(entry, MAX_QUBO_MAGNITUDE)
                if number is None:
                    raise InvalidInput(
                        f"params.qubo[{i}][{j}] must be a finite number in "
                        f"[-{MAX_QUBO_MAGNITUDE:g}, {MAX_QUBO_MAGNITUDE:g}].",
                        details={"field": "qubo", "row": i, "column": j},
                    )
                matrix[-1].append(number)
        jobs = int_param(params, "jobs", 4, 1, MAX_JOBS)
        n_schedules = int_param(params, "n_schedules", 64, 1, MAX_TOTAL_SCHEDULES)
        if -(-n_schedules // jobs) > MAX_SCHEDULES:
            raise InvalidInput(
                f"params.n_schedules={n_schedules} over {jobs} jobs gives more than "
                f"{MAX_SCHEDULES} schedules per job; raise params.jobs.",
                details={"field": "n_schedules", "per_job_max": MAX_SCHEDULES},
            )
        return {
            "qubo": matrix,
            "offset": number_param(params, "offset", 0.0, MAX_QUBO_MAGNITUDE),
            "n_schedules": n_schedules,
            "p": int_param(params, "p", 1, 1, MAX_P),
            "jobs": jobs,
            "refine_rounds": int_param(params, "refine_rounds", 1, 0, MAX_REFINE_ROUNDS),
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
