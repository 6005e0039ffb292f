"""Runs a circuit plan on the mesh: waves of ready fragments, retries, fallback, no double counting.

A wave is the set of ready fragments on pairwise disjoint qubits. They run concurrently on
different nodes from the same input state; because they act on disjoint qubits they commute,
so the wave's output is the first node's returned state with the other nodes' returned
fragment operators applied. Each accepted fragment is committed (its row's primary key
refuses a second outcome) together with its events before the next wave starts, which is
what makes recovery after a coordinator crash exact.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.orm import Session

from quantum_mesh.arrays import decode_array, encode_array
from quantum_mesh.control import repository as repo
from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.journal import NULL_JOURNAL, Journal
from quantum_mesh.control.planner import PlannedFragment
from quantum_mesh.control.reservations import Settlement
from quantum_mesh.control.scheduler import WorkScheduler, WorkUnit
from quantum_mesh.errors import ExecutionFailed, QMeshError
from quantum_mesh.logs import get_logger
from quantum_mesh.mesh.protocol import METHOD_EXECUTE_FRAGMENT
from quantum_mesh.observability import metrics
from quantum_mesh.quantum.circuits.execute import (
    OPERATOR_MAX_QUBITS,
    apply_fragment_operator,
    initial_state,
)
from quantum_mesh.quantum.circuits.model import NormalizedCircuit
from quantum_mesh.store.database import Database, WriteOp
from quantum_mesh.store.tables import FragmentExecution

log = get_logger(__name__)


@dataclass
class FragmentOutcome:
    fragment_id: str
    node_id: str
    attempts: int
    started_at: datetime
    finished_at: datetime
    observed_fidelity: float | None
    state: NDArray[np.complex128]
    operator: NDArray[np.complex128] | None
    qubits: list[int]
    history: list[dict[str, Any]] = field(default_factory=list)
    #: The node's own compute time for the fragment (its reply's ``seconds``).
    node_seconds: float = 0.0
    #: The reservation's move to EXECUTED, committed with the wave's record.
    settlement: Settlement | None = None


def _decode_reply(
    reply: dict[str, Any],
) -> tuple[NDArray[np.complex128], NDArray[np.complex128] | None]:
    operator = reply.get("operator")
    return decode_array(reply["state"]), None if operator is None else decode_array(operator)


def _replay(rows: list[FragmentExecution], n: int) -> NDArray[np.complex128]:
    """Recovery: replay completed fragments in the order their waves were composed: apply
    the operator each node returned, or restore the checkpoint of a wide solo fragment."""
    state = initial_state(n)
    for row in sorted(rows, key=lambda r: (r.output.get("wave", 0), r.output.get("order", 0))):
        if row.output.get("checkpoint") is not None:
            state = decode_array(row.output["checkpoint"])
        else:
            state = apply_fragment_operator(
                state, decode_array(row.output["operator"]), list(row.output["qubits"]), n
            )
    return state


def _encode_wave(
    state: NDArray[np.complex128], outcomes: Sequence[FragmentOutcome]
) -> tuple[dict[str, Any] | None, list[dict[str, Any] | None]]:
    """The wave's checkpoint (a wide solo fragment returns no operator) and each operator."""
    checkpoint = encode_array(state) if outcomes[0].operator is None else None
    return checkpoint, [None if o.operator is None else encode_array(o.operator) for o in outcomes]


def _fragment_fields(job_id: str, o: FragmentOutcome) -> dict[str, Any]:
    """A fragment row's columns but its output, from the outcome that made it."""
    return {
        "job_id": job_id,
        "fragment_id": o.fragment_id,
        "node_id": o.node_id,
        "attempts": o.attempts,
        "started_at": o.started_at,
        "finished_at": o.finished_at,
        "observed_fidelity": o.observed_fidelity,
    }


