"""The JobManager's one lifecycle template with stand-in processors over the stand-in mesh:
status order, EXECUTING only after a committed reservation, failures, cancellation and
admission control."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from quantum_mesh.control import repository as repo
from quantum_mesh.control.jobs import JobHandle, JobManager
from quantum_mesh.control.scheduler import WorkUnit
from quantum_mesh.control.states import JobStatus, ReservationStatus
from quantum_mesh.errors import DeadlineExceeded, ExecutionFailed, Overloaded, QMeshError
from quantum_mesh.mesh.errors import RemoteError
from quantum_mesh.mesh.protocol import METHOD_RESERVE
from quantum_mesh.store.tables import Job, Reservation, ReservationEvent
from tests.control.conftest import SERVICE, Control, MakeControl, wait_for

KIND = "fake_unit"


class OneUnit:
    """Compiles to nothing, then runs one unit of mesh work (optionally after a gate)."""

    def __init__(
        self,
        handle: JobHandle,
        *,
        gate: asyncio.Event | None = None,
        raises: QMeshError | None = None,
    ) -> None:
        self.handle = handle
        self.gate = gate
        self.raises = raises

    async def compile(self) -> str | None:
        return None

    async def execute(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if self.gate is not None:
            await self.gate.wait()
        if self.raises is not None:
            raise self.raises
        outcome = await self.handle.run_unit(
            WorkUnit(
                job_id=self.handle.job_id,
                unit_id=self.handle.new_unit_id("qaoa_block"),
                method="qaoa_block",
                service_type=SERVICE,
                params={"value": 1},
            )
        )
        return {"node": outcome.node_id, "reply": outcome.reply}, {"done": 1, "total": 1}


def _manager(c: Control, **processor_kwargs: Any) -> tuple[JobManager, list[dict[str, Any]]]:
    manager = c.job_manager()
    manager.register_processor(KIND, lambda handle: OneUnit(handle, **processor_kwargs))
    published: list[dict[str, Any]] = []
    manager.on_transition.append(published.append)
    return manager, published


async def _finish(manager: JobManager, job_id: str) -> Job:
    await wait_for(lambda: job_id not in manager._tasks, what=f"job {job_id} to end")
    return await manager.get(job_id)


def _utc(at: datetime) -> datetime:
    """SQLite hands back naive UTC datetimes."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


async def _status_events(c: Control, job_id: str) -> list[tuple[int, str]]:
    async with c.db.transaction() as session:
        events = await repo.list_events(session, job_id=job_id)
    return [(e.seq, e.payload["status"]) for e in events if e.event_type == "status"]


async def test_job_goes_through_the_template_and_is_accepted_only_after_its_commit(
    control: MakeControl,
) -> None:
    c = await control(stale_after_s=0.1)
    c.add_node("n1")
    c.registry.mark_disconnected("n1")  # restarting: the job's unit must wait for it
    manager, published = _manager(c)

    job, created = await manager.submit(kind=KIND, request={"x": 1}, idempotency_key=None)
    assert created
    await wait_for(
        lambda: bool(published) and published[-1]["status"] == JobStatus.RESERVING,
        what="RESERVING",
    )
    await asyncio.sleep(0.3)
    assert (await manager.get(job.job_id)).status == JobStatus.RESERVING
    assert c.scheduler.depth == 1
    c.announce("n1")
    done = await _finish(manager, job.job_id)

    assert done.status == JobStatus.COMPLETED
    assert done.result == {
        "node": "n1",
        "reply": {"node": "n1", "method": "qaoa_block", "value": 1},
    }
    assert done.progress == {"done": 1, "total": 1}
    statuses = await _status_events(c, job.job_id)
    expected = ["QUEUED", "COMPILING", "RESERVING", "EXECUTING", "COMPLETED"]
    assert [s for _, s in statuses] == expected
    assert [m["status"] for m in published] == expected
    # Published only after commit: every message but the submit one carries its event seq.
    assert [m["seq"] for m in published[1:]] == [seq for seq, _ in statuses[1:]]

    async with c.db.transaction() as session:
        events = await repo.list_events(session, job_id=job.job_id)
        trail = list((await session.execute(select(ReservationEvent))).scalars())
    seq_of = {s: seq for seq, s in statuses}
    started = [e for e in events if e.event_type == "attempt_started"]
    completed = [e for e in events if e.event_type == "unit_completed"]
    assert len(started) == 1 and len(completed) == 1
    assert seq_of["RESERVING"] < started[0].seq < seq_of["EXECUTING"]
    assert seq_of["EXECUTING"] < completed[0].seq < seq_of["COMPLETED"]
    committed = [e for e in trail if e.status == ReservationStatus.COMMITTED]
    assert len(committed) == 1
    executing_at = next(e.at for e in events if e.payload.get("status") == "EXECUTING")
    assert committed[0].at <= executing_at
    # The work was sent once the node had committed the reservation, while its record and
    # the move to EXECUTING were being written; the result was accepted only after that
    # commit (the event order above), so nothing about the unit was said before it.
    work = c.mesh.work_calls()
    reserve = c.mesh.calls_of(METHOD_RESERVE)
    assert len(work) == 1 and len(reserve) == 1
    assert reserve[0].at <= work[0].at
    assert work[0].params["reservation_id"] == started[0].payload["reservation_id"]


