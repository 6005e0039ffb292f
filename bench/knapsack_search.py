"""Knapsack search options side by side: quality against the DP optimum and block jobs spent.

Runs the QAOA beam search (``quantum/qaoa/beam.py``) in this process, block jobs solved by
the node's own block solver one after another (no mesh: this compares search strategies,
not transport), on strongly correlated instances (value = weight + 10, capacity 30 % of the
total weight, the hard case), for each variant of the search settings:

* ``base``: one block order, fixed beam (the defaults);
* ``adaptive``: the beam's width follows the slack (``beam_adaptive``);
* ``branches4``: four block orders side by side (``branches: 4``);
* ``repair``: the defaults, then the classical add/1-swap/2-swap repair (``repair: swap``);
  the search's own answer is printed beside it (``before``), so the QAOA part stays visible.

    .venv/bin/python bench/knapsack_search.py [--sizes 60 120] [--seeds 1 2 3]

Prints per size and variant: the mean and worst ratio to the optimum over the seeds, the
mean ratio before repair, block jobs per run, seconds per run (this process, one core) and
the dead ends stepped back from (``backtracks``), summed over the seeds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import numpy as np

from quantum_mesh.quantum.qaoa import beam, worker

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "adaptive": {"beam_adaptive": True},
    "branches4": {"branches": 4},
    "repair": {"repair": "swap"},
}


def correlated_instance(n: int, seed: int) -> tuple[list[int], list[int], int]:
    weights = np.random.default_rng(seed).integers(10, 101, size=n)
    return (weights + 10).tolist(), weights.tolist(), int(weights.sum() * 0.3)


def local_dispatch(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            **worker.solve_block(copy.deepcopy(p), peer_id="local", noise_level=0.0),
            "node_id": "local",
        }
        for p in payloads
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[60, 120])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    print(
        f"{'items':>5} {'variant':>10} {'ratio mean':>10} {'worst':>7} {'before':>7} "
        f"{'jobs/run':>8} {'s/run':>6} {'backtracks':>10}"
    )
    for n in args.sizes:
        for name in args.variants:
            ratios, before, jobs, seconds, backtracks = [], [], [], [], 0
            for seed in args.seeds:
                values, weights, capacity = correlated_instance(n, seed)
                started = time.perf_counter()
                result = beam.solve_knapsack(
                    values,
                    weights,
                    capacity,
                    dispatch=local_dispatch,
                    settings=beam.KnapsackSettings(**VARIANTS[name]),
                    seed=seed,
                )
                seconds.append(time.perf_counter() - started)
                ratios.append(result["ratio_to_optimum"])
                before.append(result["qaoa_value"] / result["optimum_value"])
                jobs.append(len(result["blocks"]))
                backtracks += len(result["backtracks"])
            print(
                f"{n:>5} {name:>10} {statistics.fmean(ratios):>10.4f} {min(ratios):>7.4f} "
                f"{statistics.fmean(before):>7.4f} {statistics.fmean(jobs):>8.1f} "
                f"{statistics.fmean(seconds):>6.1f} {backtracks:>10}"
            )


if __name__ == "__main__":
    main()
