"""SQD batch diagonalisations: sequential in one process vs in parallel on 2 and 3 nodes.

Runs the same SQD (same seed, same settings) with different ``solve_batches`` callables and
prints wall time, speedup and the largest energy difference between the modes (final and
per batch; must be <= 1e-10 Ha). Parallel modes: a local process pool of spawned workers
(one OpenMP/OpenBLAS thread each, warmed up before timing), and the real thing: a live
coordinator whose batches go over the libp2p mesh to 2 and 3 service nodes
(``--mesh-nodes``; the mesh figures time sampling + the SQD loop, as the other rows do).

    .venv/bin/python bench/sqd_parallel.py            # N2 / cc-pVDZ, (10e, 12o)
    .venv/bin/python bench/sqd_parallel.py --quick    # N2 / 6-31G, (10e, 10o)
    .venv/bin/python bench/sqd_parallel.py --large --preset accurate   # (10e, 14o), < 1.6 mHa

``--large`` is N2 / cc-pVDZ with a (10e, 14o) active space (where SQD's accuracy, not its
speed, is the question: bench/sqd_accuracy.py and docs/sqd.md); ``--preset`` runs every mode
with an SQD settings preset (``accurate``: 8 recovery iterations). A (10e, 14o) run with
the preset takes tens of minutes per mode on 2 cores.
"""

from __future__ import annotations

import os

# OpenBLAS reads this once, when numpy loads: limit it before anything imports numpy, so the
# in-process sequential baseline runs under the same BLAS setting as the pool workers (two
# BLAS threads next to pyscf's OpenMP threads made batch solves ~5x slower on 2 cores).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import psutil

from quantum_mesh.quantum.sqd.local_pool import (
    process_pool_solver,
    start_process_pool,
)
from quantum_mesh.quantum.sqd.loop import (
    SolveBatches,
    run_sqd,
    solve_batches_locally,
)
from quantum_mesh.quantum.sqd.problem import ActiveSpaceProblem, build_from_molecule
from quantum_mesh.quantum.sqd.reference import exact_energy
from quantum_mesh.quantum.sqd.settings import PRESETS, SQDSettings

N2_GEOMETRY = "N 0 0 0; N 0 0 1.1"
TOLERANCE_HA = 1e-10


@dataclass(frozen=True)
class Mode:
    label: str
    workers: int
    threads_per_worker: int
    seconds: float
    result: dict[str, Any]
    #: CPU seconds the hypervisor gave to others meanwhile (both cores together).
    stolen_s: float = 0.0
    #: "sequential", "pool" or "mesh": which rows are compared run by run.
    kind: str = "sequential"


def time_mode(
    *,
    label: str,
    workers: int,
    threads_per_worker: int,
    problem: ActiveSpaceProblem,
    settings: SQDSettings,
    solve_batches: SolveBatches,
    kind: str = "sequential",
) -> Mode:
    """Wall time of one full SQD run whose batches go through ``solve_batches``."""
    start, stolen = time.perf_counter(), _stolen_s()
    result = run_sqd(
        problem, settings=settings, solve_batches=solve_batches, compute_reference=False
    )
    return Mode(
        label,
        workers,
        threads_per_worker,
        time.perf_counter() - start,
        result,
        _stolen_s() - stolen,
        kind,
    )


def largest_difference(first: dict[str, Any], second: dict[str, Any]) -> float:
    """Max |dE| over the final energies and every (iteration, batch) energy of two runs."""
    difference = abs(first["energy"] - second["energy"])
    if not second["batches"]:  # mesh modes report the final energy only
        return difference
    other = {(b["iteration"], b["batch"]): b["energy"] for b in second["batches"]}
    if len(other) != len(first["batches"]):
        return float("inf")
    for batch in first["batches"]:
        theirs = other.get((batch["iteration"], batch["batch"]))
        if (theirs is None) != (batch["energy"] is None):
            return float("inf")
        if theirs is not None:
            difference = max(difference, abs(batch["energy"] - theirs))
    return difference


