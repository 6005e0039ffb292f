"""Node calls and wall time of circuit jobs with fused fragments and with one service per call.

A fragment is one node call (reservation, invoke, execution events, fragment row). Fusing
lets one call hold operations of several services when a node offers them all
(``QMESH_FUSE_FRAGMENTS``, docs/control-plane.md §5). This starts a live coordinator with 3
embedded nodes per mode, alternating the modes ``--repeats`` times, and runs the same seeded
random circuits one after another in each (one job at a time: what one user waits for). It
prints, per circuit size, the fragments per job and the median wall time from submit to
COMPLETED, side by side, with their ratios; every job's probabilities are compared with the
other mode's (same circuit, same answer).

    .venv/bin/python bench/circuit_calls.py --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from qiskit import qasm2
from qiskit.circuit.random import random_circuit

from _live import LiveCoordinator, start_coordinator

#: (qubits, depth) of the random circuits; Bell is the 2-qubit line.
SIZES = ((2, 0), (5, 10), (10, 40))
BELL = 'OPENQASM 2.0; include "qelib1.inc"; qreg q[2]; h q[0]; cx q[0],q[1];'
MODES = {"fused": "true", "one service per call": "false"}


def circuits(per_size: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for qubits, depth in SIZES:
        label = "bell" if depth == 0 else f"{qubits}q depth {depth}"
        out[label] = (
            [BELL] * per_size
            if depth == 0
            else [
                qasm2.dumps(random_circuit(qubits, depth, max_operands=2, seed=s))
                for s in range(per_size)
            ]
        )
    return out


def run_one(coord: LiveCoordinator, text: str) -> tuple[float, int, dict[str, float]]:
    started = time.perf_counter()
    r = coord.http.post("/circuits/submit", json={"circuit": text, "shots": 256, "seed": 1})
    r.raise_for_status()
    job = coord.wait_job(r.json()["job_id"], timeout=300)
    wall = time.perf_counter() - started
    if job["status"] != "COMPLETED":
        raise RuntimeError(f"job {job['job_id']} ended {job['status']}: {job['error']}")
    return wall, len(job["fragment_results"]), job["quantum_result"]["probabilities"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of both modes")
    parser.add_argument("--per-size", type=int, default=5, help="circuits per size")
    args = parser.parse_args()
    jobs = circuits(args.per_size)
    walls: dict[tuple[str, str], list[float]] = {}
    calls: dict[tuple[str, str], list[int]] = {}
    answers: dict[tuple[str, str, int], dict[str, float]] = {}
    for round_ in range(args.repeats):
        for mode, flag in MODES.items():
            coord = start_coordinator(nodes=3, env={"QMESH_FUSE_FRAGMENTS": flag})
            try:
                for text in jobs["bell"][:2]:  # warm-up
                    run_one(coord, text)
                for label, texts in jobs.items():
                    for i, text in enumerate(texts):
                        wall, n, probs = run_one(coord, text)
                        walls.setdefault((label, mode), []).append(wall)
                        calls.setdefault((label, mode), []).append(n)
                        answers[(label, mode, i)] = probs
            finally:
                coord.stop()
            print(f"round {round_ + 1}: {mode} done", flush=True)
    fused, plain = MODES
    print(
        f"\n{'circuits':<16}{'calls/job fused':>16}{'plain':>8}{'ratio':>8}"
        f"{'wall ms fused':>15}{'plain':>9}{'ratio':>8}"
    )
    for label in jobs:
        cf, cp = (statistics.mean(calls[(label, m)]) for m in (fused, plain))
        wf, wp = (1000 * statistics.median(walls[(label, m)]) for m in (fused, plain))
        print(
            f"{label:<16}{cf:>16.1f}{cp:>8.1f}{cp / cf:>7.2f}x{wf:>15.1f}{wp:>9.1f}{wp / wf:>7.2f}x"
        )
    worst = max(
        _difference(probs, answers[(label, plain, i)])
        for (label, mode, i), probs in answers.items()
        if mode == fused
    )
    print(f"largest probability difference between the modes: {worst:.1e}")


def _difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(abs(float(a.get(k, 0.0)) - float(b.get(k, 0.0))) for k in set(a) | set(b))


if __name__ == "__main__":
    main()
