"""QAOA knapsack: the beam search over item blocks, each block solved on some node."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import JobHandle
from quantum_mesh.control.workflows.base import DriverPort, RunOptions, drive
from quantum_mesh.control.workflows.params import (
    check_storable,
    reject_unknown,
    require_keys,
    seed_of,
)
from quantum_mesh.mesh.protocol import METHOD_QAOA_BLOCK, METHOD_QAOA_SCHEDULES, SERVICE_QAOA_BLOCK
from quantum_mesh.quantum.qaoa import beam
from quantum_mesh.quantum.qaoa.classical import validate_knapsack
from quantum_mesh.quantum.qaoa.worker import MAX_COMPOUND_JOBS

#: The instance, the seed and every ``KnapsackSettings`` field.
KNAPSACK_PARAMS = frozenset(
    {"values", "weights", "capacity", "seed", *(f.name for f in fields(beam.KnapsackSettings))}
)


class KnapsackWorkflow:
    kind = "qaoa_knapsack"
    service_type = SERVICE_QAOA_BLOCK

    async def validate(self, params: dict[str, Any], compute: ComputePools) -> dict[str, Any]:
        check_storable(params)
        reject_unknown(params, KNAPSACK_PARAMS, self.kind)
        require_keys(params, "values", "weights", "capacity")
        await compute.run(
            validate_knapsack, params["values"], params["weights"], params["capacity"]
        )
        settings = beam.KnapsackSettings.from_params(params)
        return {**params, "seed": seed_of(params), "settings": settings.as_dict()}

    async def run(
        self, handle: JobHandle, params: dict[str, Any], options: RunOptions
    ) -> dict[str, Any]:
        settings = beam.KnapsackSettings.from_params(params["settings"])
        # After a coordinator restart the run continues from its last finished block.
        resume = await handle.last_checkpoint() if options.durable else None

        def driver(port: DriverPort) -> dict[str, Any]:
            def on_progress(p: dict[str, Any]) -> None:
                port.progress(
                    {
                        "done": p["block_index"] + 1,
                        "total": p["blocks_total"],
                        "unit": "blocks",
                        "best_value": p["best_value"],
                        "optimum_value": p["optimum_value"],
                    }
                )

            return beam.solve_knapsack(
                params["values"],
                params["weights"],
                params["capacity"],
                dispatch=port.grouped_dispatcher(
                    METHOD_QAOA_BLOCK, SERVICE_QAOA_BLOCK, max_group=MAX_COMPOUND_JOBS
                ),
                settings=settings,
                seed=params["seed"],
                on_progress=on_progress,
                checkpoint=port.checkpoint,
                resume=resume,
                schedule_dispatch=port.dispatcher(METHOD_QAOA_SCHEDULES, SERVICE_QAOA_BLOCK),
            )

        return await drive(handle, options, driver)