def _record_wave(
    session: Session,
    *,
    job_id: str,
    outcomes: Sequence[FragmentOutcome],
    checkpoint: dict[str, Any] | None,
    operators: list[dict[str, Any] | None],
    wave: int,
) -> list[FragmentExecution]:
    """Accept a wave: one fragment row each (its primary key refuses a second outcome)."""
    rows = []
    for order, o in enumerate(outcomes):
        if o.settlement is not None:
            o.settlement.write(session)
        rows.append(
            repo.record_fragment(
                session,
                **_fragment_fields(job_id, o),
                output=_fragment_output(
                    o, order=order, wave=wave, checkpoint=checkpoint, operators=operators
                ),
            )
        )
        repo.append_event(
            session,
            job_id=job_id,
            event_type="fragment_completed",
            fragment_id=o.fragment_id,
            node_id=o.node_id,
            attempt=o.attempts,
            payload={"observed_fidelity": o.observed_fidelity},
        )
    return rows


def _fragment_output(
    o: FragmentOutcome,
    *,
    order: int,
    wave: int,
    checkpoint: dict[str, Any] | None,
    operators: list[dict[str, Any] | None],
) -> dict[str, Any]:
    return {
        "operator": operators[order],
        "checkpoint": checkpoint if order == 0 else None,
        "wave": wave,
        "order": order,
        "qubits": o.qubits,
        "history": o.history,
        "last_error": None,
    }


def _recorded_rows(
    *,
    job_id: str,
    outcomes: Sequence[FragmentOutcome],
    checkpoint: dict[str, Any] | None,
    operators: list[dict[str, Any] | None],
    wave: int,
) -> list[FragmentExecution]:
    """The rows :func:`_record_wave` writes, for a wave whose record commits later."""
    return [
        FragmentExecution(
            **_fragment_fields(job_id, o),
            output=_fragment_output(
                o, order=order, wave=wave, checkpoint=checkpoint, operators=operators
            ),
        )
        for order, o in enumerate(outcomes)
    ]


def _wave_rows(
    *, job_id: str, outcomes: Sequence[FragmentOutcome], wave: int
) -> list[FragmentExecution]:
    """A wave's rows kept in memory only (a benchmark's circuits): nothing to recover."""
    return [
        FragmentExecution(
            **_fragment_fields(job_id, o),
            output={"wave": wave, "order": order, "qubits": o.qubits, "history": o.history},
        )
        for order, o in enumerate(outcomes)
    ]


def _fragment_result_dict(row: FragmentExecution) -> dict[str, Any]:
    return {
        "fragment_id": row.fragment_id,
        "node_id": row.node_id,
        "attempts": row.attempts,
        "started_at": row.started_at.isoformat(),
        "finished_at": row.finished_at.isoformat(),
        "observed_fidelity": row.observed_fidelity,
        "error": row.output.get("last_error"),
        "history": row.output.get("history", []),
    }


@dataclass
class _Recording:
    """A wave's record being committed, and what accepts its fragments once it is."""

    commit: asyncio.Future[Any]
    then: Callable[[], None]

    def __post_init__(self) -> None:
        # A job that fails meanwhile never awaits it: its error is then only logged here.
        self.commit.add_done_callback(_retrieve)

    async def accepted(self) -> None:
        await self.commit
        self.then()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("runtime.wave_record_failed", error=repr(future.exception()))