def mesh_modes(
    coord: Any,
    args: argparse.Namespace,
    *,
    n_orbitals: int,
    basis: str,
    preset: dict[str, Any],
    run: str,
    warmup: bool,
) -> list[Mode]:
    """The same run on a live coordinator (embedded nodes, 1 worker x 1 thread each), batches
    dispatched over the libp2p mesh to N nodes. Timed: sampling + SQD loop, as above."""
    from _live import run_benchmark

    stolen = _stolen_s()
    cmp = run_benchmark(
        coord,
        {
            "workload": "sqd",
            "params": {
                "molecule": {
                    "atom": N2_GEOMETRY,
                    "basis": basis,
                    "active_orbitals": n_orbitals,
                    "active_electrons": 10,
                },
                "seed": args.seed,
                **preset,
            },
            "node_counts": args.mesh_nodes,
            "include_local": False,
            # The benchmark's untimed first run warms the nodes' workers; once is enough.
            "warmup": warmup,
        },
        timeout=3600,
    )
    # Over the whole benchmark call: its warm-up run and exact reference included.
    stolen_s = _stolen_s() - stolen
    out = []
    for row in cmp["modes"]:
        result = {
            "energy": row["energy"],
            "batches": [],
            "iterations": [],
            "timing": {
                "batch_seconds_sum": row["batch_seconds_sum"],
                "batch_cpu_seconds_sum": row.get("batch_cpu_seconds_sum"),
            },
        }
        out.append(
            Mode(
                f"libp2p mesh, {row['nodes']} nodes x 1 worker x 1 thread{run}",
                row["nodes"],
                1,
                row["sqd_s"],
                result,
                stolen_s,
                "mesh",
            )
        )
    return out


def _mesh_against_pool(modes: list[Mode]) -> list[float]:
    """Per repeat: the pool's wall time over the mesh's for the same worker/node count (the
    ratio of their speedups), pairing the k-th pool row with the k-th mesh row."""
    ratios = []
    for workers in sorted({m.workers for m in modes if m.kind == "pool"}):
        pools = [m for m in modes if m.kind == "pool" and m.workers == workers]
        meshes = [m for m in modes if m.kind == "mesh" and m.workers == workers]
        ratios += [p.seconds / m.seconds for p, m in zip(pools, meshes, strict=False)]
    return ratios


