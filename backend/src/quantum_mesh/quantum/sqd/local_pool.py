"""A ``solve_batches`` backed by a local process pool: the stand-in for mesh nodes.

Used by the benchmark and the tests to check that parallel batch solves give the same
energies as sequential ones. In production the coordinator's ``solve_batches`` dispatches
the same jobs to ``sqd_batch`` on service nodes instead.

Workers are spawned (not forked) with ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` set to
``threads_per_worker`` (OpenBLAS reads its setting once at start-up), and warmed up (the
qiskit-addon-sqd import alone takes seconds) before the pool is handed out.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from quantum_mesh.quantum.sqd.loop import SolveBatches
from quantum_mesh.quantum.sqd.worker import solve_batch_with_threads

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_WARM_UP_ROUNDS = 4
_WARM_UP_HOLD_S = 0.2


def start_process_pool(*, workers: int, threads_per_worker: int = 1) -> ProcessPoolExecutor:
    """Spawn ``workers`` processes with limited threads and import the solver in each."""
    if workers < 1 or threads_per_worker < 1:
        raise ValueError(
            f"workers and threads_per_worker must be >= 1; got {workers}, {threads_per_worker}."
        )
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        with _environment({name: str(threads_per_worker) for name in _THREAD_VARIABLES}):
            warmed: set[int] = set()
            for _ in range(_WARM_UP_ROUNDS):
                futures = [pool.submit(_warm_up) for _ in range(workers)]
                warmed.update(future.result() for future in futures)
                if len(warmed) >= workers:
                    break
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    return pool


def process_pool_solver(pool: ProcessPoolExecutor, *, threads_per_worker: int = 1) -> SolveBatches:
    """``solve_batches`` that solves all jobs concurrently on ``pool`` and waits for all.

    Each result's ``node_id`` is ``"process-pool:<pid>"``; a batch whose worker raised is
    returned as ``{"error": ...}`` so the loop discards it like a failed node.
    """

    def solve_batches(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        futures = [pool.submit(_solve_in_worker, job, threads_per_worker) for job in jobs]
        results: list[dict[str, Any]] = []
        for future in futures:
            try:
                results.append(future.result())
            except (ValueError, ArithmeticError, MemoryError) as error:
                results.append({"error": f"{type(error).__name__}: {error}", "node_id": None})
        return results

    return solve_batches


def _solve_in_worker(job: dict[str, Any], threads: int) -> dict[str, Any]:
    return {
        **solve_batch_with_threads(job, threads=threads),
        "node_id": f"process-pool:{os.getpid()}",
    }


def _warm_up() -> int:
    import qiskit_addon_sqd.fermion  # noqa: F401  (slow first import: pay it before timing)

    time.sleep(_WARM_UP_HOLD_S)  # hold the worker so that every worker receives a warm-up
    return os.getpid()


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (inherited by processes spawned meanwhile), then restore."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