async def test_refused_reservations_keep_the_job_reserving(control: MakeControl) -> None:
    c = await control()
    c.add_node("n1", refuse_first=2)
    manager, published = _manager(c)

    job, _ = await manager.submit(kind=KIND, request={}, idempotency_key=None)
    done = await _finish(manager, job.job_id)

    assert done.status == JobStatus.COMPLETED
    assert [m["status"] for m in published] == [
        "QUEUED",
        "COMPILING",
        "RESERVING",
        "EXECUTING",
        "COMPLETED",
    ]
    async with c.db.transaction() as session:
        events = await repo.list_events(session, job_id=job.job_id)
    rejected = [e.seq for e in events if e.event_type == "reservation_rejected"]
    executing = next(e.seq for e in events if e.payload.get("status") == "EXECUTING")
    assert len(rejected) == 2
    assert max(rejected) < executing


async def test_a_first_unit_takes_its_reservation_along_to_a_node_that_takes_one(
    control: MakeControl,
) -> None:
    """To a node advertising ``inline_reserve`` the job's first unit carries its reservation:
    no ``reserve`` call; refusals keep the job RESERVING; the granted negotiation's record
    commits with the move to EXECUTING, and the result is accepted only after it."""
    c = await control()
    c.add_node("n1", inline=True, refuse_first=2)
    manager, published = _manager(c)

    job, _ = await manager.submit(kind=KIND, request={}, idempotency_key=None)
    done = await _finish(manager, job.job_id)

    assert done.status == JobStatus.COMPLETED
    expected = ["QUEUED", "COMPILING", "RESERVING", "EXECUTING", "COMPLETED"]
    assert [m["status"] for m in published] == expected
    assert c.mesh.calls_of(METHOD_RESERVE) == []
    work = c.mesh.work_calls()
    assert len(work) == 3 and all("reserve" in call.params for call in work)
    async with c.db.transaction() as session:
        events = await repo.list_events(session, job_id=job.job_id)
        trail = list(
            (await session.execute(select(ReservationEvent).order_by(ReservationEvent.seq)))
            .scalars()
            .all()
        )
    seq_of = {e.payload["status"]: e.seq for e in events if e.event_type == "status"}
    rejected = [e.seq for e in events if e.event_type == "reservation_rejected"]
    started = [e for e in events if e.event_type == "attempt_started"]
    completed = [e for e in events if e.event_type == "unit_completed"]
    assert len(rejected) == 2 and max(rejected) < seq_of["EXECUTING"]
    assert len(started) == 1 and seq_of["RESERVING"] < started[0].seq < seq_of["EXECUTING"]
    assert len(completed) == 1 and seq_of["EXECUTING"] < completed[0].seq
    granted = started[0].payload["reservation_id"]
    assert work[-1].params["reservation_id"] == granted
    assert [e.status for e in trail if e.reservation_id == granted] == [
        "REQUESTED",
        "PREPARED",
        "COMMITTED",
        "EXECUTED",
    ]


@pytest.mark.parametrize(
    "error",
    [
        ExecutionFailed("the workload failed", details={"why": "test"}),
        DeadlineExceeded("waited too long"),
    ],
    ids=["execution_failed", "deadline_exceeded"],
)
async def test_processor_error_fails_the_job_with_its_code(
    control: MakeControl, error: QMeshError
) -> None:
    c = await control()
    c.add_node("n1")
    manager, published = _manager(c, raises=error)

    job, _ = await manager.submit(kind=KIND, request={}, idempotency_key=None)
    done = await _finish(manager, job.job_id)

    assert done.status == JobStatus.FAILED
    assert done.error is not None
    assert done.error["code"] == error.code
    assert done.error["message"] == error.message
    assert [m["status"] for m in published] == ["QUEUED", "COMPILING", "RESERVING", "FAILED"]
    assert published[-1]["error"]["code"] == error.code


async def test_unit_rejected_as_bad_input_fails_the_job(control: MakeControl) -> None:
    c = await control()
    c.add_node("n1", always=RemoteError("bad_request", "bad angles"))
    manager, published = _manager(c)

    job, _ = await manager.submit(kind=KIND, request={}, idempotency_key=None)
    done = await _finish(manager, job.job_id)

    assert done.status == JobStatus.FAILED
    assert done.error is not None
    assert done.error["code"] == "execution_failed"
    assert done.error["details"]["code"] == "bad_request"
    statuses = [s for _, s in await _status_events(c, job.job_id)]
    assert statuses == ["QUEUED", "COMPILING", "RESERVING", "EXECUTING", "FAILED"]
    assert [m["status"] for m in published] == statuses
    assert len(c.mesh.work_calls()) == 1


