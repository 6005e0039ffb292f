"""The work scheduler against a stand-in mesh: busy means wait, refusals are not attempts,
real faults are bounded, fail-over, waiting for restarting nodes, FIFO, cancellation and
exactly-once recording."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from quantum_mesh.control import repository as repo
from quantum_mesh.control import scheduler as scheduler_module
from quantum_mesh.control.scheduler import JOB_ORDERED_UNITS, UNREACHABLE_PAUSE_S
from quantum_mesh.control.sizing import DEFAULT_DEPTH, PipelineDepth
from quantum_mesh.control.states import ReservationStatus
from quantum_mesh.errors import DeadlineExceeded, ExecutionFailed, NoCapacity
from quantum_mesh.mesh.errors import PeerUnreachable, RemoteError
from quantum_mesh.store.tables import Reservation, ReservationEvent
from tests.control.conftest import MakeControl, event_counts, unit, wait_for


async def test_busy_node_means_wait_never_failure(control: MakeControl) -> None:
    c = await control(unit_deadline_s=10.0)
    node = c.add_node("n1", workers=1, latency_s=0.02)

    units = [unit("job-1", f"u{i}") for i in range(30)]
    outcomes = await asyncio.wait_for(c.scheduler.run_many(units), timeout=15)
    await c.db.flush()  # completion records are queued behind the results

    assert [o.unit_id for o in outcomes] == [u.unit_id for u in units]
    assert all(o.node_id == "n1" for o in outcomes)
    assert all(o.attempts == 1 and o.refusals == 0 for o in outcomes)
    assert len(node.executed) == 30
    # Never more work on the node than its book allows, but the pipeline was used: at least
    # as many units as the depth before anything was measured (what it measured next depends
    # on this machine's timing: deeper when the coordinator's share of a unit is larger).
    assert node.max_occupancy <= node.capacity
    assert DEFAULT_DEPTH <= node.max_in_flight <= node.capacity
    # The scheduler's own slot count kept it from asking a full node.
    assert c.mesh.saturated_refusals == 0
    assert len(c.mesh.calls_of("reserve")) == 30
    assert node.unreserved_work == 0
    assert c.scheduler.depth == 0
    assert c.scheduler.in_flight() == {}


async def test_saturated_refusal_requeues_without_counting_an_attempt(
    control: MakeControl,
) -> None:
    c = await control()
    node = c.add_node("n1", refuse_first=3)

    outcome = await asyncio.wait_for(c.scheduler.run(unit("job-1", "u0")), timeout=5)
    await c.db.flush()  # the completion record is queued behind the result

    assert outcome.attempts == 1
    assert outcome.refusals == 3
    assert node.scripted_refusals == 3
    assert len(c.mesh.calls_of("reserve")) == 4
    assert len(c.mesh.work_calls()) == 1
    refused = [h for h in outcome.history if h["outcome"] == "reservation_rejected"]
    assert len(refused) == 3
    assert all(h["attempt"] is None and h["reason"] == "saturated" for h in refused)


async def test_busy_reply_to_work_is_a_refusal_not_an_attempt(control: MakeControl) -> None:
    c = await control()
    node = c.add_node("n1", script=[RemoteError("busy", "inbound pool full")])

    outcome = await asyncio.wait_for(c.scheduler.run(unit("job-1", "u0")), timeout=5)
    await c.db.flush()  # the completion record is queued behind the result

    assert outcome.attempts == 1
    assert outcome.refusals == 1
    assert outcome.history[0]["outcome"] == "reservation_rejected"
    assert outcome.history[0]["reason"] == "busy"
    assert len(node.executed) == 1
    async with c.db.transaction() as session:
        rows = list((await session.execute(select(Reservation))).scalars())
    status_of = {r.reservation_id: r.status for r in rows}
    assert status_of.pop(outcome.reservation_id) == ReservationStatus.EXECUTED
    assert list(status_of.values()) == [ReservationStatus.CANCELED]


async def test_real_errors_fail_after_max_unit_attempts(control: MakeControl) -> None:
    c = await control(max_unit_attempts=3)
    c.add_node("n1", always=RemoteError("handler_error", "boom"))

    with pytest.raises(ExecutionFailed) as info:
        await asyncio.wait_for(c.scheduler.run(unit("job-1", "u0")), timeout=5)

    assert type(info.value) is ExecutionFailed
    assert len(c.mesh.work_calls()) == c.settings.max_unit_attempts
    history = info.value.details["history"]
    assert [h["attempt"] for h in history] == [1, 2, 3]
    assert all(h["outcome"] == "remote_error" and h["code"] == "handler_error" for h in history)


@pytest.mark.parametrize("code", ["bad_request", "unknown_method", "handler_unavailable"])
async def test_non_retryable_codes_fail_at_once(control: MakeControl, code: str) -> None:
    c = await control(max_unit_attempts=4)
    c.add_node("n1", always=RemoteError(code, "no"))
    c.add_node("n2", always=RemoteError(code, "no"))

    with pytest.raises(ExecutionFailed) as info:
        await asyncio.wait_for(c.scheduler.run(unit("job-1", "u0")), timeout=5)

    assert len(c.mesh.work_calls()) == 1
    assert info.value.details["code"] == code


async def test_unreachable_node_fails_over_to_another(control: MakeControl) -> None:
    c = await control()
    a = c.add_node("A", script=[PeerUnreachable("connection reset")])
    b = c.add_node("B")

    outcome = await asyncio.wait_for(
        c.scheduler.run(unit("job-1", "u0", preferred=("A", "B"))), timeout=5
    )

    assert outcome.node_id == "B"
    assert outcome.attempts == 2
    assert outcome.history[0]["node_id"] == "A"
    assert outcome.history[0]["outcome"] == "connection_lost"
    assert outcome.history[-1]["node_id"] == "B"
    assert outcome.history[-1]["outcome"] == "ok"
    assert len(a.executed) == 0 and len(b.executed) == 1
    # The fail-over did not wait for A's pause to end.
    assert outcome.seconds < UNREACHABLE_PAUSE_S
    async with c.db.transaction() as session:
        a_res = (
            await session.execute(select(Reservation).where(Reservation.node_id == "A"))
        ).scalar_one()
    assert a_res.status == ReservationStatus.CANCELED


async def test_dead_node_fails_over_to_another(control: MakeControl) -> None:
    c = await control()
    c.add_node("A", dead=True)
    c.add_node("B")

    outcome = await asyncio.wait_for(
        c.scheduler.run(unit("job-1", "u0", preferred=("A", "B"))), timeout=5
    )

    assert outcome.node_id == "B"
    # A refused reservation (the node could not be dialled) is not an execution.
    assert outcome.attempts == 1
    assert outcome.refusals == 1
    assert outcome.history[0]["node_id"] == "A"
    assert outcome.history[0]["reason"].startswith("unreachable")


@pytest.mark.parametrize("how", ["stale", "disconnected"])
async def test_unit_waits_for_a_restarting_node(control: MakeControl, how: str) -> None:
    c = await control(stale_after_s=0.1, capacity_wait_s=0.05, unit_deadline_s=5.0)
    c.add_node("n1")
    if how == "stale":
        await asyncio.sleep(0.15)
    else:
        c.registry.mark_disconnected("n1")
    assert not c.registry.is_usable("n1")

    t0 = time.monotonic()
    task = asyncio.create_task(c.scheduler.run(unit("job-1", "u0")))
    await asyncio.sleep(0.5)
    assert not task.done(), "the unit must wait for the node, not fail"
    assert c.mesh.calls == [], "nothing may be asked of a stale node"
    heard_at = time.monotonic()
    c.announce("n1")
    outcome = await asyncio.wait_for(task, timeout=5)

    assert outcome.node_id == "n1"
    assert outcome.attempts == 1 and outcome.refusals == 0
    assert time.monotonic() - t0 >= 0.5
    assert min(call.at for call in c.mesh.calls) >= heard_at


async def test_no_node_offers_the_service_means_no_capacity(control: MakeControl) -> None:
    c = await control(capacity_wait_s=0.3)
    c.add_node("n1", services=("sqd_batch",))

    t0 = time.monotonic()
    with pytest.raises(NoCapacity) as info:
        await asyncio.wait_for(c.scheduler.run(unit("job-1", "u0")), timeout=5)
    waited = time.monotonic() - t0

    assert 0.3 <= waited < 1.0
    assert info.value.details["service_type"] == "qaoa_block"
    assert c.mesh.calls == []


async def test_no_capacity_ends_when_a_node_offering_it_arrives(control: MakeControl) -> None:
    c = await control(capacity_wait_s=0.5)
    task = asyncio.create_task(c.scheduler.run(unit("job-1", "u0")))
    await asyncio.sleep(0.2)
    c.add_node("n1")
    outcome = await asyncio.wait_for(task, timeout=5)
    assert outcome.node_id == "n1"


async def test_known_but_never_fresh_node_means_deadline_exceeded(control: MakeControl) -> None:
    c = await control(capacity_wait_s=0.05, unit_deadline_s=0.4)
    c.add_node("n1")
    c.registry.mark_disconnected("n1")

    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        await asyncio.wait_for(c.scheduler.run(unit("job-1", "u0")), timeout=5)
    waited = time.monotonic() - t0

    assert 0.4 <= waited < 1.0
    assert info.value.code == "deadline_exceeded"
    assert info.value.details["attempts"] == 0
    assert c.mesh.calls == []


async def test_units_start_in_submission_order_across_jobs(control: MakeControl) -> None:
    c = await control()
    node = c.add_node("n1", workers=1, latency_s=0.005)
    c.scheduler.pipeline = PipelineDepth(least=DEFAULT_DEPTH, most=DEFAULT_DEPTH)  # fixed
    # All but one of the node's slots are held by long units: one slot is left for the rest.
    blockers = [
        asyncio.create_task(c.scheduler.run(unit("job-x", f"block{i}", method="hold")))
        for i in range(DEFAULT_DEPTH - 1)
    ]
    await wait_for(lambda: node.in_flight == DEFAULT_DEPTH - 1, what="the blockers to start")

    # Job ids and unit ids deliberately do not sort in submission order.
    order = [(job, f"{job}-{i}") for job in ("job-c", "job-a", "job-b") for i in range(3)]
    tasks = []
    for job, unit_id in order:
        tasks.append(asyncio.create_task(c.scheduler.run(unit(job, unit_id))))
        await asyncio.sleep(0)  # each reaches the queue before the next is created
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)

    started = [call.params["unit_id"] for call in c.mesh.work_calls() if call.method != "hold"]
    assert started == [unit_id for _, unit_id in order]
    assert node.max_in_flight == DEFAULT_DEPTH
    assert all(o.refusals == 0 for o in outcomes)
    node.gate.set()
    await asyncio.wait_for(asyncio.gather(*blockers), timeout=5)


async def test_a_jobs_first_units_queue_at_the_jobs_place(control: MakeControl) -> None:
    """A job's next unit goes ahead of units of jobs that came after it, for its first
    ``JOB_ORDERED_UNITS`` units; later ones queue by arrival, so a long job takes turns."""
    c = await control()
    node = c.add_node("n1", workers=1, latency_s=0.005)
    c.scheduler.pipeline = PipelineDepth(least=DEFAULT_DEPTH, most=DEFAULT_DEPTH)  # fixed
    blockers = [
        asyncio.create_task(c.scheduler.run(unit("job-x", f"block{i}", method="hold")))
        for i in range(DEFAULT_DEPTH)
    ]
    await wait_for(lambda: node.in_flight == DEFAULT_DEPTH, what="every slot to be held")

    long_job = [f"long-{i}" for i in range(JOB_ORDERED_UNITS + 2)]
    arrivals = [("job-a", "a-0"), ("job-b", "b-0"), ("job-long", long_job[0]), ("job-a", "a-1")]
    arrivals += [("job-c", "c-0")] + [("job-long", u) for u in long_job[1:]] + [("job-d", "d-0")]
    tasks = []
    for job, unit_id in arrivals:
        tasks.append(asyncio.create_task(c.scheduler.run(unit(job, unit_id))))
        await asyncio.sleep(0)
    node.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks, *blockers), timeout=10)

    started = [call.params["unit_id"] for call in c.mesh.work_calls() if call.method != "hold"]
    first_long = long_job[:JOB_ORDERED_UNITS]
    assert started == ["a-0", "a-1", "b-0", *first_long, "c-0", *long_job[-2:], "d-0"]
    c.scheduler.forget_job("job-a")
    c.scheduler.forget_job("job-a")  # forgetting twice is harmless


async def test_cancel_job_drops_only_its_queued_units(control: MakeControl) -> None:
    c = await control()
    node = c.add_node("n1", workers=1)
    c.scheduler.pipeline = PipelineDepth(least=DEFAULT_DEPTH, most=DEFAULT_DEPTH)  # fixed
    blockers = [
        asyncio.create_task(c.scheduler.run(unit("job-x", f"block{i}", method="hold")))
        for i in range(DEFAULT_DEPTH)
    ]
    await wait_for(lambda: node.in_flight == DEFAULT_DEPTH, what="every slot to be held")

    doomed = [asyncio.create_task(c.scheduler.run(unit("job-a", f"a{i}"))) for i in range(3)]
    kept = [asyncio.create_task(c.scheduler.run(unit("job-b", f"b{i}"))) for i in range(3)]
    await wait_for(lambda: c.scheduler.depth == 6, what="six queued units")

    assert c.scheduler.cancel_job("job-a") == 3
    assert c.scheduler.depth == 3
    node.gate.set()

    for task in doomed:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)
    outcomes = await asyncio.wait_for(asyncio.gather(*kept, *blockers), timeout=5)
    blocks = {f"block{i}" for i in range(DEFAULT_DEPTH)}
    assert {o.unit_id for o in outcomes} == {"b0", "b1", "b2"} | blocks
    sent = [call.params.get("unit_id", "") for call in c.mesh.calls]
    assert not [f for f in sent if f.startswith("a")]
    assert c.scheduler.cancel_job("job-a") == 0


async def test_awaiter_cancelled_unit_leaves_the_queue(control: MakeControl) -> None:
    c = await control(stale_after_s=0.05)
    c.add_node("n1")
    c.registry.mark_disconnected("n1")
    task = asyncio.create_task(c.scheduler.run(unit("job-1", "u0")))
    await wait_for(lambda: c.scheduler.depth == 1, what="the unit to queue")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert c.scheduler.depth == 0
    c.announce("n1")
    await asyncio.sleep(0.25)
    assert c.mesh.calls == []


async def test_each_completed_unit_is_recorded_exactly_once(control: MakeControl) -> None:
    c = await control(max_unit_attempts=3)
    c.add_node("A", workers=1, latency_s=0.005)
    c.add_node("B", workers=2, latency_s=0.005)
    units = [unit("job-1", f"u{i}") for i in range(20)]

    outcomes = await asyncio.wait_for(c.scheduler.run_many(units), timeout=15)
    await c.db.flush()  # completion records are queued behind the results

    async with c.db.transaction() as session:
        events = await repo.list_events(session, job_id="job-1")
        rows = list((await session.execute(select(Reservation))).scalars())
        trail = list(
            (await session.execute(select(ReservationEvent).order_by(ReservationEvent.seq)))
            .scalars()
            .all()
        )
    completed = event_counts(events, "unit_completed")
    assert completed == {u.unit_id: 1 for u in units}
    assert {r.fragment_id for r in rows} == {u.unit_id for u in units}
    assert len(rows) == len(units)
    assert all(r.status == ReservationStatus.EXECUTED for r in rows)
    by_id = {o.reservation_id: o for o in outcomes}
    assert set(by_id) == {r.reservation_id for r in rows}
    for r in rows:
        steps = [e.status for e in trail if e.reservation_id == r.reservation_id]
        assert steps == ["REQUESTED", "PREPARED", "COMMITTED", "EXECUTED"]
    for event in events:
        if event.event_type == "unit_completed":
            assert event.payload["reservation_id"] in by_id
            assert by_id[event.payload["reservation_id"]].unit_id == event.fragment_id
    assert event_counts(events, "attempt_started") == {u.unit_id: 1 for u in units}


async def test_exactly_once_with_setbacks_on_the_way(control: MakeControl) -> None:
    c = await control(max_unit_attempts=3)
    # The first placement gives A two units (both refused: saturated) and B two units (the
    # first fails with a handler error, the second loses its connection).
    c.add_node("A", workers=1, refuse_first=2)
    b = c.add_node(
        "B",
        workers=1,
        legacy_commit=True,
        script=[RemoteError("handler_error", "flaky"), PeerUnreachable("reset")],
    )
    units = [unit("job-1", f"u{i}", preferred=("A", "B")) for i in range(8)]

    outcomes = await asyncio.wait_for(c.scheduler.run_many(units), timeout=15)
    await c.db.flush()  # completion records are queued behind the results

    async with c.db.transaction() as session:
        events = await repo.list_events(session, job_id="job-1")
        rows = list((await session.execute(select(Reservation))).scalars())
    assert event_counts(events, "unit_completed") == {u.unit_id: 1 for u in units}
    status_of = {r.reservation_id: r.status for r in rows}
    for o in outcomes:
        assert status_of[o.reservation_id] == ReservationStatus.EXECUTED
    # Nothing is left holding a slot, and every setback left an honest record.
    statuses = list(status_of.values())
    assert set(statuses) <= {
        ReservationStatus.EXECUTED,
        ReservationStatus.REJECTED,
        ReservationStatus.CANCELED,
    }
    assert statuses.count(ReservationStatus.REJECTED) == 2  # the two saturated refusals
    assert statuses.count(ReservationStatus.CANCELED) == 1  # the lost connection
    assert statuses.count(ReservationStatus.EXECUTED) == len(units) + 1  # + the handler error
    assert sum(o.attempts for o in outcomes) == len(units) + 2
    assert sum(o.refusals for o in outcomes) == 2
    assert event_counts(events, "attempt_failed").total() == 2
    # B answered reserves without committing: each accepted one got its own commit.
    assert len(c.mesh.calls_of("commit", "B")) == len(c.mesh.calls_of("reserve", "B"))
    assert b.script == [] and b.reserved == {}


async def test_inline_reservations_take_one_round_trip_and_keep_every_record(
    control: MakeControl,
) -> None:
    """Nodes advertising ``inline_reserve`` get each unit's reservation with its work: no
    ``reserve`` call, yet the same records as negotiating first, setbacks included."""
    c = await control(max_unit_attempts=3)
    a = c.add_node("A", workers=1, inline=True, refuse_first=2)
    b = c.add_node(
        "B",
        workers=1,
        inline=True,
        script=[RemoteError("handler_error", "flaky"), PeerUnreachable("reset")],
    )
    units = [unit("job-1", f"u{i}", preferred=("A", "B")) for i in range(8)]

    outcomes = await asyncio.wait_for(c.scheduler.run_many(units), timeout=15)
    await c.db.flush()  # the negotiation records are queued behind the replies

    assert c.mesh.calls_of("reserve") == [] and c.mesh.calls_of("commit") == []
    assert all("reserve" in call.params for call in c.mesh.work_calls())
    # A refused reservation ran nothing; every unit ran once where it succeeded.
    assert a.scripted_refusals == 2
    assert len(a.executed) + len(b.executed) == len(units)
    async with c.db.transaction() as session:
        events = await repo.list_events(session, job_id="job-1")
        rows = list((await session.execute(select(Reservation))).scalars())
        trail = list(
            (await session.execute(select(ReservationEvent).order_by(ReservationEvent.seq)))
            .scalars()
            .all()
        )
    assert event_counts(events, "unit_completed") == {u.unit_id: 1 for u in units}
    status_of = {r.reservation_id: r.status for r in rows}
    for o in outcomes:
        assert status_of[o.reservation_id] == ReservationStatus.EXECUTED
    statuses = list(status_of.values())
    assert statuses.count(ReservationStatus.REJECTED) == 2  # the two saturated refusals
    assert statuses.count(ReservationStatus.CANCELED) == 1  # the lost connection
    assert statuses.count(ReservationStatus.EXECUTED) == len(units) + 1  # + the handler error
    expected_trail = {
        ReservationStatus.REJECTED: ["REQUESTED", "REJECTED"],
        ReservationStatus.CANCELED: ["REQUESTED", "PREPARED", "COMMITTED", "CANCELED"],
        ReservationStatus.EXECUTED: ["REQUESTED", "PREPARED", "COMMITTED", "EXECUTED"],
    }
    for r in rows:
        steps = [e.status for e in trail if e.reservation_id == r.reservation_id]
        assert steps == expected_trail[ReservationStatus(r.status)], r.status
    # Attempts are executions (the refusals are counted apart), each with its start event.
    assert sum(o.attempts for o in outcomes) == len(units) + 2
    assert sum(o.refusals for o in outcomes) == 2
    assert event_counts(events, "attempt_started").total() == len(units) + 2
    assert event_counts(events, "reservation_rejected").total() == 2
    assert b.script == [] and a.reserved == {} and b.reserved == {}


async def test_inline_reservations_can_be_turned_off(control: MakeControl) -> None:
    c = await control(inline_reservations=False)
    c.add_node("A", inline=True)
    await asyncio.wait_for(c.scheduler.run(unit("job-1", "u0")), timeout=5)
    assert len(c.mesh.calls_of("reserve")) == 1
    assert "reserve" not in c.mesh.work_calls()[0].params


async def test_a_link_that_drops_and_comes_back_costs_no_attempts(control: MakeControl) -> None:
    """An inline call that found no connection never reached the node, so it is not an
    attempt: the node is paused and the unit placed there again once it is back, even after
    more such tries than ``max_unit_attempts``; each one's reservation is REJECTED, saying
    why."""
    c = await control(max_unit_attempts=2)
    node = c.add_node("A", inline=True, unreachable_next=3)

    outcome = await asyncio.wait_for(c.scheduler.run(unit("job-1", "u0")), timeout=15)
    await c.db.flush()

    assert (outcome.node_id, outcome.attempts, outcome.refusals) == ("A", 1, 3)
    assert len(node.executed) == 1
    reasons = [h["reason"] for h in outcome.history if h["outcome"] == "reservation_rejected"]
    assert len(reasons) == 3 and all(r.startswith("unreachable: ") for r in reasons)
    async with c.db.transaction() as session:
        rows = list((await session.execute(select(Reservation))).scalars())
    statuses = sorted(r.status for r in rows)
    assert statuses == sorted([ReservationStatus.EXECUTED] + [ReservationStatus.REJECTED] * 3)


async def test_a_node_that_dials_back_ends_its_pause_at_once(
    control: MakeControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that could not be reached is paused; heard again (it introduces itself as soon
    as it has dialled back), the pause ends and its unit is placed at once. The pause is made
    far longer than the test's bound, so waiting it out would fail the test."""
    monkeypatch.setattr(scheduler_module, "UNREACHABLE_PAUSE_S", 60.0)
    c = await control()
    node = c.add_node("A", inline=True, unreachable_next=1)

    task = asyncio.create_task(c.scheduler.run(unit("job-1", "u0")))
    await wait_for(lambda: len(c.mesh.work_calls()) == 1, what="the call that finds no connection")
    await asyncio.sleep(0.05)
    assert not task.done()
    c.announce("A")  # its advert after dialling back
    outcome = await asyncio.wait_for(task, timeout=10)

    assert (outcome.attempts, outcome.refusals, len(node.executed)) == (1, 1, 1)


