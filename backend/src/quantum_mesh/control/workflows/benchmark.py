"""Comparative benchmarks: one workload, the same seed, run in several modes side by side.

Modes (``shared/CONTRACT.md``): ``centralized`` runs every unit in the coordinator's own
driver thread, one after another, no mesh; ``distributed`` runs on the mesh restricted to
each of ``node_counts`` nodes (a fixed subset by peer ID, so "N nodes" are the same N every
time). Every configuration runs ``repetitions`` times, and the runs alternate (A B A B …)
so that machine noise hits every mode alike. Each run is one row: wall time, the share of it
spent in the mesh, retried executions, the answer's quality and the workload's own answer.
The summary gives per-mode medians with their spread and the speedups.

The earlier body, ``{"workload": "qaoa_knapsack", "params", "node_counts", "include_local"}``,
is still accepted as a shorthand, and the earlier ``comparison`` (``local``/``mesh-N`` modes,
first repetition) is still part of the result.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Mapping
from typing import Any

from quantum_mesh.control import mesh_model
from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import JobHandle
from quantum_mesh.control.workflows.base import RunOptions, Workflow
from quantum_mesh.control.workflows.scenario_params import scenario_params_of, scenarios_of
from quantum_mesh.control.workflows.scenarios import disturbance_delay, scenario_run
from quantum_mesh.errors import InvalidInput

BENCHMARK_KIND = "benchmark"
SUPPORTED = ("circuit", "qaoa_knapsack", "qaoa_knapsack_batch", "sqd")
MODES = ("centralized", "distributed")
MAX_NODE_COUNT = 16
MAX_REPETITIONS = 10


def _quality(workload: str, result: dict[str, Any]) -> dict[str, Any]:
    """The earlier comparison's per-mode figures (kept for its readers)."""
    timing = result.get("timing", {})
    if workload == "circuit":
        return {
            "value": result["hellinger_fidelity_mean"],
            "tvd_mean": result["tvd_mean"],
            "mesh_s": timing.get("mesh_s"),
            "fragments": result["fragments"],
            "nodes_used": result["nodes_used"],
        }
    if workload == "qaoa_knapsack_batch":
        summary = result["summary"]
        instances = result["instances"]
        return {
            "value": summary["total_value"],
            "optimum_value": summary["optimum_value"],
            "instances": summary["instances"],
            "mean_ratio_to_optimum": summary["mean_ratio_to_optimum"],
            "min_ratio_to_optimum": summary["min_ratio_to_optimum"],
            "qaoa_s": sum(float(e.get("qaoa_s") or 0.0) for e in instances),
            "nodes_used": sorted({n for e in instances for n in e.get("nodes_used", [])}),
        }
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
        "batch_cpu_seconds_sum": timing.get("batch_cpu_seconds_sum"),
        "nodes_used": sorted({b["node_id"] for b in result.get("batches", []) if b.get("node_id")}),
    }