async def test_cancelling_a_job_drops_its_waiting_units(control: MakeControl) -> None:
    c = await control()
    c.add_node("n1")
    c.registry.mark_disconnected("n1")
    manager, published = _manager(c)

    job, _ = await manager.submit(kind=KIND, request={}, idempotency_key=None)
    await wait_for(lambda: c.scheduler.depth == 1, what="the job's unit to queue")
    cancelled = await manager.cancel(job.job_id)
    assert cancelled.status == JobStatus.CANCELLED
    assert c.scheduler.depth == 0
    await _finish(manager, job.job_id)
    c.announce("n1")
    await asyncio.sleep(0.25)

    done = await manager.get(job.job_id)
    assert done.status == JobStatus.CANCELLED
    assert done.error == {"code": "cancelled", "message": "Cancelled by client"}
    assert published[-1]["status"] == JobStatus.CANCELLED
    assert c.mesh.calls == []


async def test_admission_control_refuses_past_max_queued_jobs(control: MakeControl) -> None:
    c = await control(max_queued_jobs=2)
    c.add_node("n1")
    gate = asyncio.Event()
    manager, _ = _manager(c, gate=gate)

    first, _ = await manager.submit(kind=KIND, request={"n": 1}, idempotency_key=None)
    second, _ = await manager.submit(kind=KIND, request={"n": 2}, idempotency_key=None)
    with pytest.raises(Overloaded) as info:
        await manager.submit(kind=KIND, request={"n": 3}, idempotency_key=None)
    assert info.value.retry_after_s >= 1
    assert info.value.details["retry_after_s"] == info.value.retry_after_s
    assert info.value.details["limit"] == 2
    assert info.value.details["active_jobs"] == 2
    gate.set()
    for job in (first, second):
        assert (await _finish(manager, job.job_id)).status == JobStatus.COMPLETED
    third, created = await manager.submit(kind=KIND, request={"n": 3}, idempotency_key=None)
    assert created
    assert (await _finish(manager, third.job_id)).status == JobStatus.COMPLETED


async def test_a_burst_of_submits_never_overshoots_the_queue_bound(control: MakeControl) -> None:
    c = await control(max_queued_jobs=3)
    c.add_node("n1")
    gate = asyncio.Event()
    manager, _ = _manager(c, gate=gate)

    # All at once: every submit passes its admission check before any job is written.
    answers = await asyncio.gather(
        *(manager.submit(kind=KIND, request={"n": i}, idempotency_key=None) for i in range(10)),
        return_exceptions=True,
    )

    accepted = [a for a in answers if isinstance(a, tuple)]
    refused = [a for a in answers if isinstance(a, Overloaded)]
    assert (len(accepted), len(refused)) == (3, 7)
    assert manager.active == 3
    gate.set()
    for job, _ in accepted:
        assert (await _finish(manager, job.job_id)).status == JobStatus.COMPLETED


async def test_jobs_past_max_running_jobs_wait_queued_and_start_in_order(
    control: MakeControl,
) -> None:
    c = await control(max_running_jobs=1)
    c.add_node("n1")
    gate = asyncio.Event()
    manager, published = _manager(c, gate=gate)

    first, second, third = [
        (await manager.submit(kind=KIND, request={"n": i}, idempotency_key=None))[0]
        for i in range(3)
    ]
    await wait_for(
        lambda: manager.status_of(first.job_id) == JobStatus.RESERVING,
        what="the first job to start",
    )
    await asyncio.sleep(0.1)
    # The others wait QUEUED, still counted by admission control, and can be cancelled there.
    assert manager.status_of(second.job_id) == JobStatus.QUEUED
    assert manager.status_of(third.job_id) == JobStatus.QUEUED
    assert manager.active == 3
    assert (await manager.cancel(third.job_id)).status == JobStatus.CANCELLED

    gate.set()
    assert (await _finish(manager, first.job_id)).status == JobStatus.COMPLETED
    assert (await _finish(manager, second.job_id)).status == JobStatus.COMPLETED
    assert (await _finish(manager, third.job_id)).status == JobStatus.CANCELLED
    moves = [(m["job_id"], m["status"]) for m in published]
    # The second job starts only once the first has finished; the cancelled one never does.
    assert moves.index((second.job_id, JobStatus.RESERVING)) > moves.index(
        (first.job_id, JobStatus.COMPLETED)
    )
    assert [s for j, s in moves if j == third.job_id] == [JobStatus.QUEUED, JobStatus.CANCELLED]
    # A reservation and a unit each for the two jobs that ran, none for the cancelled one.
    assert [call.method for call in c.mesh.calls] == ["reserve", "qaoa_block"] * 2


