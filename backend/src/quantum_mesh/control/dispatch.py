"""Fan a batch of independent jobs (QAOA blocks, SQD batches) out over the mesh.

Each usable node gets as many concurrent slots as it advertises workers; slots pull jobs from
one queue, so fast nodes take more work. A job whose node fails, times out or disconnects goes
back on the queue for a different node; a node that fails is not given more of this batch.
The batch never hangs on a lost node: every invocation has a timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from quantum_mesh.config import Settings
from quantum_mesh.control.ports import MeshPort
from quantum_mesh.control.registry import PeerRegistry
from quantum_mesh.errors import ExecutionFailed, NoCapacity
from quantum_mesh.logs import get_logger
from quantum_mesh.mesh.errors import MeshError, RemoteError

log = get_logger(__name__)

MAX_ATTEMPTS_PER_JOB = 4
_FATAL_REMOTE = {"bad_request", "unknown_method", "handler_unavailable"}


@dataclass
class _Pending:
    index: int
    params: dict[str, Any]
    attempts: int = 0
    excluded: set[str] = field(default_factory=set)
    errors: list[dict[str, Any]] = field(default_factory=list)


class MeshDispatcher:
    def __init__(self, *, mesh: MeshPort, registry: PeerRegistry, settings: Settings) -> None:
        self.mesh = mesh
        self.registry = registry
        self.settings = settings

    def nodes_for(self, service_type: str, *, exclude: Sequence[str] = ()) -> list[str]:
        peers = [
            p
            for p in self.registry.usable_snapshot()
            if service_type in p.services and p.peer_id not in exclude
        ]
        peers.sort(key=lambda p: (p.failure_rate, p.latency_s or 0.02, p.peer_id))
        return [p.peer_id for p in peers]

    async def dispatch(
        self,
        method: str,
        jobs: Sequence[dict[str, Any]],
        *,
        service_type: str,
        timeout: float | None = None,
        max_nodes: int | None = None,
        on_done: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Run every job on some node; results in input order, each tagged with ``node_id``,
        ``attempts`` and ``mesh_seconds`` (wall time of the invocation seen by the coordinator).

        ``on_done(done, total)`` is called on the event loop as each job's result arrives."""
        if not jobs:
            return []
        nodes = self.nodes_for(service_type)
        deadline = time.monotonic() + self.settings.capacity_wait_s
        while not nodes and time.monotonic() < deadline:
            # Right after start-up or recovery the registry is still filling from adverts.
            await asyncio.sleep(0.25)
            nodes = self.nodes_for(service_type)
        if max_nodes is not None:
            # A fixed subset (by peer ID), so a benchmark's "N nodes" means the same N nodes
            # for every dispatch of the run.
            nodes = sorted(nodes)[:max_nodes]
        if not nodes:
            raise NoCapacity(
                f"No fresh enrolled node offers '{service_type}'",
                details={"service_type": service_type},
            )
        timeout = timeout or self.settings.invoke_timeout_s
        queue: asyncio.Queue[_Pending] = asyncio.Queue()
        for i, params in enumerate(jobs):
            queue.put_nowait(_Pending(i, dict(params)))
        results: list[dict[str, Any] | None] = [None] * len(jobs)
        remaining = len(jobs)
        done = asyncio.Event()
        failure: list[BaseException] = []
        dead_nodes: set[str] = set()

        def give_up(message: str, errors: list[dict[str, Any]]) -> None:
            failure.append(ExecutionFailed(message, details={"errors": errors}))
            done.set()

        def requeue(item: _Pending, node_id: str) -> None:
            """Back on the queue for another node, unless it has failed too often."""
            item.excluded.add(node_id)
            if item.attempts >= MAX_ATTEMPTS_PER_JOB:
                give_up(f"Job {item.index} of {method} failed {item.attempts} times", item.errors)
            else:
                queue.put_nowait(item)

        async def slot(node_id: str) -> None:
            nonlocal remaining
            while not done.is_set():
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    await asyncio.sleep(0.01)
                    if remaining == 0:
                        return
                    continue
                if node_id in item.excluded or node_id in dead_nodes:
                    # Let another node take it; if every live node is excluded, give up on it.
                    alive = [n for n in nodes if n not in dead_nodes and n not in item.excluded]
                    if not alive:
                        give_up(f"Job {item.index} of {method} failed on every node", item.errors)
                        return
                    queue.put_nowait(item)
                    await asyncio.sleep(0.01)
                    if node_id in dead_nodes:
                        return
                    continue
                item.attempts += 1
                t0 = time.perf_counter()
                try:
                    reply = await self.mesh.invoke(
                        node_id,
                        method,
                        item.params,
                        timeout=timeout,
                        addrs=self.registry.addrs_of(node_id),
                    )
                except RemoteError as exc:
                    self.registry.record_outcome(node_id, ok=False)
                    item.errors.append(
                        {"node_id": node_id, "code": exc.code, "message": exc.message}
                    )
                    if exc.code in _FATAL_REMOTE:
                        give_up(f"{method} rejected by {node_id}: {exc.message}", item.errors)
                        return
                    requeue(item, node_id)
                    continue
                except MeshError as exc:
                    self.registry.record_outcome(node_id, ok=False)
                    item.errors.append(
                        {"node_id": node_id, "code": type(exc).__name__, "message": str(exc)}
                    )
                    log.warning(
                        "dispatch.node_failed", node_id=node_id, method=method, error=str(exc)
                    )
                    dead_nodes.add(node_id)
                    requeue(item, node_id)
                    if len(dead_nodes) >= len(nodes):
                        give_up(f"Every node failed while running {method}", item.errors)
                    return
                self.registry.record_outcome(node_id, ok=True)
                reply = dict(reply)
                reply["node_id"] = node_id
                reply["attempts"] = item.attempts
                reply["mesh_seconds"] = time.perf_counter() - t0
                if item.errors:
                    reply["retried_after"] = item.errors
                results[item.index] = reply
                remaining -= 1
                if on_done is not None:
                    on_done(len(jobs) - remaining, len(jobs))
                if remaining == 0:
                    done.set()
                    return

        slots: list[asyncio.Task[None]] = []
        for node_id in nodes:
            view = self.registry.view(node_id)
            workers = 1
            if view is not None:
                workers = max(1, int(self.registry.advert_of(node_id).get("workers", 1)))
            slots.extend(asyncio.create_task(slot(node_id)) for _ in range(workers))
        try:
            await asyncio.gather(*slots)
        finally:
            for t in slots:
                t.cancel()
        if failure:
            raise failure[0]
        if any(r is None for r in results):
            raise ExecutionFailed(f"{method}: some jobs could not be run on any node")
        return [r for r in results if r is not None]
