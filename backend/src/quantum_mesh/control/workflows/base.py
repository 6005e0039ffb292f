"""What every workflow shares: run options, the driver port, and the processor wrapper.

Workload drivers (beam search, the SQD loop) are plain synchronous functions that mix
classical CPU work with waits on the mesh. They run in the coordinator's driver threads and
reach everything through one :class:`DriverPort`: dispatch (units through the work
scheduler), progress, checkpoints and cancellation. A dispatch blocks the driver thread until
the API loop has its replies: one hop from a driver to the loop and one back. Progress and
checkpoints are queued, not waited for: the group-commit writer commits in order, so they are
durable before the job's next state change, and a round of work waits for no commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import JobHandle
from quantum_mesh.control.scheduler import UnitOutcome, WorkUnit
from quantum_mesh.control.sizing import compute_seconds
from quantum_mesh.errors import ExecutionFailed
from quantum_mesh.logs import get_logger

log = get_logger(__name__)

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
        #: Grouped dispatches in flight per method (on the API loop): drivers of one run that
        #: dispatch side by side (a batch's instances) share the workers between them.
        self._in_flight: dict[str, int] = {}

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def check_cancelled(self) -> None:
        """Raise (JobCancelled) once the job was cancelled, so no further work is sent."""
        self.handle.check_cancelled()

    def progress(self, progress: dict[str, Any]) -> None:
        """Report progress: persisted, then published, on the API loop; the driver goes on
        meanwhile (a round of blocks waits for no commit). Reports keep their order, and the
        job's end is written after all of them (the writer commits in order)."""
        if self.options.durable:
            future = asyncio.run_coroutine_threadsafe(self.handle.progress(progress), self._loop)
            future.add_done_callback(_log_failure)

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Queue resumable state for the next commit, ahead of any later write of the job
        (``JobManager.save_checkpoint_behind``); the driver does not wait for it."""
        if self.options.durable:
            self.handle.checkpoint_behind(state)

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

    def grouped_dispatcher(
        self,
        method: str,
        service_type: str,
        *,
        group_key: str = "jobs",
        results_key: str = "results",
        max_group: int,
    ) -> Callable[[Payloads], Payloads]:
        """Like ``dispatcher``, for a method that also takes ``{group_key: [job, ...]}`` and
        answers ``{results_key: [result, ...]}`` in order (``qaoa_block``).

        Single jobs are packed into groups sized from what this method's units have cost so
        far (``control/sizing.py``) and unpacked again: the driver gets one reply per payload,
        in input order, each with where it ran. Payloads that already are groups (a caller's
        explicit ``compound_size``) go out unchanged."""
        if self.options.local:
            return _local_dispatch(method)

        def dispatch(payloads: Payloads) -> Payloads:
            self.check_cancelled()
            return self._call(
                self._dispatch_grouped(
                    method, service_type, payloads, group_key, results_key, max_group
                )
            )

        return dispatch

    async def _dispatch_grouped(
        self,
        method: str,
        service_type: str,
        payloads: Payloads,
        group_key: str,
        results_key: str,
        max_group: int,
    ) -> Payloads:
        with self._side_by_side(method) as sharing:
            singles = [i for i, p in enumerate(payloads) if group_key not in p]
            # Each of ``sharing`` dispatches side by side gets its share of the workers:
            # four instances of a batch each sending one group per worker made twice the
            # calls that keep the workers busy, and every call costs coordinator CPU.
            slots = self.handle.worker_slots(service_type, self.options.nodes)
            size = self.handle.sizer.group_size(
                method,
                jobs=len(singles),
                slots=max(1, slots // sharing),
                max_group=max_group,
            )
            sends: list[tuple[dict[str, Any], list[int] | None]] = [
                (p, None) for p in payloads if group_key in p
            ]
            for start in range(0, len(singles), size):
                chunk = singles[start : start + size]
                if len(chunk) == 1:
                    sends.append((payloads[chunk[0]], chunk))
                else:
                    sends.append(({group_key: [payloads[i] for i in chunk]}, chunk))
            outcomes = await self._run(method, service_type, [s[0] for s in sends], None)
            replies: list[dict[str, Any] | None] = [None] * len(payloads)
            passthrough = iter(i for i, p in enumerate(payloads) if group_key in p)
            for (_, members), outcome in zip(sends, outcomes, strict=True):
                reply = outcome_reply(outcome)
                self.handle.sizer.observe(
                    method,
                    jobs=1 if members is None else len(members),
                    wall_s=_unit_wall_s(outcome),
                    compute_s=compute_seconds(outcome.reply),
                )
                if members is None:
                    replies[next(passthrough)] = reply
                elif len(members) == 1:
                    replies[members[0]] = reply
                else:
                    where = {k: v for k, v in reply.items() if k != results_key}
                    results = reply.get(results_key)
                    answered = results if isinstance(results, list) else []
                    # Fewer results than jobs is caught below; extra ones are ignored.
                    for index, result in zip(members, answered[: len(members)], strict=False):
                        replies[index] = {**result, **where}
            missing = [i for i, r in enumerate(replies) if r is None]
            if missing:  # a node answered a group with fewer results than jobs
                raise ExecutionFailed(
                    f"{method}: no result for {len(missing)} of {len(payloads)} jobs",
                    details={"missing": missing[:20]},
                )
            return [r for r in replies if r is not None]

    @contextlib.contextmanager
    def _side_by_side(self, method: str) -> Iterator[int]:
        """Count this grouped dispatch of ``method`` among those in flight (it included)."""
        self._in_flight[method] = self._in_flight.get(method, 0) + 1
        try:
            yield self._in_flight[method]
        finally:
            self._in_flight[method] -= 1

    async def _dispatch(
        self, method: str, service_type: str, payloads: Payloads, on_unit: UnitProgress | None
    ) -> Payloads:
        return [outcome_reply(o) for o in await self._run(method, service_type, payloads, on_unit)]

    async def _run(
        self, method: str, service_type: str, payloads: Payloads, on_unit: UnitProgress | None
    ) -> list[UnitOutcome]:
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
        return await self.handle.run_units(units, on_done=on_done)


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("workflow.progress_not_saved", error=str(future.exception()))


def _unit_wall_s(outcome: UnitOutcome) -> float:
    """A unit's time on the coordinator's side, queue wait excluded."""
    elapsed = (outcome.finished_at - outcome.started_at).total_seconds()
    return max(0.0, elapsed - outcome.queued_s)


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