class CircuitRuntime:
    def __init__(
        self,
        *,
        db: Database,
        scheduler: WorkScheduler,
        compute: ComputePools,
        journal: Journal = NULL_JOURNAL,
    ) -> None:
        self.db = db
        self.scheduler = scheduler
        self.compute = compute
        self.journal = journal

    async def execute(
        self,
        *,
        job_id: str,
        circuit: NormalizedCircuit,
        fragments: Sequence[PlannedFragment],
        seed: int,
        min_fidelity: float | None,
        done_rows: dict[str, FragmentExecution],
        record: Callable[[WriteOp, int, int], Awaitable[Any]] | None = None,
        nodes: frozenset[str] | None = None,
        unit_prefix: str = "",
        durable: bool = True,
        timing: dict[str, float] | None = None,
        record_last: Callable[[WriteOp, Callable[[], None]], None] | None = None,
    ) -> tuple[NDArray[np.complex128], list[dict[str, Any]]]:
        """Execute every fragment not yet completed; returns the final state and results.

        ``record(write, done, total)`` commits each wave's record (``write``), so the caller
        may commit progress with it; default: the write alone. A record commits while the next
        wave runs, and is committed before the next record is queued and before this returns.
        ``record_last(write, then)`` takes the last wave's record instead, for the caller to
        commit with the job's completion (and call ``then`` once it is committed): one
        write less per job, and the result is durable together with what produced it.
        A benchmark runs many circuits under one job: ``nodes`` restricts the fragments to
        those nodes, ``unit_prefix`` keeps their unit ids apart, ``durable=False`` keeps the
        wave records in memory (nothing to recover), and ``timing["mesh_s"]`` accumulates
        each wave's wait on the mesh beyond its slowest node's own compute time."""
        commit = record or (lambda write, _done, _total: self.db.write(write))
        n = circuit.num_qubits
        ops_by_id = {op.op_id: op for op in circuit.operations}
        done_rows = dict(done_rows)
        state = (
            await self.compute.run(_replay, list(done_rows.values()), n)
            if done_rows
            else initial_state(n)
        )
        wave_index = 1 + max((int(r.output.get("wave", 0)) for r in done_rows.values()), default=0)
        rng = random.Random(seed)
        done = set(done_rows)
        # The record of the wave before, still committing while this wave runs on the mesh.
        recording: _Recording | None = None
        while len(done) < len(fragments):
            wave = self._next_wave(fragments, done)
            sent = time.perf_counter()
            finished = await asyncio.gather(
                *(
                    self._run_fragment(
                        job_id=job_id,
                        fragment=f,
                        state=state,
                        num_qubits=n,
                        operations=[ops_by_id[i].to_dict() for i in f.operation_ids],
                        seed=rng.randrange(2**31),
                        min_fidelity=min_fidelity,
                        nodes=nodes,
                        unit_id=unit_prefix + f.fragment_id,
                    )
                    for f in wave
                ),
                return_exceptions=True,
            )
            outcomes = [o for o in finished if isinstance(o, FragmentOutcome)]
            failure = next((o for o in finished if isinstance(o, BaseException)), None)
            if failure is not None or not durable:
                # Units that ran are settled even when the wave is not recorded.
                self._settle(outcomes)
                if failure is not None:
                    if recording is not None:
                        await recording.accepted()
                    raise failure
            if timing is not None:
                waited = time.perf_counter() - sent
                slowest = max(o.node_seconds for o in outcomes)
                timing["mesh_s"] = timing.get("mesh_s", 0.0) + max(0.0, waited - slowest)
            state = await self.compute.run_sized(1 << n, self._compose, outcomes, n)
            if not durable:
                rows = _wave_rows(job_id=job_id, outcomes=outcomes, wave=wave_index)
                done_rows.update((o.fragment_id, r) for o, r in zip(outcomes, rows, strict=True))
                done.update(o.fragment_id for o in outcomes)
                wave_index += 1
                continue
            checkpoint, operators = await self.compute.run_sized(
                1 << n, _encode_wave, state, outcomes
            )
            wave_record: dict[str, Any] = {
                "job_id": job_id,
                "outcomes": outcomes,
                "checkpoint": checkpoint,
                "operators": operators,
                "wave": wave_index,
            }
            # Waves are recorded in order, one behind: the wave before must be committed (and
            # its fragments accepted) before this one's record is queued, so a record that
            # fails stops the job before anything after it is stored.
            if recording is not None:
                await recording.accepted()
                recording = None
            rows = _recorded_rows(**wave_record)
            if record_last is not None and len(done) + len(outcomes) == len(fragments):
                record_last(
                    partial(_record_wave, **wave_record), partial(self._accepted, job_id, outcomes)
                )
            else:
                # Committed while the next wave runs: a wave's results are needed by the next
                # wave at once, its record only before that wave's record and the job's end.
                recording = _Recording(
                    asyncio.ensure_future(
                        commit(
                            partial(_record_wave, **wave_record),
                            len(done) + len(outcomes),
                            len(fragments),
                        )
                    ),
                    partial(self._accepted, job_id, outcomes),
                )
            for o, row in zip(outcomes, rows, strict=True):
                done_rows[o.fragment_id] = row
            done.update(o.fragment_id for o in outcomes)
            wave_index += 1
        if recording is not None:
            await recording.accepted()
        results = [_fragment_result_dict(done_rows[f.fragment_id]) for f in fragments]
        return state, results

    def _accepted(self, job_id: str, outcomes: Sequence[FragmentOutcome]) -> None:
        """A wave's record is committed: its fragments are accepted."""
        for o in outcomes:
            if o.settlement is not None:
                o.settlement.committed()
            metrics.fragment_finished((o.finished_at - o.started_at).total_seconds(), ok=True)
            self.journal.record(
                "execution.fragment_completed",
                job_id=job_id,
                fragment_id=o.fragment_id,
                node_id=o.node_id,
                attempt=o.attempts,
                observed_fidelity=o.observed_fidelity,
            )

    def _settle(self, outcomes: Sequence[FragmentOutcome]) -> None:
        """Settle the reservations of units whose wave is not recorded: queued behind."""
        for o in outcomes:
            if o.settlement is not None:
                self.db.write_behind(o.settlement.write, then=o.settlement.committed)

    @staticmethod
    def _next_wave(fragments: Sequence[PlannedFragment], done: set[str]) -> list[PlannedFragment]:
        wave: list[PlannedFragment] = []
        busy: set[int] = set()
        for f in fragments:
            if f.fragment_id in done or not all(d in done for d in f.depends_on):
                continue
            # Nodes return no operator for very wide fragments; such a fragment runs alone so
            # its returned state is the wave's output.
            wide = len(f.qubits) > OPERATOR_MAX_QUBITS
            if wide and wave:
                continue
            if busy.isdisjoint(f.qubits):
                wave.append(f)
                busy.update(f.qubits)
                if wide:
                    break
        if not wave:
            raise ExecutionFailed("Plan has a dependency cycle: no fragment is ready")
        return wave

    @staticmethod
    def _compose(outcomes: Sequence[FragmentOutcome], n: int) -> NDArray[np.complex128]:
        state = outcomes[0].state
        for o in outcomes[1:]:
            if o.operator is None:
                raise ExecutionFailed(
                    f"Node returned no operator for parallel fragment {o.fragment_id}"
                )
            state = apply_fragment_operator(state, o.operator, o.qubits, n)
        return state

    async def _run_fragment(
        self,
        *,
        job_id: str,
        fragment: PlannedFragment,
        state: NDArray[np.complex128],
        num_qubits: int,
        operations: list[dict[str, Any]],
        seed: int,
        min_fidelity: float | None,
        nodes: frozenset[str] | None = None,
        unit_id: str | None = None,
    ) -> FragmentOutcome:
        def fidelity_ok(node_id: str, reply: Mapping[str, Any]) -> dict[str, Any] | None:
            fidelity = float(reply["observed_fidelity"])
            if min_fidelity is not None and fidelity < min_fidelity:
                return {
                    "outcome": "fidelity_below_threshold",
                    "observed_fidelity": fidelity,
                    "min_fidelity": min_fidelity,
                }
            return None

        unit = WorkUnit(
            job_id=job_id,
            unit_id=unit_id or fragment.fragment_id,
            method=METHOD_EXECUTE_FRAGMENT,
            service_type=fragment.service_type,
            services=fragment.services,
            params={
                "num_qubits": num_qubits,
                "operations": operations,
                # Travels as raw bytes on the channel (mesh/packing.py): no encoding step.
                "state": state,
                "seed": seed,
            },
            width=num_qubits,
            min_fidelity=min_fidelity,
            preferred=fragment.candidates,
            nodes=nodes,
            record=False,
            settle_with_record=True,
            accept=fidelity_ok,
        )
        try:
            done = await self.scheduler.run(unit)
        except QMeshError:
            metrics.fragment_finished(0.0, ok=False)
            raise
        new_state, operator = await self.compute.run_sized(
            1 << num_qubits, _decode_reply, done.reply
        )
        return FragmentOutcome(
            fragment_id=fragment.fragment_id,
            node_id=done.node_id,
            attempts=done.attempts,
            started_at=done.started_at,
            finished_at=done.finished_at,
            observed_fidelity=float(done.reply["observed_fidelity"]),
            state=new_state,
            operator=operator,
            qubits=[int(q) for q in done.reply.get("qubits", fragment.qubits)],
            history=done.history,
            node_seconds=float(done.reply.get("seconds") or 0.0),
            settlement=done.settlement,
        )
