"""QAOA energy evaluation: the diagonal engine vs qiskit-aer ``EstimatorV2``, side by side.

The same circuits on both sides: ``qaoa_ansatz(H_C, reps=p)`` for a knapsack cost with a
quadratic capacity penalty written as a QUBO (``n`` linear Z and ``n(n-1)/2`` ZZ terms).
The engine gets the diagonal of ``H_C`` (computed once, timed separately). Prints seconds
per energy evaluation (median) for the engine's fused two-pass kernel (``kernel.py``), for its
numpy path (blocked matmul mixer) and for Aer, the ratios, and the largest energy
difference. Beside them, the memory bound measured in the same run, in alternation with the
engine: one pass over the state from memory (a copy of 2^n complex128 holding data, read +
write, after the caches are flushed), how many such passes one evaluation costs, and the
same against the copy repeated at once (from the L3 where state and copy fit it; see
``timed_side_by_side``). Each row runs the engine, Aer and the pass with the same number of threads
(``--threads``, default 1 and 2); BLAS stays at one thread.

    .venv/bin/python bench/qaoa_kernel.py            # n = 16, 20, 22, 24; p = 1, 2
    .venv/bin/python bench/qaoa_kernel.py --quick    # n = 16, 20, 22
    .venv/bin/python bench/qaoa_kernel.py --sizes 20 22 24 --ps 1   # any n and p
    .venv/bin/python bench/qaoa_kernel.py --threads 1               # one thread only
    .venv/bin/python bench/qaoa_kernel.py --real                    # real-valued data
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import itertools  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from qiskit import QuantumCircuit, transpile  # noqa: E402
from qiskit.circuit.library import qaoa_ansatz  # noqa: E402
from qiskit.quantum_info import SparsePauliOp  # noqa: E402
from qiskit_aer import AerSimulator  # noqa: E402
from qiskit_aer.primitives import EstimatorV2  # noqa: E402

from quantum_mesh.quantum.qaoa import engine, kernel  # noqa: E402
from quantum_mesh.quantum.qaoa.problems import qubo_energies  # noqa: E402


def knapsack_qubo(n: int, *, seed: int, real: bool = False) -> tuple[np.ndarray, float]:
    """``-v.x + P (w.x - C)^2`` as ``(Q, offset)`` with ``x^T Q x + offset`` (``x_i^2 = x_i``).
    Integer values and weights (few distinct energies: the phase is gathered from a table of
    levels), or with ``real`` real-valued ones (2^n distinct energies: the kernel computes
    each phase as it walks the state)."""
    rng = np.random.default_rng(seed)
    if real:
        values, weights = rng.uniform(1, 10, n), rng.uniform(1, 6, n)
    else:
        values = rng.integers(1, 10, n).astype(float)
        weights = rng.integers(1, 6, n).astype(float)
    capacity = float(weights.sum() // 2)
    penalty = 2.0
    q = penalty * np.outer(weights, weights)
    q[np.diag_indices(n)] += -values - 2.0 * penalty * capacity * weights
    return q, penalty * capacity**2


def qubo_operator(q: np.ndarray, offset: float) -> SparsePauliOp:
    """The diagonal Hamiltonian of ``x^T Q x + offset`` with ``x_i = (1 - Z_i) / 2``."""
    n = q.shape[0]
    sym = (q + q.T) / 2
    terms: dict[str, float] = {}

    def add(qubits: tuple[int, ...], coeff: float) -> None:
        label = "".join("Z" if k in qubits else "I" for k in reversed(range(n)))
        terms[label] = terms.get(label, 0.0) + coeff

    add((), offset)
    for i in range(n):
        add((), sym[i, i] / 2)
        add((i,), -sym[i, i] / 2)
        for j in range(i + 1, n):
            c = 2 * sym[i, j] / 4
            add((), c)
            add((i,), -c)
            add((j,), -c)
            add((i, j), c)
    return SparsePauliOp(list(terms), list(terms.values())).simplify(atol=0)


def median_seconds(
    run: Callable[[], float], repeats: int, *, warm_up: bool = True
) -> tuple[float, float]:
    """(median seconds, last value) of ``repeats`` calls, after one untimed warm-up call."""
    value = run() if warm_up else float("nan")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def last_level_cache_bytes() -> int:
    """This machine's last-level cache (L3), from sysfs; 32 MiB where it does not say."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return 32 << 20
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def timed_side_by_side(
    run: Callable[[], float], n: int, threads: int, repeats: int
) -> tuple[float, float, float, float]:
    """(engine median s, memory pass median s, L3 pass median s, last engine value), each
    repeat timing the three one after the other, so that the machine's noise falls on all.

    A pass is one read of a 2^n complex128 state and one write of a copy, split like the
    engine's walks across ``threads``; both arrays hold written data (a never-written source
    is backed by the kernel's shared zero page: a copy from it measures writes alone).
    - **Memory pass**: after the caches have been flushed (a buffer twice the L3 written,
      untimed). This is the bound the engine's walks meet: an evaluation streams the state,
      the level index and the energies, more than the L3 holds from n = 20, so the state is
      not in the cache when a walk comes back to it (measured: a copy timed right after an
      evaluation takes as long as one after a flush).
    - **L3 pass**: the same copy again, the third right after it. Where state and copy fit the L3
      (n = 20 here: 2 x 16 MiB, a 32 MiB L3) this is a cache-to-cache copy, 1.5-2x faster;
      from n = 22 the two agree."""
    state = np.full(1 << n, 0.5 + 0.25j)
    spare = np.full_like(state, 1.0)
    flush = np.empty(2 * last_level_cache_bytes() // 8)
    bounds = [(state.size * k) // threads for k in range(threads + 1)]
    runs = list(itertools.pairwise(bounds))

    def copy_part(part: tuple[int, int]) -> None:
        np.copyto(spare[part[0] : part[1]], state[part[0] : part[1]])  # releases the GIL

    engine_s, memory_s, cached_s = [], [], []
    value = run()  # warm-up
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(copy_part, runs))
        for k in range(repeats):
            start = time.perf_counter()
            value = run()
            engine_s.append(time.perf_counter() - start)
            flush.fill(float(k))
            start = time.perf_counter()
            list(pool.map(copy_part, runs))
            memory_s.append(time.perf_counter() - start)
            for _ in range(2):  # until state and copy have settled in the L3 (a victim cache)
                list(pool.map(copy_part, runs))
            start = time.perf_counter()
            list(pool.map(copy_part, runs))
            cached_s.append(time.perf_counter() - start)
    return (
        statistics.median(engine_s),
        statistics.median(memory_s),
        statistics.median(cached_s),
        value,
    )


def bench_case(
    n: int, p: int, *, threads: list[int], aer_repeats: int, real: bool = False
) -> list[dict[str, float]]:
    """One row per thread count: the engine with that many threads against Aer with as many,
    and against a pass over the state made by as many threads."""
    q, offset = knapsack_qubo(n, seed=n, real=real)
    operator = qubo_operator(q, offset)
    ansatz = qaoa_ansatz(operator, reps=p)
    sim = AerSimulator(method="statevector", max_parallel_threads=1)
    circuit: QuantumCircuit = transpile(ansatz, sim, optimization_level=0)
    betas = [0.41, 0.23][:p]
    gammas = [0.017, 0.031][:p]
    values = [*betas, *gammas]  # qaoa_ansatz parameter order: beta[..], gamma[..]

    start = time.perf_counter()
    cost = engine.DiagonalCost.from_energies(qubo_energies(q, offset=offset))
    diagonal_s = time.perf_counter() - start

    def fast_energy() -> float:
        return engine.qaoa_expectation(cost, gammas=gammas, betas=betas)

    kernel.AVAILABLE, fused = False, kernel.AVAILABLE
    try:
        numpy_s, numpy_value = median_seconds(fast_energy, 3)
    finally:
        kernel.AVAILABLE = fused
    rows = []
    for count in threads:
        kernel.set_threads(count)
        try:
            # milliseconds each below n = 22: more repeats, for a median the noise here leaves
            fast_s, pass_s, cached_pass_s, fast_value = timed_side_by_side(
                fast_energy, n, count, 21 if n <= 22 else 5
            )
        finally:
            kernel.set_threads(1)
        estimator = EstimatorV2(
            options={"backend_options": {"method": "statevector", "max_parallel_threads": count}}
        )

        def aer_energy(estimator: EstimatorV2 = estimator) -> float:
            job = estimator.run([(circuit, operator, values)])
            return float(job.result()[0].data.evs)

        # at n = 24 one Aer evaluation takes 20-60 s on 2 cores: time a single cold call there
        aer_s, aer_value = median_seconds(aer_energy, aer_repeats, warm_up=aer_repeats > 1)
        rows.append(
            {
                "n": n,
                "p": p,
                "threads": count,
                "terms": len(operator),
                "diagonal_s": diagonal_s,
                "fast_s": fast_s,
                "numpy_s": numpy_s,
                "aer_s": aer_s,
                "ratio": aer_s / fast_s,
                "pass_s": pass_s,
                "passes": fast_s / pass_s,
                "cached_pass_s": cached_pass_s,
                "max_abs_diff": max(abs(aer_value - fast_value), abs(numpy_value - fast_value)),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 16, 20, 22 only")
    parser.add_argument("--sizes", type=int, nargs="+", help="qubit counts (overrides --quick)")
    parser.add_argument("--ps", type=int, nargs="+", default=[1, 2], help="layer counts (1, 2)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="threads per evaluation, for the engine, Aer and the pass alike (default: 1 2)",
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="real-valued knapsack data: the phase computed per amplitude, not gathered",
    )
    args = parser.parse_args()
    sizes = args.sizes or ([16, 20, 22] if args.quick else [16, 20, 22, 24])
    if not all(1 <= p <= 2 for p in args.ps):
        parser.error("--ps takes 1 and/or 2")
    if not all(t >= 1 for t in args.threads):
        parser.error("--threads takes counts of at least 1")
    print(
        f"fused kernel available: {kernel.AVAILABLE}; cores: {os.cpu_count()}; "
        f"energies: {'real-valued' if args.real else 'integer'}"
    )
    header = (
        f"{'n':>3} {'p':>2} {'thr':>3} {'terms':>6} {'diag s':>8} {'engine s/eval':>14} "
        f"{'numpy path':>11} {'aer s/eval':>11} {'vs aer':>7} {'1 pass s':>9} "
        f"{'passes':>7} {'vs 3p':>6} {'L3 pass s':>10} {'vs 3p L3':>9} {'max |dE|':>10}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for n in sizes:
        for p in args.ps:
            aer_repeats = 3 if n <= 20 else 1
            rows = bench_case(n, p, threads=args.threads, aer_repeats=aer_repeats, real=args.real)
            for row in rows:
                worst = max(worst, row["max_abs_diff"])
                print(
                    f"{n:>3} {p:>2} {row['threads']:>3} {row['terms']:>6} "
                    f"{row['diagonal_s']:>8.3f} {row['fast_s']:>14.4f} {row['numpy_s']:>11.4f} "
                    f"{row['aer_s']:>11.4f} {row['ratio']:>6.1f}x {row['pass_s']:>9.5f} "
                    f"{row['passes']:>7.1f} {row['passes'] / (3 * p):>5.2f}x "
                    f"{row['cached_pass_s']:>10.5f} "
                    f"{row['fast_s'] / (3 * p * row['cached_pass_s']):>8.2f}x "
                    f"{row['max_abs_diff']:>10.2e}",
                    flush=True,
                )
    print(f"largest energy difference: {worst:.2e}")
    print(
        "thr: threads per evaluation (engine, Aer and the pass alike); numpy path: one thread; "
        "passes: engine time / one pass over the state from memory; 'vs 3p': against the "
        "3-pass-per-layer memory bound (goal <= 1.5x); 'L3 pass', 'vs 3p L3': the same copy "
        "repeated at once, from the L3 where state and copy fit it (see timed_side_by_side)"
    )


if __name__ == "__main__":
    main()
