"""Comparative benchmarks: one workload, the same seed, run in several modes side by side.

Modes are ``local`` (every block/batch solved in the coordinator's worker thread, one after
another: the centralised baseline) and ``mesh`` restricted to 1, 2, 3 … nodes. The result
gives wall times, speedups against the baseline and the quality of each answer, so
distribution is judged by the same instance and seed.
"""

from __future__ import annotations

import time
from typing import Any

from quantum_mesh.control.workflows import RUNNERS, VALIDATORS, WorkflowContext, validate_workflow
from quantum_mesh.errors import InvalidInput

BENCHMARK_KIND = "benchmark"
SUPPORTED = ("qaoa_knapsack", "sqd")
MAX_NODE_COUNT = 16


async def validate_benchmark(body: dict[str, Any]) -> dict[str, Any]:
    workload = body.get("workload")
    if workload not in SUPPORTED:
        raise InvalidInput(
            f"workload must be one of {list(SUPPORTED)}", details={"workload": workload}
        )
    node_counts = body.get("node_counts", [1, 2, 3])
    if (
        not isinstance(node_counts, list)
        or not node_counts
        or not all(isinstance(n, int) and 1 <= n <= MAX_NODE_COUNT for n in node_counts)
    ):
        raise InvalidInput(
            f"node_counts must be a non-empty list of integers in 1..{MAX_NODE_COUNT}"
        )
    include_local = bool(body.get("include_local", True))
    params = await validate_workflow(str(workload), dict(body.get("params") or {}))
    return {
        "workload": workload,
        "params": params,
        "node_counts": sorted(set(node_counts)),
        "include_local": include_local,
    }


def _quality(workload: str, result: dict[str, Any]) -> dict[str, Any]:
    if workload == "qaoa_knapsack":
        timing = result.get("timing", {})
        return {
            "value": result["total_value"],
            "optimum_value": result["optimum_value"],
            "greedy_value": result["greedy_value"],
            "ratio_to_optimum": result["ratio_to_optimum"],
            "ratio_to_greedy": result["ratio_to_greedy"],
            "qaoa_s": timing.get("qaoa_s"),
            "mesh_s": timing.get("mesh_s"),
            "nodes_used": sorted({b["node_id"] for b in result.get("blocks", [])}),
        }
    timing = result.get("timing", {})
    return {
        "energy": result["energy"],
        "reference_energy": result.get("reference_energy"),
        "error_mha": result.get("error_mha"),
        # The SQD proper (sampling + recovery + batch solves), without problem set-up and
        # the exact reference, which every mode repeats identically.
        "sqd_s": (timing.get("sampling_s") or 0.0) + (timing.get("sqd_loop_s") or 0.0),
        "batch_seconds_sum": timing.get("batch_seconds_sum"),
        "nodes_used": sorted({b["node_id"] for b in result.get("batches", []) if b.get("node_id")}),
    }


async def run_benchmark(ctx: WorkflowContext, spec: dict[str, Any]) -> dict[str, Any]:
    workload = spec["workload"]
    runner = RUNNERS[workload]
    modes: list[tuple[str, int | None, bool]] = []
    if spec["include_local"]:
        modes.append(("local", None, True))
    modes += [(f"mesh-{n}", n, False) for n in spec["node_counts"]]
    rows: list[dict[str, Any]] = []
    for index, (name, nodes, local) in enumerate(modes):
        sub = WorkflowContext(
            job_id=ctx.job_id,
            jobs=ctx.jobs,
            dispatcher=ctx.dispatcher,
            max_nodes=nodes,
            local=local,
            report_progress=False,
        )
        started = time.perf_counter()
        result = await runner(sub, spec["params"])
        wall = time.perf_counter() - started
        rows.append(
            {"mode": name, "nodes": nodes, "wall_s": round(wall, 4), **_quality(workload, result)}
        )
        await ctx.jobs.report_progress(
            ctx.job_id, {"done": index + 1, "total": len(modes), "unit": "modes", "mode": name}
        )
    baseline = rows[0]["wall_s"]
    for row in rows:
        row["speedup_vs_" + rows[0]["mode"]] = (
            round(baseline / row["wall_s"], 3) if row["wall_s"] else None
        )
    comparison: dict[str, Any] = {
        "workload": workload,
        "baseline": rows[0]["mode"],
        "modes": rows,
        "params": spec["params"],
    }
    if workload == "sqd":
        energies = [r["energy"] for r in rows]
        comparison["max_energy_difference"] = max(energies) - min(energies)
    else:
        values = [r["value"] for r in rows]
        comparison["max_value_difference"] = max(values) - min(values)
    return comparison


def known_workloads() -> list[str]:
    return [w for w in SUPPORTED if w in VALIDATORS]