async def test_idempotent_replay_is_answered_while_overloaded(control: MakeControl) -> None:
    c = await control(max_queued_jobs=1)
    c.add_node("n1")
    gate = asyncio.Event()
    manager, _ = _manager(c, gate=gate)

    job, created = await manager.submit(kind=KIND, request={"n": 1}, idempotency_key="k1")
    again, created_again = await manager.submit(kind=KIND, request={"n": 1}, idempotency_key="k1")
    assert created and not created_again
    assert again.job_id == job.job_id
    with pytest.raises(Overloaded):
        await manager.submit(kind=KIND, request={"n": 2}, idempotency_key="k2")
    gate.set()
    assert (await _finish(manager, job.job_id)).status == JobStatus.COMPLETED


async def test_cancel_racing_the_executing_transition_leaks_no_reservation(
    control: MakeControl,
) -> None:
    c = await control()
    node = c.add_node("n1")
    manager, _ = _manager(c)
    original = c.reservations.negotiate

    async def cancel_lands_first(**kwargs: Any) -> Any:
        # The client's cancel commits after the unit was placed (the job was RESERVING) and
        # before its reservation, which carries the move to EXECUTING, is written.
        await manager.cancel(kwargs["job_id"])
        return await original(**kwargs)

    c.reservations.negotiate = cancel_lands_first  # type: ignore[method-assign]

    job, _ = await manager.submit(kind=KIND, request={}, idempotency_key=None)
    await _finish(manager, job.job_id)
    await wait_for(lambda: not c.scheduler._running, what="the attempt to end")

    try:
        assert (await manager.get(job.job_id)).status == JobStatus.CANCELLED
        async with c.db.transaction() as session:
            rows = list((await session.execute(select(Reservation))).scalars())
        assert len(rows) == 1
        # Either the work was sent (EXECUTED) or the slot was given back (CANCELED + release).
        assert rows[0].status != ReservationStatus.COMMITTED
        assert node.reserved == {}
    finally:
        gc.collect()  # the orphaned unit future logs its error here, not in a later test


class RecordsWithCompletion(OneUnit):
    """Runs its unit, then hands the record of it to the job's COMPLETED transition."""

    def __init__(self, handle: JobHandle, *, record_raises: bool = False, **kw: Any) -> None:
        super().__init__(handle, **kw)
        self.record_raises = record_raises
        self.accepted = 0

    def _record(self, session: Any) -> None:
        repo.append_event(session, job_id=self.handle.job_id, event_type="last_record")
        if self.record_raises:
            raise ValueError("the record is refused")

    def _accept(self) -> None:
        self.accepted += 1

    async def execute(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        raises, self.raises = self.raises, None
        result = await super().execute()
        self.handle.record_with_completion(self._record, self._accept)
        if raises is not None:
            raise raises  # the job fails after its last unit was recorded
        return result


@pytest.mark.parametrize("ending", ["completed", "fails_after", "record_refused"])
async def test_the_last_record_commits_with_completed_or_on_its_own(
    control: MakeControl, ending: str
) -> None:
    c = await control()
    c.add_node("n1")
    manager = c.job_manager()
    made: list[RecordsWithCompletion] = []

    def processor(handle: JobHandle) -> RecordsWithCompletion:
        made.append(
            RecordsWithCompletion(
                handle,
                raises=ExecutionFailed("after the last unit") if ending == "fails_after" else None,
                record_raises=ending == "record_refused",
            )
        )
        return made[-1]

    manager.register_processor(KIND, processor)
    job, _ = await manager.submit(kind=KIND, request={}, idempotency_key=None)
    done = await _finish(manager, job.job_id)
    await c.db.flush()
    async with c.db.transaction() as session:
        events = await repo.list_events(session, job_id=job.job_id)
    records = [e for e in events if e.event_type == "last_record"]
    statuses = [(e.seq, e.payload["status"]) for e in events if e.event_type == "status"]

    if ending == "completed":
        assert done.status == JobStatus.COMPLETED
        # In the COMPLETED transition's write: just before its status event, after the rest.
        assert len(records) == 1 and records[0].seq == statuses[-1][0] - 1
        assert made[0].accepted == 1
    elif ending == "fails_after":
        # The job failed, but what its node did is still recorded, on its own.
        assert done.status == JobStatus.FAILED
        assert len(records) == 1 and made[0].accepted == 1
    else:
        # Never COMPLETED without the record of its last work.
        assert done.status == JobStatus.FAILED
        assert done.error is not None and done.error["code"] == "internal_error"
        assert records == [] and made[0].accepted == 0