async def test_settled_with_the_callers_record(control: MakeControl) -> None:
    """A unit settled with its caller's record stays COMMITTED until that write commits,
    then EXECUTED in it; a result nobody waits for any more is settled by the scheduler."""
    c = await control()
    c.add_node("A", workers=1, latency_s=0.005)

    async def status(reservation_id: str) -> str:
        async with c.db.transaction() as session:
            row = await session.get(Reservation, reservation_id)
            assert row is not None
            return row.status

    outcome = await asyncio.wait_for(
        c.scheduler.run(unit("job-1", "u1", record=False, settle_with_record=True)), timeout=10
    )
    assert outcome.settlement is not None
    assert await status(outcome.reservation_id) == ReservationStatus.COMMITTED

    def record(session: Session) -> None:
        assert outcome.settlement is not None
        outcome.settlement.write(session)
        repo.append_event(session, job_id="job-1", event_type="recorded", fragment_id="u1")

    await c.db.write(record)
    assert await status(outcome.reservation_id) == ReservationStatus.EXECUTED

    c.add_node("B", workers=1, latency_s=0.3)
    abandoned = asyncio.ensure_future(
        c.scheduler.run(
            unit("job-2", "u2", record=False, settle_with_record=True, nodes=frozenset({"B"}))
        )
    )
    await wait_for(lambda: bool(c.mesh.work_calls("B")), timeout=5)
    abandoned.cancel()
    async with c.db.transaction() as session:
        rows = await session.execute(select(Reservation).where(Reservation.job_id == "job-2"))
        (reservation_id,) = [r.reservation_id for r in rows.scalars()]

    async def settled() -> bool:
        return await status(reservation_id) == ReservationStatus.EXECUTED

    deadline = time.monotonic() + 10
    while not await settled():
        assert time.monotonic() < deadline, "the abandoned unit's reservation was not settled"
        await asyncio.sleep(0.05)
