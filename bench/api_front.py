"""The API front beside one process, side by side: the same open-loop load on a coordinator
started with ``QMESH_API_FRONT=false`` and one started with the defaults (the front, its
runtime at ``QMESH_API_FRONT_RUNTIME_NICE``), alternating, a fresh coordinator for every run.

Each run is one rate of ``bench/api_load.py`` (same generator, same figures). Per round it
prints both rows and the ratios front / one process for submit p99, ``/health`` p99,
completed jobs/s and CPU per job; the machine's speed drifts between rounds, so compare
within a round. Bounded: every run is one submit window plus its drain.

    .venv/bin/python bench/api_front.py --rate 200 --seconds 20 --rounds 2
    .venv/bin/python bench/api_front.py --env QMESH_API_FRONT_RUNTIME_NICE=0   # front variant
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from _live import start_coordinator
from api_load import (
    LOAD_ENV,
    RateResult,
    env_pairs,
    header,
    log_findings,
    parse_args,
    row,
    run_rate,
    warm_up,
)

VARIANTS = (("one process", {"QMESH_API_FRONT": "false"}), ("front", {"QMESH_API_FRONT": "true"}))


def run_once(env: dict[str, str], load: argparse.Namespace, nodes: int) -> RateResult:
    coord = start_coordinator(nodes=nodes, env=env)
    try:
        warm = asyncio.run(warm_up(coord.base_url + "/api/v1", load.warmup))
        if any(status != "COMPLETED" for status in warm):
            print(f"warning: warm-up jobs ended {warm}", file=sys.stderr)
        pid = coord.proc.pid if coord.proc is not None else None
        return asyncio.run(run_rate(coord.base_url + "/api/v1", load.rate_list[0], load, pid))
    finally:
        coord.stop()
        findings = log_findings(coord.data_dir / "coordinator.log")
        if findings and (findings["error_lines"] or findings["tracebacks"]):
            print(f"  coordinator log: {findings['error_lines']} error lines ({findings['path']})")


def ratio(front: float | None, single: float | None) -> str:
    return "n/a" if not front or not single else f"{front / single:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rate", type=float, default=200.0, help="offered submits/s")
    p.add_argument("--seconds", type=float, default=20.0, help="submit window per run")
    p.add_argument("--rounds", type=int, default=2, help="pairs of runs, alternating")
    p.add_argument("--nodes", type=int, default=3, help="embedded service nodes")
    p.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra env, both variants"
    )
    args = p.parse_args()
    load = parse_args(["--rates", f"{args.rate:g}", "--seconds", f"{args.seconds:g}"])
    base = {**LOAD_ENV, **env_pairs(args.env)}
    print(f"{args.rate:g} submits/s open loop, {args.seconds:g} s, {args.nodes} nodes; ms")
    for round_no in range(1, args.rounds + 1):
        results = {}
        for name, env in VARIANTS:
            results[name] = run_once({**base, **env}, load, args.nodes)
        print(f"\nround {round_no}\n{'variant':>12} {header()}")
        for name, result in results.items():
            print(f"{name:>12} {row(result)}")
        front, single = results["front"], results["one process"]
        cpu = {k: sum(r.cpu_ms_per_job.values()) if r.cpu_ms_per_job else None
               for k, r in results.items()}  # fmt: skip
        print(
            f"front / one process: submit p99 {ratio(front.submit_p99_ms, single.submit_p99_ms)}"
            f", /health p99 {ratio(front.health_p99_ms, single.health_p99_ms)}"
            f", completed jobs/s {ratio(front.completed_per_s, single.completed_per_s)}"
            f", CPU per job {ratio(cpu['front'], cpu['one process'])}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
