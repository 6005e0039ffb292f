"""In-process fan-out of job transitions to WebSocket subscribers.

Only ever fed *after* the transition is committed, so a subscriber never sees a state the
database does not hold.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

_QUEUE_LIMIT = 1000


class JobEventBus:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)

    def subscribe(self, job_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=_QUEUE_LIMIT)
        self._subscribers[job_id].add(queue)
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        subs = self._subscribers.get(job_id)
        if subs is not None:
            subs.discard(queue)
            if not subs:
                del self._subscribers[job_id]

    def publish(self, job_id: str, message: dict[str, Any]) -> None:
        for queue in list(self._subscribers.get(job_id, ())):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                # A stalled client must not block the runtime; it reconnects and gets state.
                self.unsubscribe(job_id, queue)
