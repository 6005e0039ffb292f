"""SQD: qiskit-addon-sqd's loop with each iteration's batch diagonalisations on the nodes."""

from __future__ import annotations

from typing import Any

from quantum_mesh.control.compute import CHEM_LANE, ComputePools
from quantum_mesh.control.jobs import JobHandle
from quantum_mesh.control.workflows.base import DriverPort, RunOptions, drive
from quantum_mesh.control.workflows.params import check_storable
from quantum_mesh.mesh.protocol import METHOD_SQD_BATCH, SERVICE_SQD_BATCH


def validated_seed(params: dict[str, Any]) -> int:
    """Build the molecule (mean field + active space) so an invalid molecule, basis or active
    space is a 4xx before any job exists. Runs in a validation process."""
    from quantum_mesh.quantum.sqd.params import parse_sqd_params

    _problem, settings = parse_sqd_params(params)
    return int(settings.seed)


class SQDWorkflow:
    kind = "sqd"
    service_type = SERVICE_SQD_BATCH

    async def validate(self, params: dict[str, Any], compute: ComputePools) -> dict[str, Any]:
        check_storable(params)
        seed = await compute.isolated_in(CHEM_LANE, validated_seed, params)
        return {**params, "seed": seed}

    async def run(
        self, handle: JobHandle, params: dict[str, Any], options: RunOptions
    ) -> dict[str, Any]:
        from quantum_mesh.quantum.sqd.loop import run_sqd, solve_batches_locally
        from quantum_mesh.quantum.sqd.params import parse_sqd_params

        latest: dict[str, Any] = {"done": 0, "unit": "iterations"}
        # After a coordinator restart the run replays its finished iterations from here.
        resume = await handle.last_checkpoint() if options.durable else None

        def on_batch(done: int, total: int) -> dict[str, Any]:
            return {**latest, "iteration_batches_done": done, "iteration_batches": total}

        def driver(port: DriverPort) -> dict[str, Any]:
            problem, settings = parse_sqd_params(params)
            latest["total"] = settings.max_iterations

            def on_progress(p: dict[str, Any]) -> None:
                port.check_cancelled()
                latest.update(
                    done=p["iteration"],
                    total=p["max_iterations"],
                    batches_done=p.get("batches_done"),
                    energy=p.get("energy"),
                    best_energy=p.get("best_energy"),
                )
                port.progress(dict(latest))

            solve = (
                solve_batches_locally
                if options.local
                else port.dispatcher(METHOD_SQD_BATCH, SERVICE_SQD_BATCH, on_unit=on_batch)
            )
            return run_sqd(
                problem,
                settings=settings,
                solve_batches=solve,
                on_progress=on_progress,
                checkpoint=port.checkpoint if options.durable else None,
                resume=resume,
            )

        return await drive(handle, options, driver)