def _row_figures(workload: str, result: dict[str, Any], wall: float, local: bool) -> dict[str, Any]:
    """``mesh_share``, ``retries``, ``quality`` and ``result`` of one run (the contract's row)."""
    timing = result.get("timing", {})
    if workload == "circuit":
        mesh_s = 0.0 if local else float(timing.get("mesh_s") or 0.0)
        return {
            "mesh_share": round(min(1.0, mesh_s / wall), 4) if wall else None,
            "retries": result["retries"],
            "quality": result["hellinger_fidelity_mean"],
            "result": {
                "shots": result["shots"],
                "circuits": [
                    {k: c[k] for k in ("index", "outcomes", "top_counts", "counts_sha256")}
                    for c in result["circuits"]
                ],
            },
        }
    if workload == "qaoa_knapsack_batch":
        return _batch_figures(result, wall, local)
    units = result.get("blocks") if workload == "qaoa_knapsack" else result.get("batches")
    retries = sum(max(0, int(u.get("attempts") or 1) - 1) for u in units or [])
    if workload == "qaoa_knapsack":
        mesh_s = 0.0 if local else float(timing.get("mesh_s") or 0.0)
        return {
            "mesh_share": round(mesh_s / wall, 4) if wall else None,
            "retries": retries,
            "profile": _knapsack_profile(result),
            "quality": result["ratio_to_optimum"],
            "result": {
                "selected": result["selected"],
                "total_value": result["total_value"],
                "total_weight": result["total_weight"],
                "optimum_value": result["optimum_value"],
            },
        }
    # SQD: the loop's time not spent solving batches is the coordinator's and the mesh's;
    # with batches in parallel on N nodes, their solving time is spread over N.
    loop_s = float(timing.get("sqd_loop_s") or 0.0)
    nodes = max(1, len({b.get("node_id") for b in units or [] if b.get("node_id")}))
    solving = float(timing.get("batch_seconds_sum") or 0.0) / nodes
    mesh_share = 0.0 if local or not wall else max(0.0, loop_s - solving) / wall
    error = result.get("error_mha")
    return {
        "mesh_share": round(mesh_share, 4),
        "retries": retries,
        "quality": None if error is None else -abs(float(error)),
        "result": {"energy": result["energy"], "reference_energy": result.get("reference_energy")},
    }


def _batch_figures(result: dict[str, Any], wall: float, local: bool) -> dict[str, Any]:
    """A batch's row. Its instances' rounds overlap, so the mesh share is the wall time not
    explained by the block jobs' QAOA seconds spread over the nodes that ran them (as for
    SQD's batches), not a sum of per-round waits."""
    instances = result["instances"]
    qaoa = sum(float(e.get("qaoa_s") or 0.0) for e in instances)
    nodes = max(1, len({n for e in instances for n in e.get("nodes_used", [])}))
    mesh_share = 0.0 if local or not wall else max(0.0, wall - qaoa / nodes) / wall
    summary = result["summary"]
    return {
        "mesh_share": round(mesh_share, 4),
        "retries": sum(int(e.get("retries") or 0) for e in instances),
        "quality": summary["mean_ratio_to_optimum"],
        "result": {
            "total_value": summary["total_value"],
            "optimum_value": summary["optimum_value"],
            "values": [e["total_value"] for e in instances],
        },
    }


def _knapsack_profile(result: dict[str, Any]) -> dict[str, Any] | None:
    """What the run was made of, for the mesh model (``control/mesh_model.py``): block
    jobs per block (a round: the search waits for all of them), a block job's median
    compute seconds, and the driver's own classical seconds."""
    blocks = result.get("blocks") or []
    seconds = [float(b["seconds"]) for b in blocks if b.get("seconds") is not None]
    if not blocks or not seconds:
        return None
    per_block: dict[int, int] = {}
    for b in blocks:
        per_block[int(b["block_index"])] = per_block.get(int(b["block_index"]), 0) + 1
    return {
        "rounds": [per_block[k] for k in sorted(per_block)],
        "unit_s": round(statistics.median(seconds), 6),
        "classical_s": round(float(result.get("timing", {}).get("master_s") or 0.0), 6),
    }


def _modes_of(body: dict[str, Any]) -> list[str]:
    modes = body.get("modes")
    if modes is None:  # the shorthand: include_local says whether the baseline runs
        return (["centralized"] if body.get("include_local", True) else []) + ["distributed"]
    if (
        not isinstance(modes, list)
        or not modes
        or any(m not in MODES for m in modes)
        or len(set(modes)) != len(modes)
    ):
        raise InvalidInput(
            f"modes must be a non-empty list of distinct names from {list(MODES)}",
            details={"field": "modes", "valid": list(MODES)},
        )
    return [m for m in MODES if m in modes]


