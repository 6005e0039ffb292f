"""What every workflow shares: run options, the driver port, and the processor wrapper.

Workload drivers (beam search, the SQD loop) are plain synchronous functions that mix
classical CPU work with waits on the mesh. They run in the coordinator's driver threads and
reach everything through one :class:`DriverPort`: dispatch (units through the work
scheduler), progress, checkpoints and cancellation. Each port call blocks the driver thread
until the API loop has done it — a progress report is persisted, and its errors reach the
driver — so there is exactly one hop from a driver to the loop and none back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import JobHandle
from quantum_mesh.control.scheduler import UnitOutcome, WorkUnit

T = TypeVar("T")
Payloads = list[dict[str, Any]]
#: ``(done, total) -> progress to persist, or None``: called as each unit of a dispatch ends.
UnitProgress = Callable[[int, int], dict[str, Any] | None]


@dataclass(frozen=True)
class RunOptions:
    """How a workflow run is carried out. Benchmarks vary these; a normal run uses defaults."""

    #: Restrict mesh work to these nodes (a benchmark's "N nodes"); None = any node.
    nodes: frozenset[str] | None = None
    #: Run every unit in this process, one after another (the centralised baseline).
    local: bool = False
    #: Persist progress and checkpoints (a benchmark's sub-runs keep none).
    durable: bool = True


class Workflow(Protocol):
    kind: str
    #: The node service its units need (benchmarks restrict nodes by it).
    service_type: str

    async def validate(self, params: dict[str, Any], compute: ComputePools) -> dict[str, Any]:
        """Check and normalise ``params`` before any job exists (bad input is a 4xx)."""
        ...

    async def run(
        self, handle: JobHandle, params: dict[str, Any], options: RunOptions
    ) -> dict[str, Any]:
        """Run the workload; returns its result."""
        ...


def outcome_reply(outcome: UnitOutcome) -> dict[str, Any]:
    """A unit's reply as drivers see it: the node's answer plus where and how it ran."""
    reply = dict(outcome.reply)
    reply.update(
        node_id=outcome.node_id,
        attempts=outcome.attempts,
        refusals=outcome.refusals,
        reservation_id=outcome.reservation_id,
        mesh_seconds=outcome.seconds,
    )
    setbacks = [h for h in outcome.history if h.get("outcome") != "ok"]
    if setbacks:
        reply["retried_after"] = setbacks
    return reply


class DriverPort:
    """A driver thread's one way to the coordinator (see the module docstring)."""

    def __init__(
        self, handle: JobHandle, loop: asyncio.AbstractEventLoop, options: RunOptions
    ) -> None:
        self.handle = handle
        self.options = options
        self._loop = loop

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def check_cancelled(self) -> None:
        """Raise (JobCancelled) once the job was cancelled, so no further work is sent."""
        self.handle.check_cancelled()

    def progress(self, progress: dict[str, Any]) -> None:
        if self.options.durable:
            self._call(self.handle.progress(progress))

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Persist resumable state; returns once it is committed."""
        if self.options.durable:
            self._call(self.handle.checkpoint(state))

    def dispatcher(
        self, method: str, service_type: str, *, on_unit: UnitProgress | None = None
    ) -> Callable[[Payloads], Payloads]:
        """A blocking ``payloads -> replies`` (input order) for the driver."""
        if self.options.local:
            return _local_dispatch(method)

        def dispatch(payloads: Payloads) -> Payloads:
            self.check_cancelled()
            return self._call(self._dispatch(method, service_type, payloads, on_unit))

        return dispatch

    async def _dispatch(
        self, method: str, service_type: str, payloads: Payloads, on_unit: UnitProgress | None
    ) -> Payloads:
        units = [
            WorkUnit(
                job_id=self.handle.job_id,
                unit_id=self.handle.new_unit_id(method),
                method=method,
                service_type=service_type,
                params=payload,
                nodes=self.options.nodes,
            )
            for payload in payloads
        ]
        on_done: Callable[[int, int], Awaitable[None]] | None = None
        if on_unit is not None and self.options.durable:

            async def report(done: int, total: int) -> None:
                progress = on_unit(done, total) if on_unit is not None else None
                if progress is not None:
                    await self.handle.progress(progress)

            on_done = report
        outcomes = await self.handle.run_units(units, on_done=on_done)
        return [outcome_reply(o) for o in outcomes]


def _local_dispatch(method: str) -> Callable[[Payloads], Payloads]:
    """The baseline: the node handlers called in this thread, one unit after another."""
    from quantum_mesh.node.context import NodeContext
    from quantum_mesh.node.handlers import resolve

    handler = resolve(method)
    node = NodeContext(peer_id="local", name="local")

    def dispatch(payloads: Payloads) -> Payloads:
        return [{**handler(payload, node), "node_id": "local"} for payload in payloads]

    return dispatch


async def drive(handle: JobHandle, options: RunOptions, driver: Callable[[DriverPort], T]) -> T:
    """Run a synchronous driver in a driver thread with its port."""
    port = DriverPort(handle, asyncio.get_running_loop(), options)
    return await handle.compute.drive(driver, port)


class WorkflowProcess:
    """Adapts a :class:`Workflow` to the job template: nothing to compile, one run."""

    def __init__(self, workflow: Workflow, handle: JobHandle) -> None:
        self.workflow = workflow
        self.handle = handle

    async def compile(self) -> str | None:
        return None

    async def execute(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        result = await self.workflow.run(self.handle, self.handle.request["params"], RunOptions())
        return result, None
