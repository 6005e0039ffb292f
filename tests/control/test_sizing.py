"""Unit sizing from measured costs, and placement that never leaves an idle worker unused."""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from quantum_mesh.control.jobs import JobHandle
from quantum_mesh.control.sizing import (
    DEFAULT_DEPTH,
    LONG_UNIT_OVERHEAD_SHARE,
    MIN_DEPTH,
    NODE_QUEUE_BUDGET_S,
    TARGET_OVERHEAD_SHARE,
    CallSizer,
    PipelineDepth,
    UnitLengths,
    compute_seconds,
)
from quantum_mesh.control.workflows.base import RunOptions, drive
from quantum_mesh.store.tables import Job
from tests.control.conftest import SERVICE, MakeControl, unit, wait_for


def test_before_any_measurement_one_group_per_worker_slot() -> None:
    sizer = CallSizer()
    assert sizer.group_size("qaoa_block", jobs=8, slots=2, max_group=64) == 4
    assert sizer.group_size("qaoa_block", jobs=9, slots=2, max_group=64) == 5
    assert sizer.group_size("qaoa_block", jobs=8, slots=16, max_group=64) == 1
    assert sizer.group_size("qaoa_block", jobs=100, slots=1, max_group=64) == 64
    assert sizer.group_size("qaoa_block", jobs=1, slots=0, max_group=64) == 1


def test_groups_grow_until_overhead_is_a_small_share_of_compute() -> None:
    sizer = CallSizer()
    # 10 ms of overhead per unit, 20 ms of compute per job: 10 jobs keep it at 5 %.
    sizer.observe("qaoa_block", jobs=1, wall_s=0.030, compute_s=0.020)
    wanted = round(0.010 / (TARGET_OVERHEAD_SHARE * 0.020))
    assert sizer.group_size("qaoa_block", jobs=64, slots=1, max_group=64) == wanted
    # ... but never fewer groups than worker slots.
    assert sizer.group_size("qaoa_block", jobs=8, slots=4, max_group=64) == 2
    # Long jobs are worth a unit each.
    sizer.observe("sqd_batch", jobs=1, wall_s=2.01, compute_s=2.0)
    assert sizer.group_size("sqd_batch", jobs=8, slots=2, max_group=64) == 1


def test_estimates_follow_the_measurements() -> None:
    sizer = CallSizer()
    for _ in range(30):
        sizer.observe("m", jobs=4, wall_s=0.1 + 0.005, compute_s=0.1)
    estimate = sizer.estimate("m")
    assert estimate is not None
    assert estimate["overhead_s"] == pytest.approx(0.005, rel=1e-6)
    assert estimate["job_compute_s"] == pytest.approx(0.025, rel=1e-6)
    sizer.observe("m", jobs=0, wall_s=1.0, compute_s=0.0)  # ignored
    assert sizer.estimate("m") == estimate


def test_pipeline_depth_hides_the_coordinators_part_of_short_units_only() -> None:
    short = PipelineDepth(most=16)
    assert short.per_worker() == DEFAULT_DEPTH  # nothing measured yet
    # 100 ms of reservation work per unit against a 10 ms round trip: 1 + 10 units queued.
    for _ in range(20):
        short.observe(coordinator_s=0.1, round_trip_s=0.01)
    assert short.per_worker() == 11
    # Seconds-long units: one running, one ready is enough.
    long = PipelineDepth(most=16)
    long.observe(coordinator_s=0.1, round_trip_s=5.0)
    assert long.per_worker() == MIN_DEPTH
    # Never beyond what a node accepts.
    tiny = PipelineDepth(most=16)
    tiny.observe(coordinator_s=1.0, round_trip_s=0.001)
    assert tiny.per_worker() == 16


def test_pipeline_depth_keeps_a_worker_busy_when_the_round_trip_is_not_work() -> None:
    """A 1 ms fragment whose 24 ms round trip is mostly transport: deeper than the round
    trip alone says, but only as deep as ``NODE_QUEUE_BUDGET_S`` of node queue allows."""
    budget_bound = 1 + math.floor(NODE_QUEUE_BUDGET_S / 0.001)
    fragments = PipelineDepth(most=16)
    for _ in range(20):
        fragments.observe(coordinator_s=0.036, round_trip_s=0.024, node_s=0.001)
    without_node_time = 1 + math.ceil(0.036 / 0.024)
    assert fragments.per_worker() == max(without_node_time, min(60, budget_bound))
    assert fragments.per_worker() > without_node_time
    # A unit the worker is busy with for most of its round trip: no deeper than before.
    blocks = PipelineDepth(most=16)
    for _ in range(20):
        blocks.observe(coordinator_s=0.036, round_trip_s=0.4, node_s=0.35)
    assert blocks.per_worker() == MIN_DEPTH


