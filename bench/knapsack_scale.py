"""Distributed QAOA knapsack: quality and wall time for 60/120/200 items, 1 vs 2 vs 3 nodes.

Starts a real coordinator with 3 embedded service nodes on 127.0.0.1 and runs each instance
(same seed) through ``POST /workflows/benchmarks`` in every mode, one after another:
``local`` (all block jobs solved in the coordinator process, no mesh) and the mesh restricted
to 1, 2 and 3 nodes. Prints, side by side: ratio to the DP optimum, ratio to greedy, wall
time, speedup against 1 node, and the share of wall time spent in the mesh vs in QAOA.

    .venv/bin/python bench/knapsack_scale.py [--sizes 60 120 200] [--seed 1]

``--repeats N`` runs every mode N times, alternating (local, mesh-1, mesh-2, mesh-3, local,
...), so each mode sees the same machine; it prints every run, each run's speedup over the
local run just before it, and the medians. On a small shared machine one run per mode is
not enough to tell 10 % apart:

    .venv/bin/python bench/knapsack_scale.py --sizes 200 --repeats 5

``--block-size B`` sets the items per block (default 12). Each block job costs about 2^B
amplitudes per energy evaluation while a round's mesh overhead stays the same, so larger
blocks are where distribution pays (docs/qaoa.md, "When the mesh pays"):

    .venv/bin/python bench/knapsack_scale.py --sizes 200 --block-size 16 --repeats 3

``--correlated`` uses strongly correlated instances instead (value = weight + 10, capacity
30 % of the total weight: every value/weight ratio alike, the hard case for one block
order) and ``--branches K`` searches K block orders side by side (docs/qaoa.md §4):

    .venv/bin/python bench/knapsack_scale.py --correlated --sizes 60 120 --branches 1 4
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable

import numpy as np

from _live import run_benchmark, start_coordinator


def correlated_instance(n: int, seed: int) -> tuple[list[int], list[int], int]:
    weights = np.random.default_rng(seed).integers(10, 101, size=n)
    return (weights + 10).tolist(), weights.tolist(), int(weights.sum() * 0.3)


def instance(n: int, seed: int) -> tuple[list[int], list[int], int]:
    rng = np.random.default_rng(seed)
    values = rng.integers(10, 100, size=n).tolist()
    weights = rng.integers(5, 60, size=n).tolist()
    return values, weights, int(sum(weights) * 0.4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[60, 120, 200])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the comparisons to this file")
    parser.add_argument("--correlated", action="store_true", help="strongly correlated items")
    parser.add_argument(
        "--branches", type=int, nargs="+", default=[1], help="block orders per run, each compared"
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=12,
        help="items per QAOA block (qubits per block job; the workflow's default is 12)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per mode, alternating (medians printed)"
    )
    args = parser.parse_args()
    coord = start_coordinator(nodes=3)
    comparisons = []
    try:
        print(
            f"{'items':>5} {'mode':>7} {'ratio/opt':>9} {'vs greedy':>9} {'wall s':>7} "
            f"{'speedup':>7} {'mesh %':>6} {'qaoa s':>7} {'nodes':>5} {'branches':>8}"
        )
        make = correlated_instance if args.correlated else instance
        for n, branches in [(n, b) for n in args.sizes for b in args.branches]:
            values, weights, capacity = make(n, args.seed)
            cmp = run_benchmark(
                coord,
                {
                    "workload": "qaoa_knapsack",
                    "params": {
                        "values": values,
                        "weights": weights,
                        "capacity": capacity,
                        "seed": args.seed,
                        "branches": branches,
                        "block_size": args.block_size,
                    },
                    "node_counts": [1, 2, 3],
                    "include_local": True,
                    "repetitions": args.repeats,
                },
                timeout=1800,
            )
            comparisons.append(cmp)
            one_node = next(m for m in cmp["modes"] if m["mode"] == "mesh-1")["wall_s"]
            for m in cmp["modes"]:
                mesh_share = 100 * (m["mesh_s"] or 0) / m["wall_s"]
                print(
                    f"{n:>5} {m['mode']:>7} {m['ratio_to_optimum']:>9.4f} "
                    f"{m['ratio_to_greedy']:>9.4f} "
                    f"{m['wall_s']:>7.2f} {one_node / m['wall_s']:>6.2f}x {mesh_share:>5.1f}% "
                    f"{m['qaoa_s']:>7.2f} {len(m['nodes_used']):>5} {branches:>8}"
                )
            if args.repeats > 1:
                _print_repeats(cmp)
            same = cmp["max_value_difference"] == 0 and cmp["summary"]["same_answer_in_every_run"]
            print(f"      same answer in every mode: {same}")
    finally:
        coord.stop()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(comparisons, fh, indent=2)


def _print_repeats(cmp: dict) -> None:
    """Every run of every mode, its speedup over the local run of the same repetition, and
    the medians (the table above is the first repetition only)."""
    rows = cmp["rows"]
    local = {r["repetition"]: r["wall_s"] for r in rows if r["mode"] == "centralized"}
    labels = sorted({r["nodes"] for r in rows if r["mode"] == "distributed"})
    print(f"      {'mode':>7} {'wall s, run by run':>32}  {'speedup over local, run by run':>34}")
    print(f"      {'local':>7} {_list(local.values()):>32}")
    for nodes in labels:
        runs = [r for r in rows if r["mode"] == "distributed" and r["nodes"] == nodes]
        speedups = [local[r["repetition"]] / r["wall_s"] for r in runs]
        shares = [100 * r["mesh_share"] for r in runs if r.get("mesh_share") is not None]
        print(
            f"      {'mesh-' + str(nodes):>7} {_list(r['wall_s'] for r in runs):>32}  "
            f"{_list(speedups):>34}  median {statistics.median(speedups):.2f}x, "
            f"mesh share median {statistics.median(shares):.1f}%"
        )


def _list(values: Iterable[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
