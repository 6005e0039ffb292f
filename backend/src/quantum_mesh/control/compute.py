"""The coordinator's own bounded worker pools, so the API loop only validates, persists and
schedules.

- ``run``: short CPU steps of running jobs (planning, composing states, encoding, result
  analysis) in a small thread pool of their own, never asyncio's shared default pool.
- ``isolated``: validation that may be slow or memory-hungry (circuit parsing at submit,
  pyscf mean-field runs) in worker *processes*, so neither the GIL nor a huge input can stall
  ``/health`` and submits.
- ``drive``: workload drivers (beam search, the SQD loop) — blocking functions that mostly
  wait on the mesh — in a thread pool sized for the number of concurrent workflows.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, TypeVar

from quantum_mesh.config import Settings
from quantum_mesh.errors import InvalidInput, Unavailable
from quantum_mesh.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")
#: Validation lanes: circuits (fast, frequent) apart from chemistry (slow pyscf runs).
CIRCUIT_LANE, CHEM_LANE = "circuits", "chemistry"
#: Work up to this size runs on the API loop (``run_sized``): 256 amplitudes (8 qubits) or
#: operations, tens of microseconds.
INLINE_MAX_SIZE = 256
#: How long a new validation pool may take to start a worker (spawn and imports).
POOL_START_TIMEOUT_S = 120.0
_BLAS_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _init_isolated() -> None:
    for var in _BLAS_ENV_VARS:
        os.environ.setdefault(var, "1")
    from quantum_mesh.procutil import die_with_parent

    arm = die_with_parent()
    if arm is not None:
        arm()


def _warm() -> int:
    # Import the heavy modules once per worker so the first real call is fast.
    import quantum_mesh.quantum.circuits.parse  # noqa: F401

    return os.getpid()


class ComputePools:
    def __init__(self, settings: Settings) -> None:
        self._threads = ThreadPoolExecutor(
            max_workers=settings.compute_threads, thread_name_prefix="qmesh-compute"
        )
        self._drivers = ThreadPoolExecutor(
            max_workers=settings.driver_threads, thread_name_prefix="qmesh-driver"
        )
        self._processes_n = settings.validation_processes
        self._validation_timeout_s = settings.validation_timeout_s
        self._processes: dict[str, ProcessPoolExecutor] = {}
        self._started_lanes: set[str] = set()

    def start(self) -> None:
        """Start the circuit validation workers in the background (imports take seconds)."""
        pool = self._process_pool(CIRCUIT_LANE)
        for _ in range(self._processes_n):
            pool.submit(_warm)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._on(self._threads, fn, *args, **kwargs)

    async def run_sized(self, size: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """:meth:`run`, or on the loop itself when ``size`` (the caller's measure of the
        work: amplitudes, operations) is at most ``INLINE_MAX_SIZE``. Such a step (a Bell
        job's 4-amplitude state) takes microseconds, less than the loop spends handing it
        to a thread and resuming afterwards; under load those hand-offs, not the work, were
        the API loop's main cost."""
        if size <= INLINE_MAX_SIZE:
            return fn(*args, **kwargs)
        return await self.run(fn, *args, **kwargs)

    async def drive(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._on(self._drivers, fn, *args, **kwargs)

    async def isolated(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """:meth:`isolated_in` the circuit lane."""
        return await self.isolated_in(CIRCUIT_LANE, fn, *args, **kwargs)

    async def isolated_in(self, lane: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a picklable function in a validation process of ``lane``, bounded in time.

        Each lane has processes of its own, so slow validations of one kind (a pyscf mean
        field takes seconds) never queue a cheap one of another (a Bell circuit's parse).

        Raises:
            InvalidInput: the validation ran past ``QMESH_VALIDATION_TIMEOUT_S`` (its worker
                is killed) or its worker died (say, killed for memory); either way the input
                is refused and the pool replaced.
        """
        try:
            pool = await self._started(lane)
            return await asyncio.wait_for(
                self._on(pool, fn, *args, **kwargs), timeout=self._validation_timeout_s
            )
        except TimeoutError:
            log.warning("compute.validation_timeout", seconds=self._validation_timeout_s)
            self._shutdown_processes(lane, kill=True)
            raise InvalidInput(
                f"Input took longer than {self._validation_timeout_s:g} s to validate",
                details={"limit": "validation_timeout_s", "max": self._validation_timeout_s},
            ) from None
        except BrokenProcessPool:
            log.warning("compute.validation_pool_broken", lane=lane)
            self._shutdown_processes(lane)
            raise InvalidInput(
                "Input could not be validated: the validating process died"
            ) from None

    async def _started(self, lane: str) -> ProcessPoolExecutor:
        """The lane's pool with a worker up. A new pool's start (spawning, imports: seconds,
        more on a loaded machine) is not the input's doing, so it is not timed against the
        validation limit; a pool that cannot start in ``POOL_START_TIMEOUT_S`` is a
        ``503``, not a refused input."""
        pool = self._process_pool(lane)
        if lane in self._started_lanes:
            return pool
        try:
            # The circuit lane's workers import the parser now; other lanes only start.
            first = _warm if lane == CIRCUIT_LANE else os.getpid
            await asyncio.wait_for(self._on(pool, first), timeout=POOL_START_TIMEOUT_S)
        except TimeoutError:
            self._shutdown_processes(lane, kill=True)
            raise Unavailable(
                f"the validation workers did not start within {POOL_START_TIMEOUT_S:g} s",
                details={"lane": lane},
            ) from None
        if self._processes.get(lane) is pool:
            self._started_lanes.add(lane)
        return pool

    @staticmethod
    async def _on(executor: Executor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, partial(fn, *args, **kwargs))

    def _process_pool(self, lane: str) -> ProcessPoolExecutor:
        pool = self._processes.get(lane)
        if pool is None:
            pool = self._processes[lane] = ProcessPoolExecutor(
                max_workers=self._processes_n,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_isolated,
            )
        return pool

    def _shutdown_processes(self, lane: str, *, kill: bool = False) -> None:
        self._started_lanes.discard(lane)
        pool = self._processes.pop(lane, None)
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values()) if kill else []
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.kill()

    def shutdown(self) -> None:
        for lane in list(self._processes):
            self._shutdown_processes(lane)
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._drivers.shutdown(wait=False, cancel_futures=True)
