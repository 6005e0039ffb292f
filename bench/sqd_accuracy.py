"""SQD accuracy vs wall time: the default settings beside the ``accurate`` preset, one run.

Both rows run the project's own SQD path (``run_sqd``: uniform samples, qiskit-addon-sqd's
configuration-recovery loop, batch solves through ``solve_batches``) on the same problem
with the same seed, one after the other, and print the error against CASCI (pyscf's FCI
solver on the same active space, <S^2> = 0) in mHa and the wall time (sampling + SQD loop;
problem set-up and the reference are left out, as in ``bench/sqd_parallel.py``).

    .venv/bin/python bench/sqd_accuracy.py                 # N2 / cc-pVDZ (10e, 14o), ~15-25 min
    .venv/bin/python bench/sqd_accuracy.py --quick         # N2 / 6-31G (10e, 10o), ~1 min
    .venv/bin/python bench/sqd_accuracy.py --reference-energy -109.1147362995   # skip CASCI

Batches are solved by a local process pool (``--workers``, default 2: one worker per core of
the 2-core machine the docs' figures come from; ``--workers 1`` solves them in this process).
"""

from __future__ import annotations

import os

# OpenBLAS reads this once, when numpy loads (see bench/sqd_parallel.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from functools import partial
from typing import Any

from quantum_mesh.quantum.sqd.local_pool import process_pool_solver, start_process_pool
from quantum_mesh.quantum.sqd.loop import SolveBatches, run_sqd, solve_batches_locally
from quantum_mesh.quantum.sqd.problem import build_from_molecule
from quantum_mesh.quantum.sqd.reference import exact_energy
from quantum_mesh.quantum.sqd.settings import SQDSettings

N2_GEOMETRY = "N 0 0 0; N 0 0 1.1"
CHEMICAL_ACCURACY_MHA = 1.6
#: The largest active space whose CASCI this bench computes (N2 (10e, 14o): 4.0M).
MAX_REFERENCE_DETERMINANTS = 20_000_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N2 / 6-31G (10e, 10o) instead")
    parser.add_argument("--orbitals", type=int, help="active orbitals (default 14; quick: 10)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2, help="process-pool workers (1: none)")
    parser.add_argument(
        "--presets", nargs="+", default=["accurate"], help="presets to run after the default"
    )
    parser.add_argument(
        "--reference-energy", type=float, help="CASCI energy (Ha) to use instead of computing it"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    basis = "6-31g" if args.quick else "cc-pvdz"
    n_orbitals = args.orbitals or (10 if args.quick else 14)
    problem = build_from_molecule(
        atom=N2_GEOMETRY, basis=basis, active_orbitals=n_orbitals, active_electrons=10
    )
    rows: list[tuple[str, SQDSettings]] = [("default", SQDSettings(seed=args.seed))]
    rows += [
        (f"preset {name}", SQDSettings.from_dict({"preset": name, "seed": args.seed}))
        for name in args.presets
    ]
    print(f"problem: {problem.description} ({problem.n_determinants:,} determinants)")
    print(f"machine: {os.cpu_count()} CPU cores; batches on {args.workers} worker(s) x 1 thread")

    started = time.perf_counter()
    if args.reference_energy is not None:
        reference: float | None = args.reference_energy
        reference_note = "given"
    else:
        reference = exact_energy(problem, spin_sq=0.0, max_determinants=MAX_REFERENCE_DETERMINANTS)
        reference_note = f"{time.perf_counter() - started:.0f} s"
    if reference is None:
        print("the active space is too large for the CASCI reference")
        return 1
    print(f"CASCI             {reference:.10f} Ha ({reference_note})")

    pool = start_process_pool(workers=args.workers) if args.workers > 1 else None
    solve: SolveBatches = (
        process_pool_solver(pool) if pool else partial(solve_batches_locally, threads=1)
    )
    results: list[dict[str, Any]] = []
    try:
        for label, settings in rows:
            print(f"running {label}: {_describe(settings)} ...", flush=True)
            start = time.perf_counter()
            result = run_sqd(
                problem, settings=settings, solve_batches=solve, compute_reference=False
            )
            wall = time.perf_counter() - start
            results.append(
                {
                    "label": label,
                    "settings": _describe(settings),
                    "error_mha": (result["energy"] - reference) * 1000.0,
                    "wall_s": wall,
                    "energy": result["energy"],
                    "batch_solves": len(result["batches"]),
                    "batch_seconds_sum": result["timing"]["batch_seconds_sum"],
                    "largest_subspace": max(b["subspace_dim"] or 0 for b in result["batches"]),
                    "iteration_errors_mha": [
                        (i["energy"] - reference) * 1000.0 for i in result["iterations"]
                    ],
                }
            )
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    print()
    print(
        f"{'row':<18} {'error mHa':>10} {'wall s':>8} {'solves':>7} {'batch s':>8} "
        f"{'largest subspace':>17}  settings"
    )
    for row in results:
        print(
            f"{row['label']:<18} {row['error_mha']:10.3f} {row['wall_s']:8.1f} "
            f"{row['batch_solves']:7d} {row['batch_seconds_sum']:8.1f} "
            f"{row['largest_subspace']:17,d}  {row['settings']}"
        )
    print()
    for row in results:
        trail = " -> ".join(f"{e:.2f}" for e in row["iteration_errors_mha"])
        print(f"{row['label']:<18} error by iteration (mHa): {trail}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "problem": problem.description,
                    "determinants": problem.n_determinants,
                    "reference_energy": reference,
                    "seed": args.seed,
                    "workers": args.workers,
                    "cpu_cores": os.cpu_count(),
                    "rows": results,
                },
                handle,
                indent=2,
            )
    return 0


def _describe(settings: SQDSettings) -> str:
    text = (
        f"n_samples={settings.n_samples} n_batches={settings.n_batches} "
        f"samples_per_batch={settings.samples_per_batch} "
        f"max_iterations={settings.max_iterations}"
    )
    if settings.initial_occupancies is not None:
        text += f" initial_occupancies={settings.initial_occupancies}"
    return text


if __name__ == "__main__":
    sys.exit(main())
