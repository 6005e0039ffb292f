"""Many independent knapsack instances in one run (vans, days, scenarios), spread over nodes.

Each instance is solved exactly as a ``qaoa_knapsack`` run would solve it (the same beam
search, its block jobs on the mesh), several instances at once so that every node has work:
their block jobs share the one work queue, so the scheduler spreads them over whichever
nodes are free. Instance ``i`` uses seed ``seed + i``, so one instance's answer does not
depend on what else is in the batch. A checkpoint after each finished instance lets a
coordinator restart continue with the unfinished ones.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import Any

from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import JobHandle
from quantum_mesh.control.workflows.base import DriverPort, RunOptions, drive
from quantum_mesh.control.workflows.params import (
    check_storable,
    int_param,
    reject_unknown,
    require_keys,
    seed_of,
)
from quantum_mesh.errors import InvalidInput
from quantum_mesh.mesh.protocol import METHOD_QAOA_BLOCK, METHOD_QAOA_SCHEDULES, SERVICE_QAOA_BLOCK
from quantum_mesh.quantum.qaoa import beam
from quantum_mesh.quantum.qaoa.classical import validate_knapsack
from quantum_mesh.quantum.qaoa.worker import MAX_COMPOUND_JOBS

KIND = "qaoa_knapsack_batch"
#: Instances in one batch at most (each is a full beam search).
MAX_INSTANCES = 500
#: Instances solved at once unless ``parallel_instances`` says otherwise.
DEFAULT_PARALLEL_INSTANCES = 4
MAX_PARALLEL_INSTANCES = 32
INSTANCE_KEYS = frozenset({"values", "weights", "capacity"})
BATCH_PARAMS = frozenset(
    {"instances", "seed", "parallel_instances", *(f.name for f in fields(beam.KnapsackSettings))}
)
#: What each instance's entry in the result keeps of its full knapsack result.
INSTANCE_FIELDS = (
    "selected",
    "total_value",
    "total_weight",
    "capacity",
    "optimum_value",
    "greedy_value",
    "ratio_to_optimum",
    "ratio_to_greedy",
    "used_greedy_fallback",
)


def _check_instances(instances: Any) -> list[dict[str, Any]]:
    if not isinstance(instances, list) or not 1 <= len(instances) <= MAX_INSTANCES:
        raise InvalidInput(
            f"params.instances must be a list of 1 to {MAX_INSTANCES} knapsack instances",
            details={"field": "instances", "maximum": MAX_INSTANCES},
        )
    for index, instance in enumerate(instances):
        where = f"instances[{index}]"
        if not isinstance(instance, dict):
            raise InvalidInput(
                f"params.{where} must be an object with values, weights and capacity",
                details={"field": where},
            )
        unknown = sorted(set(instance) - INSTANCE_KEYS)
        missing = sorted(INSTANCE_KEYS - set(instance))
        if unknown or missing:
            raise InvalidInput(
                f"params.{where} must have exactly values, weights and capacity"
                + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                + (f"; missing: {', '.join(missing)}" if missing else ""),
                details={"field": where, "unknown": unknown, "missing": missing},
            )
    return instances


def _validate_all(instances: list[dict[str, Any]]) -> None:
    """Every instance checked in one validation call; the first bad one is named."""
    for index, instance in enumerate(instances):
        try:
            validate_knapsack(instance["values"], instance["weights"], instance["capacity"])
        except InvalidInput as error:
            raise InvalidInput(
                f"params.instances[{index}]: {error.message}",
                details={
                    **error.details,
                    "instance_field": error.details.get("field"),
                    "field": f"instances[{index}]",
                    "index": index,
                },
            ) from error


class KnapsackBatchWorkflow:
    kind = KIND
    service_type = SERVICE_QAOA_BLOCK

    async def validate(self, params: dict[str, Any], compute: ComputePools) -> dict[str, Any]:
        check_storable(params)
        reject_unknown(params, BATCH_PARAMS, self.kind)
        require_keys(params, "instances")
        instances = _check_instances(params["instances"])
        await compute.run(_validate_all, instances)
        parallel = int_param(
            params, "parallel_instances", DEFAULT_PARALLEL_INSTANCES, 1, MAX_PARALLEL_INSTANCES
        )
        tuning = {k: v for k, v in params.items() if k not in ("instances", "parallel_instances")}
        settings = beam.KnapsackSettings.from_params(tuning)
        return {
            **params,
            "seed": seed_of(params),
            "parallel_instances": parallel,
            "settings": settings.as_dict(),
        }

    async def run(
        self, handle: JobHandle, params: dict[str, Any], options: RunOptions
    ) -> dict[str, Any]:
        settings = beam.KnapsackSettings.from_params(params["settings"])
        resume = await handle.last_checkpoint() if options.durable else None
        instances: list[dict[str, Any]] = params["instances"]
        seed: int = params["seed"]
        # The local baseline solves in this process, where instances side by side only take
        # turns at the GIL (measured: 8 instances 6.4-7.5 s on 4 threads, 3.4-4.1 s one by one).
        parallel = 1 if options.local else min(params["parallel_instances"], len(instances))

        def driver(port: DriverPort) -> dict[str, Any]:
            done: dict[int, dict[str, Any]] = _finished(resume, len(instances))
            lock = threading.Lock()
            dispatch = port.grouped_dispatcher(
                METHOD_QAOA_BLOCK, SERVICE_QAOA_BLOCK, max_group=MAX_COMPOUND_JOBS
            )
            schedules = port.dispatcher(METHOD_QAOA_SCHEDULES, SERVICE_QAOA_BLOCK)

            def solve(index: int) -> None:
                port.check_cancelled()
                instance = instances[index]
                result = beam.solve_knapsack(
                    instance["values"],
                    instance["weights"],
                    instance["capacity"],
                    dispatch=dispatch,
                    settings=settings,
                    seed=seed + index,
                    schedule_dispatch=schedules,
                )
                entry = _entry(index, result)
                with lock:
                    done[index] = entry
                    snapshot = {"finished": {str(i): e for i, e in done.items()}}
                    finished = len(done)
                # Outside the lock: a checkpoint waits for its commit.
                port.checkpoint(snapshot)
                port.progress(
                    {
                        "done": finished,
                        "total": len(instances),
                        "unit": "instances",
                        "last_index": index,
                    }
                )

            todo = [i for i in range(len(instances)) if i not in done]
            with ThreadPoolExecutor(parallel, thread_name_prefix="qmesh-batch") as pool:
                # list(): the first instance that fails re-raises here, after the others.
                errors = [f.exception() for f in [pool.submit(solve, i) for i in todo]]
            failed = next((e for e in errors if e is not None), None)
            if failed is not None:
                raise failed
            ordered = [done[i] for i in range(len(instances))]
            return {
                "instances": ordered,
                "summary": _summary(ordered),
                "seed": seed,
                "settings": settings.as_dict(),
                "parallel_instances": parallel,
                "resumed_instances": len(instances) - len(todo),
            }

        return await drive(handle, options, driver)


def _entry(index: int, result: dict[str, Any]) -> dict[str, Any]:
    entry = {"index": index, **{k: result[k] for k in INSTANCE_FIELDS if k in result}}
    entry["feasible"] = result["total_weight"] <= result["capacity"]
    blocks = result.get("blocks", [])
    entry["blocks"] = len(blocks)
    # Where and how the instance ran: its block jobs' QAOA seconds, the nodes that ran them
    # and the executions beyond the first (a benchmark's mesh share and retries).
    entry["qaoa_s"] = round(float(result.get("timing", {}).get("qaoa_s") or 0.0), 6)
    entry["nodes_used"] = sorted({str(b["node_id"]) for b in blocks if b.get("node_id")})
    entry["retries"] = sum(max(0, int(b.get("attempts") or 1) - 1) for b in blocks)
    return entry


def _finished(resume: dict[str, Any] | None, count: int) -> dict[int, dict[str, Any]]:
    """Instances a checkpoint of this run already holds (anything else in it is ignored)."""
    finished = (resume or {}).get("finished")
    if not isinstance(finished, dict):
        return {}
    out: dict[int, dict[str, Any]] = {}
    for key, entry in finished.items():
        if key.isdigit() and int(key) < count and isinstance(entry, dict):
            out[int(key)] = entry
    return out


def _summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [float(e["ratio_to_optimum"]) for e in entries if "ratio_to_optimum" in e]
    return {
        "instances": len(entries),
        "feasible": sum(1 for e in entries if e["feasible"]),
        "matched_optimum": sum(1 for e in entries if e["total_value"] == e["optimum_value"]),
        "beat_greedy": sum(1 for e in entries if e["total_value"] > e["greedy_value"]),
        "below_greedy": sum(1 for e in entries if e["total_value"] < e["greedy_value"]),
        "mean_ratio_to_optimum": sum(ratios) / len(ratios) if ratios else None,
        "min_ratio_to_optimum": min(ratios) if ratios else None,
        "total_value": sum(e["total_value"] for e in entries),
        "optimum_value": sum(e["optimum_value"] for e in entries),
    }