def test_compute_seconds_reads_what_nodes_report() -> None:
    assert compute_seconds({"seconds": 0.5}) == 0.5
    assert compute_seconds({"diagnostics": {"seconds": 0.25}}) == 0.25
    grouped = {"results": [{"diagnostics": {"seconds": 0.25}}, {"seconds": 0.5}, "junk"]}
    assert compute_seconds(grouped) == 0.75
    assert compute_seconds({"seconds": True}) == 0.0
    assert compute_seconds({}) == 0.0


async def test_units_go_to_the_least_loaded_node_first(control: MakeControl) -> None:
    """Each node accepts several units per worker (to hide round trips), but a unit must not
    queue behind a busy worker while another node has less to do."""
    c = await control()
    first = c.add_node("n1", workers=1, latency_s=0.3)
    second = c.add_node("n2", workers=1, latency_s=0.3)
    # The plan prefers n1 for every unit: load must still win over that preference.
    tasks = [
        asyncio.create_task(c.scheduler.run(unit("job", f"u{i}", preferred=("n1", "n2"))))
        for i in range(4)
    ]
    await wait_for(lambda: first.in_flight + second.in_flight == 4, what="all units to start")
    assert (first.in_flight, second.in_flight) == (2, 2)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)


def test_units_are_long_once_the_coordinators_share_is_small() -> None:
    lengths = UnitLengths()
    assert not lengths.is_long("sqd_batch")  # nothing measured yet
    lengths.observe("sqd_batch", overhead_s=0.004, compute_s=4.0)
    assert lengths.is_long("sqd_batch")
    lengths.observe("sqd_batch", overhead_s=0.0, compute_s=0.0)  # reported no compute: ignored
    assert lengths.is_long("sqd_batch")
    # Millisecond units whose coordinator time is their own order of magnitude: not long.
    lengths.observe("execute_fragment", overhead_s=0.003, compute_s=0.001)
    assert not lengths.is_long("execute_fragment")
    # At the threshold, and just past it after the running averages moved there.
    edge = UnitLengths()
    edge.observe("qaoa_block", overhead_s=LONG_UNIT_OVERHEAD_SHARE * 0.5, compute_s=0.5)
    assert edge.is_long("qaoa_block")
    for _ in range(30):
        edge.observe("qaoa_block", overhead_s=2 * LONG_UNIT_OVERHEAD_SHARE * 0.5, compute_s=0.5)
    assert not edge.is_long("qaoa_block")


async def _spread(c: Any, units: int) -> None:
    await asyncio.wait_for(
        c.scheduler.run_many([unit("job", f"u{i}", method="echo") for i in range(units)]),
        timeout=20,
    )


async def test_long_units_go_to_whichever_worker_is_free_first(control: MakeControl) -> None:
    """A round of long units (SQD batches) is handed out as workers come free, as a process
    pool does, not split between nodes in advance: the slow node gets one unit while the fast
    one does the rest. Short units still fill each node's extra slots."""
    c = await control()
    fast = c.add_node("fast", workers=1, latency_s=0.02, services=(SERVICE,))
    slow = c.add_node("slow", workers=1, latency_s=0.4, services=(SERVICE,))
    c.scheduler.lengths.observe("echo", overhead_s=0.001, compute_s=1.0)  # measured long
    await _spread(c, 6)
    assert (len(fast.executed), len(slow.executed)) == (5, 1)
    assert (fast.max_in_flight, slow.max_in_flight) == (1, 1)

    # The same round of units not (yet) known as long: placed ahead, the slow node's share
    # waits behind its busy worker.
    c.scheduler.lengths = UnitLengths()
    fast.executed.clear()
    slow.executed.clear()
    await _spread(c, 6)
    assert len(slow.executed) >= 2


async def test_a_unit_queued_behind_another_does_not_count_as_its_length(
    control: MakeControl,
) -> None:
    """Only units placed on an idle worker are measured: a round trip that includes waiting
    behind another unit would make every pipelined method look short of compute."""
    c = await control()
    c.add_node("n1", workers=1, latency_s=0.3, reports_seconds=True)
    await asyncio.wait_for(
        c.scheduler.run_many([unit("job", "u0", method="echo"), unit("job", "u1", method="echo")]),
        timeout=10,
    )
    known = c.scheduler.lengths.estimate("echo")
    assert known is not None
    assert known["calls"] == 1  # u1 was placed behind u0 on the one worker: not observed
    assert known["job_compute_s"] == pytest.approx(0.3)


