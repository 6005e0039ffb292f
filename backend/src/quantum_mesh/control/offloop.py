"""Run a workload driver off the API event loop while its dispatches still use the mesh.

Workload drivers (beam search, the SQD loop) mix classical CPU work (DP optima, brute force,
configuration recovery) with waits on the mesh. They run in a worker thread — with an event
loop of their own for async drivers — and reach the coordinator's dispatcher through
``run_coroutine_threadsafe``, so the API loop never runs their CPU work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopBridge:
    """Hands coroutines from a worker thread to the coordinator's loop and waits for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Blocking: from a plain worker thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """From a worker thread's own event loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))


async def run_async_driver(driver: Callable[[LoopBridge], Awaitable[T]]) -> T:
    """Run an async driver in a fresh thread with its own event loop."""
    bridge = LoopBridge(asyncio.get_running_loop())

    def _thread_main() -> T:
        return asyncio.run(_as_coro(driver(bridge)))

    return await asyncio.to_thread(_thread_main)


async def run_sync_driver(driver: Callable[[LoopBridge], T]) -> T:
    """Run a blocking driver in a worker thread."""
    bridge = LoopBridge(asyncio.get_running_loop())
    return await asyncio.to_thread(driver, bridge)


async def _as_coro(awaitable: Awaitable[T]) -> T:
    return await awaitable
