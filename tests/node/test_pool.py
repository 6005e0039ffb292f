"""The node's worker-process pool, awaited from Trio (real spawned workers)."""

from __future__ import annotations

import os
import signal
from typing import Any

import psutil
import pytest
import trio

from quantum_mesh.mesh import packing
from quantum_mesh.mesh.errors import RemoteError
from quantum_mesh.mesh.protocol import ERR_WORKER_CRASHED
from quantum_mesh.node.context import NodeContext
from quantum_mesh.node.pool import WorkerPool

NODE = NodeContext(peer_id="12D3KooWPool", name="pool")
#: Bounds every test: a pool that hangs fails instead of stalling the suite.
DEADLINE_S = 60


def _pool(workers: int) -> WorkerPool:
    return WorkerPool(workers=workers, blas_threads=1, preload=False)


async def _call(pool: WorkerPool, method: str, params: dict[str, Any]) -> Any:
    ok, payload = await pool.run(method, params, NODE)
    assert ok, payload
    assert isinstance(payload, bytes)
    return packing.unpack(payload)


def _worker_pids() -> set[int]:
    """This process's spawned workers (the pool's only children here)."""
    return {
        child.pid
        for child in psutil.Process().children()
        if "spawn_main" in " ".join(child.cmdline())
    }


def _run(main: Any) -> Any:
    async def bounded() -> Any:
        with trio.fail_after(DEADLINE_S):
            return await main()

    return trio.run(bounded)


def test_concurrent_calls_each_get_their_own_answer() -> None:
    async def main() -> list[Any]:
        pool = _pool(2)
        pool.start()
        try:
            await pool.warm()
            answers: list[Any] = [None] * 24

            async def one(i: int) -> None:
                answers[i] = (await _call(pool, "echo", {"i": i}))["params"]["i"]

            async with trio.open_nursery() as nursery:
                for i in range(24):
                    nursery.start_soon(one, i)
            return answers
        finally:
            pool.shutdown()

    assert _run(main) == list(range(24))


def test_a_handler_error_is_an_answer_not_a_crash() -> None:
    async def main() -> tuple[Any, Any]:
        pool = _pool(1)
        pool.start()
        try:
            refused = await pool.run("debug_sleep", {"seconds": -1}, NODE)
            return refused, await _call(pool, "echo", {"after": True})
        finally:
            pool.shutdown()

    refused, after = _run(main)
    assert refused[0] is False and refused[1][0] == "bad_request"
    assert after["params"] == {"after": True}


def test_a_worker_killed_mid_call_fails_that_call_and_is_replaced() -> None:
    async def main() -> tuple[int, int, Any]:
        pool = _pool(1)
        pool.start()
        try:
            await pool.warm()
            [victim] = _worker_pids()

            async def kill_soon() -> None:
                await trio.sleep(0.3)
                os.kill(victim, signal.SIGKILL)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_soon)
                with pytest.raises(RemoteError) as failed:
                    await pool.run("debug_sleep", {"seconds": 30}, NODE)
            assert failed.value.code == ERR_WORKER_CRASHED
            again = await _call(pool, "echo", {"again": 1})
            [replacement] = _worker_pids() - {victim}
            return victim, replacement, again
        finally:
            pool.shutdown()

    victim, replacement, again = _run(main)
    assert replacement != victim
    assert again["params"] == {"again": 1}


def test_a_cancelled_caller_never_receives_or_leaves_behind_a_stale_answer() -> None:
    async def main() -> Any:
        pool = _pool(1)
        pool.start()
        try:
            await pool.warm()
            with trio.move_on_after(0.2) as scope:
                await pool.run("debug_sleep", {"seconds": 0.6}, NODE)
            assert scope.cancelled_caught
            # The one worker is still sleeping; this call waits for it, then gets its own.
            return await _call(pool, "echo", {"mine": True})
        finally:
            pool.shutdown()

    assert _run(main)["params"] == {"mine": True}


def test_shutdown_terminates_a_worker_still_computing() -> None:
    async def main() -> bool:
        pool = _pool(1)
        pool.start()
        await pool.warm()
        [pid] = _worker_pids()
        worker = psutil.Process(pid)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.run, "debug_sleep", {"seconds": 30}, NODE)
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        pool.shutdown()
        gone, _ = psutil.wait_procs([worker], timeout=10)
        return bool(gone)

    assert _run(main), "the computing worker outlived the pool's shutdown"