class GroupedRun:
    """A job whose driver sends ``payloads`` through the grouped dispatcher."""

    def __init__(self, handle: JobHandle, payloads: list[dict[str, Any]]) -> None:
        self.handle = handle
        self.payloads = payloads

    async def compile(self) -> str | None:
        return None

    async def execute(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        def driver(port: Any) -> list[dict[str, Any]]:
            send = port.grouped_dispatcher("qaoa_block", SERVICE, max_group=64)
            return send(self.payloads)  # type: ignore[no-any-return]

        replies = await drive(self.handle, RunOptions(), driver)
        return {"replies": replies}, None


async def test_grouped_dispatch_packs_jobs_per_worker_and_answers_in_input_order(
    control: MakeControl,
) -> None:
    c = await control()
    nodes = [c.add_node("n1", workers=1), c.add_node("n2", workers=1)]
    manager = c.job_manager()
    singles = [{"value": i} for i in range(8)]
    grouped = {"jobs": [{"value": 100}, {"value": 101}]}  # an explicit group goes as it is
    manager.register_processor("grouped", lambda h: GroupedRun(h, [*singles, grouped]))
    job, _ = await manager.submit(kind="grouped", request={}, idempotency_key=None)
    await wait_for(lambda: job.job_id not in manager._tasks, what="the job to end")
    done: Job = await manager.get(job.job_id)

    assert done.status == "COMPLETED", done.error
    replies = done.result["replies"]
    assert [r.get("value") for r in replies[:8]] == list(range(8))
    assert all(r["node_id"] in {"n1", "n2"} for r in replies[:8])
    assert [r["value"] for r in replies[8]["results"]] == [100, 101]
    sent = [len(call.get("jobs", [None])) for n in nodes for call in n.executed]
    # One group of 4 per worker (nothing measured yet), plus the explicit group of 2.
    assert sorted(sent) == [2, 4, 4]
    assert {len(n.executed) for n in nodes} <= {1, 2}
    assert c.scheduler.sizer.estimate("qaoa_block") is not None


class SideBySideRun:
    """A job whose driver dispatches two lists at once, as a batch's instances do: the
    second once the first one's calls are on the nodes."""

    def __init__(self, handle: JobHandle, nodes: list[Any]) -> None:
        self.handle = handle
        self.nodes = nodes

    async def compile(self) -> str | None:
        return None

    async def execute(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        def driver(port: Any) -> list[list[dict[str, Any]]]:
            send = port.grouped_dispatcher("qaoa_block", SERVICE, max_group=64)

            def one(offset: int) -> list[dict[str, Any]]:
                deadline = time.monotonic() + 10
                while offset and sum(n.in_flight for n in self.nodes) < 2:
                    assert time.monotonic() < deadline, "the first dispatch never reached the nodes"
                    time.sleep(0.005)
                return send([{"value": 10 * offset + i} for i in range(8)])  # type: ignore[no-any-return]

            with ThreadPoolExecutor(2) as pool:
                return list(pool.map(one, [0, 1]))

        replies = await drive(self.handle, RunOptions(), driver)
        return {"replies": replies}, None


async def test_dispatches_side_by_side_share_the_workers(control: MakeControl) -> None:
    c = await control()
    nodes = [
        c.add_node("n1", workers=1, latency_s=1.0),
        c.add_node("n2", workers=1, latency_s=1.0),
    ]
    manager = c.job_manager()
    manager.register_processor("side_by_side", lambda h: SideBySideRun(h, nodes))
    job, _ = await manager.submit(kind="side_by_side", request={}, idempotency_key=None)
    await wait_for(lambda: job.job_id not in manager._tasks, what="the job to end", timeout=30)
    done: Job = await manager.get(job.job_id)

    assert done.status == "COMPLETED", done.error
    first, second = done.result["replies"]
    assert [r["value"] for r in first] == list(range(8))
    assert [r["value"] for r in second] == [10 + i for i in range(8)]
    sent = sorted(len(call["jobs"]) for n in nodes for call in n.executed)
    # The first dispatch alone: one group per worker. The second, while the first is in
    # flight: half the workers are its share, so all its jobs go in one call.
    assert sent == [4, 4, 8]