def _stolen_s() -> float:
    """CPU seconds the hypervisor gave to others so far, all cores (0 where not reported)."""
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N2 / 6-31G (10e, 10o) instead")
    parser.add_argument("--large", action="store_true", help="N2 / cc-pVDZ (10e, 14o) instead")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="an SQD settings preset")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 3])
    parser.add_argument(
        "--sequential-threads",
        type=int,
        nargs="+",
        help="OpenMP threads of the sequential runs (default: 1 and all cores)",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--mesh-nodes",
        type=int,
        nargs="*",
        default=[2, 3],
        help="also run on a live coordinator's mesh with this many nodes",
    )
    parser.add_argument(
        "--no-process-pool", action="store_true", help="skip the local process-pool stand-in"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the process pool(s) and the mesh this many times, alternating (this machine's "
        "speed drifts over minutes: compare runs taken side by side)",
    )
    args = parser.parse_args(argv)

    basis, n_orbitals = (
        ("6-31g", 10) if args.quick else ("cc-pvdz", 14) if args.large else ("cc-pvdz", 12)
    )
    problem = build_from_molecule(
        atom=N2_GEOMETRY, basis=basis, active_orbitals=n_orbitals, active_electrons=10
    )
    preset = {} if args.preset is None else {"preset": args.preset}
    settings = SQDSettings.from_dict({"seed": args.seed, **preset})
    cores = os.cpu_count() or 1
    print(f"problem: {problem.description}")
    print(f"settings: {settings}")
    print(f"machine: {cores} CPU cores, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")

    started = time.perf_counter()
    reference = exact_energy(problem, spin_sq=settings.spin_sq)
    reference_s = time.perf_counter() - started

    # Warm up this process (imports, first-call costs of the recovery loop) before timing,
    # as the pool workers are warmed up before theirs.
    run_sqd(
        problem,
        settings=SQDSettings(seed=args.seed, n_batches=1, samples_per_batch=20, max_iterations=2),
        solve_batches=solve_batches_locally,
        compute_reference=False,
    )

    modes = [
        time_mode(
            label=f"sequential, 1 process x {threads} OpenMP thread(s)",
            workers=1,
            threads_per_worker=threads,
            problem=problem,
            settings=settings,
            solve_batches=partial(solve_batches_locally, threads=threads),
        )
        for threads in (args.sequential_threads or sorted({1, cores}))
    ]
    pools: dict[int, tuple[Any, float]] = {}
    coord = None
    try:
        for workers in [] if args.no_process_pool else args.workers:
            pool_started = time.perf_counter()
            pools[workers] = (
                start_process_pool(workers=workers, threads_per_worker=1),
                time.perf_counter() - pool_started,
            )
        if args.mesh_nodes:
            from _live import start_coordinator

            coord = start_coordinator(nodes=max(args.mesh_nodes))
        for repeat in range(args.repeats):
            run = f" [run {repeat + 1}]" if args.repeats > 1 else ""
            for workers, (pool, pool_s) in pools.items():
                modes.append(
                    time_mode(
                        label=f"process pool, {workers} workers x 1 thread "
                        f"(start+warm-up {pool_s:.1f} s, not timed){run}",
                        workers=workers,
                        threads_per_worker=1,
                        problem=problem,
                        settings=settings,
                        solve_batches=process_pool_solver(pool, threads_per_worker=1),
                        kind="pool",
                    )
                )
            if coord is not None:
                modes += mesh_modes(
                    coord,
                    args,
                    n_orbitals=n_orbitals,
                    basis=basis,
                    preset=preset,
                    run=run,
                    warmup=repeat == 0,
                )
    finally:
        for pool, _ in pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        if coord is not None:
            coord.stop()

    baseline = modes[0]
    fastest_sequential = min(m.seconds for m in modes if m.workers == 1)
    print()
    print("speedup = fastest sequential wall time / wall time; |dE| against the first row")
    print(
        "batch s / batch cpu s: wall and CPU seconds of the batch solves, summed; stolen s: CPU"
        " the hypervisor gave to others meanwhile (mesh rows: over the whole benchmark call)"
    )
    print(
        f"{'mode':<80} {'wall s':>8} {'batch s':>8} {'cpu s':>8} {'stolen s':>8} "
        f"{'speedup':>8} {'max |dE| Ha':>12}"
    )
    worst = 0.0
    rows = []
    for mode in modes:
        difference = largest_difference(baseline.result, mode.result)
        worst = max(worst, difference)
        batch_s = mode.result["timing"]["batch_seconds_sum"]
        batch_cpu_s = mode.result["timing"].get("batch_cpu_seconds_sum") or 0.0
        speedup = fastest_sequential / mode.seconds
        print(
            f"{mode.label:<80} {mode.seconds:8.2f} {batch_s:8.2f} {batch_cpu_s:8.2f} "
            f"{mode.stolen_s:8.2f} {speedup:7.2f}x {difference:12.1e}"
        )
        rows.append(
            {
                "mode": mode.label,
                "workers": mode.workers,
                "threads_per_worker": mode.threads_per_worker,
                "wall_s": mode.seconds,
                "batch_seconds_sum": batch_s,
                "batch_cpu_seconds_sum": batch_cpu_s,
                "stolen_s": mode.stolen_s,
                "speedup": speedup,
                "max_abs_energy_difference_ha": difference,
                "energy": mode.result["energy"],
                "n_batch_solves": len(mode.result["batches"]),
            }
        )
    pairs = _mesh_against_pool(modes)
    if pairs:
        print()
        print(
            "mesh speedup / pool speedup, run by run (alternating, same worker count): "
            + ", ".join(f"{ratio:.2f}" for ratio in pairs)
            + f" (median {statistics.median(pairs):.2f})"
        )
    energy = baseline.result["energy"]
    print()
    print(
        f"SQD energy        {energy:.10f} Ha ({len(baseline.result['batches'])} batch solves,"
        f" {len(baseline.result['iterations'])} iterations)"
    )
    if reference is not None:
        print(f"exact (FCI)       {reference:.10f} Ha ({reference_s:.1f} s)")
        print(f"error             {(energy - reference) * 1000:.3f} mHa")
    verdict = "OK" if worst <= TOLERANCE_HA else "FAIL"
    print(
        f"largest energy difference between modes: {worst:.2e} Ha ({verdict}, "
        f"tolerance {TOLERANCE_HA:.0e})"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "problem": problem.description,
                    "settings": settings.to_dict(),
                    "cpu_cores": cores,
                    "reference_energy": reference,
                    "energy": energy,
                    "modes": rows,
                    "max_abs_energy_difference_ha": worst,
                },
                handle,
                indent=2,
            )
    return 0 if worst <= TOLERANCE_HA else 1


if __name__ == "__main__":
    sys.exit(main())
