"""Comparative benchmarks: one workload, the same seed, run in several modes side by side.

Modes are ``local`` (every unit solved in the coordinator's driver thread, one after
another: the centralised baseline) and ``mesh`` restricted to 1, 2, 3 … nodes. The result
gives wall times, speedups against the baseline and the quality of each answer, so
distribution is judged by the same instance and seed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import JobHandle
from quantum_mesh.control.workflows.base import RunOptions, Workflow
from quantum_mesh.errors import InvalidInput

BENCHMARK_KIND = "benchmark"
SUPPORTED = ("qaoa_knapsack", "sqd")
MAX_NODE_COUNT = 16


def _quality(workload: str, result: dict[str, Any]) -> dict[str, Any]:
    timing = result.get("timing", {})
    if workload == "qaoa_knapsack":
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


class BenchmarkWorkflow:
    kind = BENCHMARK_KIND
    service_type = ""

    def __init__(self, workloads: Mapping[str, Workflow]) -> None:
        self.workloads = workloads

    async def validate(self, body: dict[str, Any], compute: ComputePools) -> dict[str, Any]:
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
        params = await self.workloads[str(workload)].validate(
            dict(body.get("params") or {}), compute
        )
        return {
            "workload": workload,
            "params": params,
            "node_counts": sorted(set(node_counts)),
            "include_local": bool(body.get("include_local", True)),
        }

    async def run(
        self, handle: JobHandle, spec: dict[str, Any], options: RunOptions
    ) -> dict[str, Any]:
        name_of_workload = spec["workload"]
        workload = self.workloads[name_of_workload]
        modes: list[tuple[str, int | None]] = []
        if spec["include_local"]:
            modes.append(("local", None))
        modes += [(f"mesh-{n}", n) for n in spec["node_counts"]]
        rows: list[dict[str, Any]] = []
        for index, (name, count) in enumerate(modes):
            # A fixed subset (by peer ID), so "N nodes" means the same N nodes for the mode.
            nodes = (
                None
                if count is None
                else frozenset(handle.nodes_offering(workload.service_type)[:count])
            )
            sub = RunOptions(nodes=nodes, local=count is None, durable=False)
            started = time.perf_counter()
            result = await workload.run(handle, spec["params"], sub)
            wall = time.perf_counter() - started
            rows.append(
                {
                    "mode": name,
                    "nodes": count,
                    "wall_s": round(wall, 4),
                    **_quality(name_of_workload, result),
                }
            )
            await handle.progress(
                {"done": index + 1, "total": len(modes), "unit": "modes", "mode": name}
            )
        baseline = rows[0]["wall_s"]
        for row in rows:
            row["speedup_vs_" + rows[0]["mode"]] = (
                round(baseline / row["wall_s"], 3) if row["wall_s"] else None
            )
        comparison: dict[str, Any] = {
            "workload": name_of_workload,
            "baseline": rows[0]["mode"],
            "modes": rows,
            "params": spec["params"],
        }
        key = "energy" if name_of_workload == "sqd" else "value"
        values = [r[key] for r in rows]
        comparison[f"max_{key}_difference"] = max(values) - min(values)
        return comparison
