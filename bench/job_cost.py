"""CPU cost of one Bell job: the coordinator process, its nodes, the document server.

Wall-clock throughput on a small shared machine swings by a quarter from run to run; the CPU
seconds a job costs each process barely do, and they are what bounds throughput (the
coordinator is one GIL-bound process). This starts a live coordinator with 3 embedded nodes,
warms it up, then submits ``--jobs`` Bell circuits (2 qubits, 256 shots) at ``--rate``
submits/s, below saturation so that no submit is refused, waits until all are finished and
reads the CPU time (user + system) every process spent meanwhile, from ``/proc`` (psutil):

* ``coordinator``: the API process (API loop, scheduler, database writer, libp2p thread);
* ``nodes``: the embedded node processes and their worker processes;
* ``other``: the rest of the coordinator's children (the embedded document server).

With ``--baseline DIR`` (a checkout of another commit, e.g. ``git worktree add /tmp/old
REV``) the same run is made with that tree's code, alternating ``--repeats`` times, and the
medians are printed side by side with their ratios:

    .venv/bin/python bench/job_cost.py --jobs 400 --rate 40 --repeats 3 --baseline /tmp/old
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx

from _live import PARTS, cpu_seconds, start_coordinator

BELL = (
    'OPENQASM 2.0; include "qelib1.inc"; qreg q[2]; creg c[2]; '
    "h q[0]; cx q[0],q[1]; measure q -> c;"
)
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
WARMUP_JOBS = 20
DRAIN_S = 120.0


async def _finished(http: httpx.AsyncClient, job_id: str) -> bool:
    return (await http.get(f"/jobs/{job_id}")).json()["status"] in TERMINAL


async def measure(base_url: str, pid: int, *, jobs: int, rate: float) -> dict[str, float]:
    """CPU milliseconds per accepted job, per part, over one window."""
    async with httpx.AsyncClient(base_url=base_url + "/api/v1", timeout=60) as http:
        for i in range(WARMUP_JOBS):
            body = {"circuit": BELL, "shots": 256, "seed": 10**6 + i}
            job_id = (await http.post("/circuits/submit", json=body)).json()["job_id"]
            for _ in range(int(DRAIN_S / 0.05)):  # bounded: a stuck job fails the run below
                if await _finished(http, job_id):
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"warm-up job {job_id} unfinished after {DRAIN_S:.0f} s")
        before = cpu_seconds(pid)
        accepted: list[str] = []

        async def submit(i: int) -> None:
            await asyncio.sleep(i / rate)
            r = await http.post("/circuits/submit", json={"circuit": BELL, "shots": 256, "seed": i})
            if r.status_code in (200, 202):
                accepted.append(r.json()["job_id"])

        await asyncio.gather(*(submit(i) for i in range(jobs)))
        deadline = time.monotonic() + DRAIN_S
        pending = list(accepted)
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            # one request per unfinished job at most, oldest first: most are done already
            still = []
            for job_id in pending:
                if still or not await _finished(http, job_id):
                    still.append(job_id)
            pending = still
        after = cpu_seconds(pid)
    if pending:
        raise RuntimeError(f"{len(pending)} jobs unfinished after {DRAIN_S:.0f} s")
    if len(accepted) < jobs:
        raise RuntimeError(f"only {len(accepted)} of {jobs} submits accepted: lower --rate")
    return {part: 1000 * (after[part] - before[part]) / len(accepted) for part in PARTS}


def one_run(tree: str | None, *, jobs: int, rate: float) -> dict[str, float]:
    env = {"QMESH_RATE_LIMIT_PER_MINUTE": "10000000"}
    if tree is not None:
        env.update(PYTHONPATH=f"{tree}/backend/src", QMESH_ALEMBIC_DIR=f"{tree}/alembic")
    coord = start_coordinator(nodes=3, env=env)
    try:
        assert coord.proc is not None
        return asyncio.run(measure(coord.base_url, coord.proc.pid, jobs=jobs, rate=rate))
    finally:
        coord.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--rate", type=float, default=40.0, help="submits/s, below saturation")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", help="a checkout of another commit to compare with")
    args = parser.parse_args()
    trees: list[tuple[str, str | None]] = [("this tree", None)]
    if args.baseline:
        trees.append(("baseline", args.baseline))
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in trees}
    for repeat in range(args.repeats):
        for label, tree in trees:  # alternating, so both see the same machine
            figures = one_run(tree, jobs=args.jobs, rate=args.rate)
            runs[label].append(figures)
            shown = "  ".join(f"{p} {figures[p]:.2f}" for p in PARTS)
            print(f"run {repeat + 1} {label:>9}: CPU ms per job  {shown}", flush=True)
    medians: dict[str, dict[str, Any]] = {
        label: {p: statistics.median(r[p] for r in rs) for p in PARTS} for label, rs in runs.items()
    }
    print(f"\nmedian CPU ms per Bell job ({args.jobs} jobs at {args.rate:g}/s, 3 nodes)")
    print(f"{'':>10} " + " ".join(f"{p:>12}" for p in PARTS))
    for label, m in medians.items():
        print(f"{label:>10} " + " ".join(f"{m[p]:>12.2f}" for p in PARTS))
    if args.baseline:
        ratio = {p: medians["this tree"][p] / medians["baseline"][p] for p in PARTS}
        print(f"{'ratio':>10} " + " ".join(f"{ratio[p]:>11.2f}x" for p in PARTS))


if __name__ == "__main__":
    main()
