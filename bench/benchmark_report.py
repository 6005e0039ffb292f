"""A benchmark report bundle from a live mesh: centralized vs distributed, with spread.

Runs one ``POST /workflows/benchmarks`` in the contract's shape and writes its report (the zip
of ``GET /workflows/benchmarks/{id}/report``: report.json, rows.csv, PNG plots) into ``--out``.
By default it starts a coordinator with 3 embedded nodes on 127.0.0.1; ``--api URL`` (and
``--api-key``) runs the same benchmark on an existing mesh instead, e.g. a coordinator whose
nodes are standalone ``qmesh node`` processes on other machines (there ``node_loss`` stops
nothing: only embedded nodes can be stopped, and the rows say so with ``nodes_lost: []``).

    .venv/bin/python bench/benchmark_report.py --out docs/benchmarks/knapsack-120
    .venv/bin/python bench/benchmark_report.py --workload circuit --circuits 8 --qubits 6 \
        --depth 8 --scenarios baseline degraded_node node_join --out docs/benchmarks/circuit-6q
    .venv/bin/python bench/benchmark_report.py --api http://coordinator:8000 --api-key KEY \\
        --items 200 --repetitions 5 --out /tmp/report
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from _live import start_coordinator


def knapsack(items: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    values = rng.integers(10, 100, size=items).tolist()
    weights = rng.integers(5, 60, size=items).tolist()
    return {"values": values, "weights": weights, "capacity": int(sum(weights) * 0.4), "seed": seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the report files")
    parser.add_argument("--api", help="an existing coordinator (default: start one here)")
    parser.add_argument("--api-key")
    parser.add_argument("--workload", choices=["qaoa_knapsack", "circuit"], default="qaoa_knapsack")
    parser.add_argument("--items", type=int, default=120, help="knapsack items")
    parser.add_argument("--circuits", type=int, default=8, help="circuits in the batch")
    parser.add_argument("--qubits", type=int, default=6, help="qubits per circuit")
    parser.add_argument("--depth", type=int, default=8, help="layers per circuit")
    parser.add_argument("--shots", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--node-counts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--scenarios", nargs="+", default=["baseline", "node_loss"])
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    coord = None if args.api else start_coordinator(nodes=max(args.node_counts))
    base = (args.api or coord.base_url).rstrip("/") + "/api/v1"  # type: ignore[union-attr]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    params = (
        knapsack(args.items, args.seed)
        if args.workload == "qaoa_knapsack"
        else {
            "count": args.circuits,
            "qubits": args.qubits,
            "depth": args.depth,
            "shots": args.shots,
            "seed": args.seed,
        }
    )
    body = {
        "workload": {"kind": args.workload, "params": params},
        "modes": ["centralized", "distributed"],
        "node_counts": args.node_counts,
        "repetitions": args.repetitions,
        "scenarios": args.scenarios,
    }
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
            r = http.post("/workflows/benchmarks", json=body)
            r.raise_for_status()
            benchmark_id = r.json()["benchmark_id"]
            print(f"benchmark {benchmark_id}: {len(args.node_counts) + 1} modes x "
                  f"{len(args.scenarios)} scenarios x {args.repetitions} repetitions")  # fmt: skip
            if coord is not None:
                done = coord.wait_job(
                    benchmark_id, timeout=args.timeout, path="/workflows/benchmarks/"
                )
            else:
                import time

                deadline = time.monotonic() + args.timeout
                while True:
                    done = http.get(f"/workflows/benchmarks/{benchmark_id}").json()
                    if done["status"] in {"COMPLETED", "FAILED", "CANCELLED"}:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"benchmark {benchmark_id} still {done['status']}")
                    time.sleep(2)
            if done["status"] != "COMPLETED":
                raise SystemExit(f"benchmark {done['status']}: {done.get('error')}")
            report = http.get(f"/workflows/benchmarks/{benchmark_id}/report")
            report.raise_for_status()
    finally:
        if coord is not None:
            coord.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(report.content)) as bundle:
        bundle.extractall(args.out)
    summary = done["summary"]
    print(json.dumps({k: summary[k] for k in ("speedup", "mesh_share_median")}, indent=2))
    for label, stats in summary["per_mode"].items():
        print(f"{label:>15}: median {stats['median_wall_s']:.2f} s, spread {stats['spread']}")
    print(f"same answer in every run: {summary['same_answer_in_every_run']}")
    print(f"report written to {args.out}")


if __name__ == "__main__":
    main()
