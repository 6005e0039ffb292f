"""The node's warm worker-process pool, awaited from Trio.

CPU-bound quantum work must never run on an event loop (the GIL would stall networking), so
every pool method runs here. Workers are *spawned* (no forked copy of the Trio/libp2p state)
with BLAS threads pinned, and each one exits on its own if the node process dies, so a
SIGKILLed node never leaves orphans computing for nobody.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import trio

from quantum_mesh.mesh.errors import RemoteError
from quantum_mesh.mesh.protocol import ERR_WORKER_CRASHED
from quantum_mesh.node import handlers
from quantum_mesh.node.context import NodeContext

logger = logging.getLogger(__name__)

BLAS_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: How often a worker checks that the node process that spawned it is still alive.
PARENT_CHECK_S = 0.5

MethodOutcome = tuple[bool, bytes | tuple[str, str]]
T = TypeVar("T")


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            os._exit(0)


def _init_worker(blas_threads: int, parent_pid: int, preload: bool) -> None:
    """Worker initializer: pin BLAS threads, watch the parent, optionally import handlers."""
    for var in BLAS_ENV_VARS:
        os.environ[var] = str(blas_threads)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if preload:
        handlers.preload()


def _warm() -> int:
    return os.getpid()


async def settled(fut: Future[T]) -> T:
    """``fut``'s result, awaited without parking a thread on it: the pool's own result
    thread wakes this Trio task directly (one hop less per call than ``to_thread``)."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: Future[T]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    fut.add_done_callback(wake)
    await done.wait()
    return fut.result()


class WorkerPool:
    """A ``ProcessPoolExecutor`` that survives a crashed worker by rebuilding itself."""

    def __init__(self, *, workers: int, blas_threads: int, preload: bool) -> None:
        self._workers = workers
        self._blas_threads = blas_threads
        self._preload = preload
        self._executor: ProcessPoolExecutor | None = None

    def start(self) -> None:
        # Inherited by spawned workers before any of them can import numpy.
        for var in BLAS_ENV_VARS:
            os.environ[var] = str(self._blas_threads)
        self._executor = ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._blas_threads, os.getpid(), self._preload),
        )

    async def warm(self) -> None:
        """Start every worker now rather than on the first real call."""
        executor = self._require()
        futures = [executor.submit(_warm) for _ in range(self._workers)]
        for fut in futures:
            await settled(fut)

    async def run(
        self,
        method: str,
        params: dict[str, Any],
        node: NodeContext,
        *,
        reply_spill_limit: int | None = None,
    ) -> MethodOutcome:
        """Run ``handlers.run_method`` in a worker (see there for ``reply_spill_limit``).

        Raises:
            RemoteError: ``worker_crashed`` when the worker died mid-call (pool rebuilt).
        """
        executor = self._require()
        try:
            fut: Future[MethodOutcome] = executor.submit(
                handlers.run_method, method, params, node, reply_spill_limit
            )
        except BrokenProcessPool as error:
            self._rebuild()
            raise RemoteError(ERR_WORKER_CRASHED, f"worker pool was broken: {error}") from error
        try:
            return await settled(fut)
        except BrokenProcessPool as error:
            self._rebuild()
            raise RemoteError(ERR_WORKER_CRASHED, f"worker died during {method}") from error
        finally:
            fut.cancel()  # no-op when done; drops a queued call whose caller went away

    def shutdown(self) -> None:
        """Stop now: drop queued calls and terminate workers still computing."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list(getattr(executor, "_processes", {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()

    def _require(self) -> ProcessPoolExecutor:
        if self._executor is None:
            raise RuntimeError("worker pool is not started")
        return self._executor

    def _rebuild(self) -> None:
        logger.warning("worker pool broken; starting a fresh one")
        self.shutdown()
        self.start()