class BenchmarkWorkflow:
    kind = BENCHMARK_KIND
    service_type = ""

    def __init__(self, workloads: Mapping[str, Workflow]) -> None:
        self.workloads = workloads

    async def validate(self, body: dict[str, Any], compute: ComputePools) -> dict[str, Any]:
        workload = body.get("workload")
        params = body.get("params")
        if isinstance(workload, dict):  # the contract's shape: {"kind", "params"}
            if params:
                raise InvalidInput(
                    'params go inside workload ({"workload": {"kind", "params"}})',
                    details={"field": "params"},
                )
            spec: dict[str, Any] = workload
            workload, params = spec.get("kind"), spec.get("params")
        if workload not in SUPPORTED:
            raise InvalidInput(
                f"workload must be one of {list(SUPPORTED)}",
                details={"field": "workload", "workload": str(workload)[:40]},
            )
        node_counts = body.get("node_counts", [1, 2, 3])
        if (
            not isinstance(node_counts, list)
            or not node_counts
            or not all(
                isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_NODE_COUNT
                for n in node_counts
            )
        ):
            raise InvalidInput(
                f"node_counts must be a non-empty list of integers in 1..{MAX_NODE_COUNT}",
                details={"field": "node_counts"},
            )
        repetitions = body.get("repetitions", 1)
        if (
            isinstance(repetitions, bool)
            or not isinstance(repetitions, int)
            or not 1 <= repetitions <= MAX_REPETITIONS
        ):
            raise InvalidInput(
                f"repetitions must be an integer in 1..{MAX_REPETITIONS}",
                details={"field": "repetitions"},
            )
        modes = _modes_of(body)
        scenarios = scenarios_of(body)
        scenario_params = scenario_params_of(body, scenarios)
        checked = await self.workloads[str(workload)].validate(dict(params or {}), compute)
        return {
            "workload": workload,
            "params": checked,
            "modes": modes,
            "node_counts": sorted(set(node_counts)),
            "repetitions": repetitions,
            "scenarios": scenarios,
            **({"scenario_params": scenario_params} if scenario_params else {}),
            "include_local": "centralized" in modes,
            "warmup": bool(body.get("warmup", True)),
        }

    async def run(
        self, handle: JobHandle, spec: dict[str, Any], options: RunOptions
    ) -> dict[str, Any]:
        name_of_workload = spec["workload"]
        workload = self.workloads[name_of_workload]
        modes = spec.get("modes") or _modes_of(spec)
        configs: list[tuple[str, int | None]] = []
        if "centralized" in modes:
            configs.append(("centralized", None))
        if "distributed" in modes:
            configs += [("distributed", n) for n in spec["node_counts"]]
        repetitions = int(spec.get("repetitions", 1))
        scenarios = list(spec.get("scenarios", ["baseline"]))
        total = repetitions * len(scenarios) * len(configs)
        if spec.get("warmup", True):
            # One untimed run per mode first: the first run in a fresh process pays for
            # imports, compiled kernels and connection set-up that no later run pays again.
            for mode, count in configs:
                await self._one_run(handle, workload, spec, mode, count)
        rows: list[dict[str, Any]] = []
        legacy: list[dict[str, Any]] = []
        for repetition in range(repetitions):
            for scenario in scenarios:
                for mode, count in configs:  # alternating: A B A B …
                    row, figures = await self._one_run(
                        handle,
                        workload,
                        spec,
                        mode,
                        count,
                        scenario,
                        after=disturbance_delay(scenario, rows, mode, count),
                    )
                    rows.append({**row, "scenario": scenario, "repetition": repetition})
                    if repetition == 0 and scenario == scenarios[0]:
                        legacy.append(figures)
                    await handle.progress(
                        {
                            "done": len(rows),
                            "total": total,
                            "unit": "runs",
                            "mode": _label(mode, count),
                            "repetition": repetition,
                            "scenario": scenario,
                        }
                    )
        return {
            **_comparison(name_of_workload, spec["params"], legacy),
            "rows": rows,
            "summary": _summary(rows, configs, scenarios),
            # Simulations: CPU work, off the API loop.
            "model": await asyncio.to_thread(mesh_model.validate, rows),
        }

    async def _one_run(
        self,
        handle: JobHandle,
        workload: Workflow,
        spec: dict[str, Any],
        mode: str,
        count: int | None,
        scenario: str = "baseline",
        *,
        after: float | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        local = count is None
        spare = handle.joiner.peer_id if handle.joiner is not None else None
        offering = [p for p in handle.nodes_offering(workload.service_type) if p != spare]
        chosen = None if local else offering[:count]
        async with scenario_run(
            handle,
            scenario,
            chosen,
            kill_after=after if scenario == "node_loss" else None,
            join_after=after if scenario == "node_join" else None,
            profile=spec.get("scenario_params", {}).get(scenario),
        ) as setup:
            nodes = None if local else frozenset(setup.nodes)
            sub = RunOptions(nodes=nodes, local=local, durable=False)
            started = time.perf_counter()
            result = await workload.run(handle, spec["params"], sub)
            wall = time.perf_counter() - started
        row = {
            "mode": mode,
            "nodes": 0 if local else count,
            "wall_s": round(wall, 4),
            **_row_figures(spec["workload"], result, wall, local),
            **setup.record,
        }
        figures = {
            "mode": "local" if local else f"mesh-{count}",
            "nodes": count,
            "wall_s": round(wall, 4),
            **_quality(spec["workload"], result),
        }
        return row, figures


def _label(mode: str, count: int | None) -> str:
    return mode if count is None else f"{mode}-{count}"


def _comparison(
    workload: str, params: dict[str, Any], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The earlier result shape: one row per mode (``local``, ``mesh-N``), first repetition."""
    baseline = rows[0]["wall_s"]
    for row in rows:
        row["speedup_vs_" + rows[0]["mode"]] = (
            round(baseline / row["wall_s"], 3) if row["wall_s"] else None
        )
    comparison: dict[str, Any] = {
        "workload": workload,
        "baseline": rows[0]["mode"],
        "modes": rows,
        "params": params,
    }
    key = "energy" if workload == "sqd" else "value"
    values = [r[key] for r in rows]
    comparison[f"max_{key}_difference"] = max(values) - min(values)
    return comparison


def _stats(walls: list[float]) -> dict[str, Any]:
    median = statistics.median(walls)
    return {
        "runs": len(walls),
        "median_wall_s": round(median, 4),
        "min_wall_s": round(min(walls), 4),
        "max_wall_s": round(max(walls), 4),
        # Relative spread: how far apart the fastest and slowest run are, against the median.
        "spread": round((max(walls) - min(walls)) / median, 4) if median else None,
    }


def _label_of(row: dict[str, Any]) -> str:
    return _label(row["mode"], None if row["mode"] == "centralized" else row["nodes"])


def _summary(
    rows: list[dict[str, Any]], configs: list[tuple[str, int | None]], scenarios: list[str]
) -> dict[str, Any]:
    labels = [_label(mode, count) for mode, count in configs]

    def of(label: str, scenario: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in rows
            if _label_of(r) == label and (scenario is None or r["scenario"] == scenario)
        ]

    # Speedups and per-mode figures come from the first scenario (baseline, normally): a
    # node_loss run measures recovery, not the mode.
    first = scenarios[0]
    per_mode = {label: _stats([r["wall_s"] for r in of(label, first)]) for label in labels}
    reference = labels[0]
    speedup = {
        label: round(per_mode[reference]["median_wall_s"] / stats["median_wall_s"], 3)
        for label, stats in per_mode.items()
        if label != reference and stats["median_wall_s"]
    }
    shares = {
        label: [r["mesh_share"] for r in of(label, first) if r["mesh_share"] is not None]
        for label in labels
    }
    answers = {str(sorted(r["result"].items())) for r in rows}
    return {
        "scenario": first,
        "reference": reference,
        "speedup": speedup,
        "per_mode": per_mode,
        "per_scenario": {
            scenario: {
                label: _stats([r["wall_s"] for r in of(label, scenario)]) for label in labels
            }
            for scenario in scenarios
        },
        "mesh_share_median": {
            label: statistics.median(values) if values else None for label, values in shares.items()
        },
        "same_answer_in_every_run": len(answers) == 1,
    }
