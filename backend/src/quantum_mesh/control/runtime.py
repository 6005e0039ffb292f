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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quantum_mesh.config import Settings
from quantum_mesh.control import repository as repo
from quantum_mesh.control.journal import NULL_JOURNAL, Journal
from quantum_mesh.control.ports import MeshPort
from quantum_mesh.control.registry import PeerRegistry
from quantum_mesh.control.reservations import ReservationService
from quantum_mesh.control.states import ReservationStatus
from quantum_mesh.errors import ExecutionFailed
from quantum_mesh.logs import get_logger
from quantum_mesh.mesh.errors import InvokeTimeout, MeshError, RemoteError
from quantum_mesh.observability import metrics
from quantum_mesh.quantum.circuits.execute import (
    OPERATOR_MAX_QUBITS,
    apply_fragment_operator,
    initial_state,
)
from quantum_mesh.quantum.circuits.model import NormalizedCircuit
from quantum_mesh.quantum.encoding import decode_array, encode_array
from quantum_mesh.store.database import Database
from quantum_mesh.store.tables import FragmentExecution

log = get_logger(__name__)

MAX_BUSY_ROUNDS = 30
_RETRY_EVENTS = frozenset(
    {"attempt_failed", "reservation_rejected", "fidelity_below_threshold", "node_skipped"}
)
BUSY_REASONS = frozenset({"saturated"})
_NON_RETRYABLE_REMOTE = {"bad_request", "unknown_method", "handler_unavailable"}


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


def _decode_reply(
    reply: dict[str, Any],
) -> tuple[NDArray[np.complex128], NDArray[np.complex128] | None]:
    operator = reply.get("operator")
    return decode_array(reply["state"]), None if operator is None else decode_array(operator)


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter (attempt counts from 1)."""
    return rng.uniform(0, min(cap, base * (2 ** (attempt - 1))))


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


class CircuitRuntime:
    def __init__(
        self,
        *,
        db: Database,
        mesh: MeshPort,
        registry: PeerRegistry,
        reservations: ReservationService,
        settings: Settings,
        journal: Journal = NULL_JOURNAL,
    ) -> None:
        self.db = db
        self.mesh = mesh
        self.registry = registry
        self.reservations = reservations
        self.settings = settings
        self.journal = journal

    async def execute(
        self,
        *,
        job_id: str,
        circuit: NormalizedCircuit,
        fragments: Sequence[dict[str, Any]],
        seed: int,
        min_fidelity: float | None,
        on_wave: Callable[[int, int], Awaitable[None]] | None = None,
        on_committed: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[NDArray[np.complex128], list[dict[str, Any]]]:
        """Execute every fragment not yet completed; returns the final state and results."""
        n = circuit.num_qubits
        ops_by_id = {op.op_id: op for op in circuit.operations}
        async with self.db.transaction() as session:
            done_rows = {
                r.fragment_id: r for r in await repo.fragment_executions(session, job_id=job_id)
            }
        # Recovery: replay completed fragments in the order their waves were composed: apply
        # the operator each node returned, or restore the checkpoint of a wide solo fragment.
        state = initial_state(n)
        for row in sorted(
            done_rows.values(), key=lambda r: (r.output.get("wave", 0), r.output.get("order", 0))
        ):
            if row.output.get("checkpoint") is not None:
                state = decode_array(row.output["checkpoint"])
            else:
                state = apply_fragment_operator(
                    state, decode_array(row.output["operator"]), list(row.output["qubits"]), n
                )
        wave_index = 1 + max((int(r.output.get("wave", 0)) for r in done_rows.values()), default=0)
        rng = random.Random(seed)
        done = set(done_rows)
        while len(done) < len(fragments):
            wave = self._next_wave(fragments, done)
            if on_wave is not None:
                await on_wave(len(done), len(fragments))
            outcomes = await asyncio.gather(
                *(
                    self._run_fragment(
                        job_id=job_id,
                        fragment=f,
                        state=state,
                        num_qubits=n,
                        operations=[ops_by_id[i].to_dict() for i in f["operation_ids"]],
                        seed=rng.randrange(2**31),
                        min_fidelity=min_fidelity,
                        on_committed=on_committed,
                    )
                    for f in wave
                )
            )
            state = await asyncio.to_thread(self._compose, outcomes, n)
            checkpoint = encode_array(state) if outcomes[0].operator is None else None
            async with self.db.transaction() as session:
                for order, o in enumerate(outcomes):
                    row = await repo.record_fragment(
                        session,
                        job_id=job_id,
                        fragment_id=o.fragment_id,
                        node_id=o.node_id,
                        attempts=o.attempts,
                        started_at=o.started_at,
                        finished_at=o.finished_at,
                        observed_fidelity=o.observed_fidelity,
                        output={
                            "operator": None if o.operator is None else encode_array(o.operator),
                            "checkpoint": checkpoint if order == 0 else None,
                            "wave": wave_index,
                            "order": order,
                            "qubits": o.qubits,
                            "history": o.history,
                            "last_error": None,
                        },
                    )
                    done_rows[o.fragment_id] = row
                    metrics.fragment_finished(
                        (o.finished_at - o.started_at).total_seconds(), ok=True
                    )
                    self.journal.record(
                        "execution.fragment_completed",
                        job_id=job_id,
                        fragment_id=o.fragment_id,
                        node_id=o.node_id,
                        attempt=o.attempts,
                        observed_fidelity=o.observed_fidelity,
                    )
                    await repo.append_event(
                        session,
                        job_id=job_id,
                        event_type="fragment_completed",
                        fragment_id=o.fragment_id,
                        node_id=o.node_id,
                        attempt=o.attempts,
                        payload={"observed_fidelity": o.observed_fidelity},
                    )
            done.update(o.fragment_id for o in outcomes)
            wave_index += 1
        results = [_fragment_result_dict(done_rows[f["fragment_id"]]) for f in fragments]
        return state, results

    @staticmethod
    def _next_wave(fragments: Sequence[dict[str, Any]], done: set[str]) -> list[dict[str, Any]]:
        wave: list[dict[str, Any]] = []
        busy: set[int] = set()
        for f in fragments:
            if f["fragment_id"] in done or not all(d in done for d in f["depends_on"]):
                continue
            # Nodes return no operator for very wide fragments; such a fragment runs alone so
            # its returned state is the wave's output.
            wide = len(f["qubits"]) > OPERATOR_MAX_QUBITS
            if wide and wave:
                continue
            if busy.isdisjoint(f["qubits"]):
                wave.append(f)
                busy.update(f["qubits"])
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

    def _candidates(self, fragment: dict[str, Any]) -> list[str]:
        return [fragment["primary_node"], *fragment.get("fallback_nodes", [])]

    async def _event(self, job_id: str, event_type: str, **kw: Any) -> None:
        if event_type in _RETRY_EVENTS:
            metrics.retry(
                event_type
                if event_type != "attempt_failed"
                else str(kw.get("payload", {}).get("code", "attempt_failed"))
            )
        async with self.db.transaction() as session:
            await repo.append_event(session, job_id=job_id, event_type=event_type, **kw)
        self.journal.record(f"execution.{event_type}", job_id=job_id, **kw)

    async def _run_fragment(
        self,
        *,
        job_id: str,
        fragment: dict[str, Any],
        state: NDArray[np.complex128],
        num_qubits: int,
        operations: list[dict[str, Any]],
        seed: int,
        min_fidelity: float | None,
        on_committed: Callable[[], Awaitable[None]] | None = None,
    ) -> FragmentOutcome:
        fid = fragment["fragment_id"]
        started = datetime.now(UTC)
        attempts = 0
        history: list[dict[str, Any]] = []
        rng = random.Random(seed)
        encoded_state = await asyncio.to_thread(encode_array, state)
        # A busy node refuses reservations; when no candidate took the fragment but some were
        # only busy, the fragment waits (bounded backoff) and asks again instead of failing.
        for busy_round in range(1, MAX_BUSY_ROUNDS + 1):
            outcome, some_busy = await self._try_candidates(
                job_id=job_id,
                fragment=fragment,
                encoded_state=encoded_state,
                num_qubits=num_qubits,
                operations=operations,
                seed=seed,
                min_fidelity=min_fidelity,
                history=history,
                rng=rng,
                started=started,
                attempts_so_far=attempts,
                on_committed=on_committed,
            )
            if isinstance(outcome, FragmentOutcome):
                return outcome
            attempts = outcome
            if not some_busy:
                break
            await asyncio.sleep(self._delay(min(busy_round, 4), rng))
        metrics.fragment_finished((datetime.now(UTC) - started).total_seconds(), ok=False)
        raise ExecutionFailed(
            f"Fragment {fid} could not be executed on any candidate node",
            details={"fragment_id": fid, "attempts": attempts, "history": history},
        )

    async def _try_candidates(
        self,
        *,
        job_id: str,
        fragment: dict[str, Any],
        encoded_state: dict[str, Any],
        num_qubits: int,
        operations: list[dict[str, Any]],
        seed: int,
        min_fidelity: float | None,
        history: list[dict[str, Any]],
        rng: random.Random,
        started: datetime,
        attempts_so_far: int,
        on_committed: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[FragmentOutcome | int, bool]:
        """One pass over the candidates. Returns (outcome or attempts used, whether some
        candidate refused only because it was busy, so another pass may succeed)."""
        fid = fragment["fragment_id"]
        attempts = attempts_so_far
        busy_refusals = 0
        for node_id in self._candidates(fragment):
            if not self.registry.is_usable(node_id):
                await self._setback(
                    job_id,
                    fid,
                    history,
                    "node_skipped",
                    node_id=node_id,
                    attempt=None,
                    outcome="skipped_unusable",
                    reason="stale, disconnected or not enrolled",
                )
                continue
            for node_attempt in range(1, self.settings.max_attempts_per_node + 1):
                attempts += 1
                reservation = await self.reservations.reserve(
                    service_type=fragment["service_type"],
                    node_id=node_id,
                    min_fidelity=min_fidelity,
                    job_id=job_id,
                    fragment_id=fid,
                )
                if reservation.status != ReservationStatus.COMMITTED:
                    await self._setback(
                        job_id,
                        fid,
                        history,
                        "reservation_rejected",
                        node_id=node_id,
                        attempt=attempts,
                        outcome="reservation_rejected",
                        reason=reservation.reason,
                    )
                    if reservation.reason in BUSY_REASONS:
                        busy_refusals += 1
                    break
                if on_committed is not None:
                    await on_committed()
                await self._event(
                    job_id,
                    "attempt_started",
                    fragment_id=fid,
                    node_id=node_id,
                    attempt=attempts,
                    payload={"reservation_id": reservation.reservation_id},
                )
                t0 = time.perf_counter()
                try:
                    reply = await self.mesh.invoke(
                        node_id,
                        "execute_fragment",
                        {
                            "num_qubits": num_qubits,
                            "operations": operations,
                            "state": encoded_state,
                            "seed": seed,
                            "reservation_id": reservation.reservation_id,
                            "job_id": job_id,
                            "fragment_id": fid,
                        },
                        timeout=self.settings.invoke_timeout_s,
                        addrs=self.registry.addrs_of(node_id),
                    )
                except RemoteError as exc:
                    await self.reservations.mark_executed(reservation.reservation_id)
                    self.registry.record_outcome(node_id, ok=False)
                    await self._setback(
                        job_id,
                        fid,
                        history,
                        "attempt_failed",
                        node_id=node_id,
                        attempt=attempts,
                        outcome="remote_error",
                        code=exc.code,
                        message=exc.message,
                    )
                    if exc.code in _NON_RETRYABLE_REMOTE:
                        raise ExecutionFailed(
                            f"Fragment {fid} was refused by {node_id}: {exc.message}",
                            details={"fragment_id": fid, "code": exc.code},
                        ) from exc
                    await asyncio.sleep(self._delay(node_attempt, rng))
                    continue
                except MeshError as exc:
                    await self._cancel_quietly(reservation.reservation_id, "invocation failed")
                    self.registry.record_outcome(node_id, ok=False)
                    kind = "timeout" if isinstance(exc, InvokeTimeout) else "connection_lost"
                    await self._setback(
                        job_id,
                        fid,
                        history,
                        "attempt_failed",
                        node_id=node_id,
                        attempt=attempts,
                        outcome=kind,
                        code=kind,
                        message=str(exc),
                    )
                    if not self.registry.is_usable(node_id):
                        break
                    await asyncio.sleep(self._delay(node_attempt, rng))
                    continue
                await self.reservations.mark_executed(reservation.reservation_id)
                elapsed = time.perf_counter() - t0
                fidelity = float(reply["observed_fidelity"])
                self.registry.record_latency(node_id, elapsed)
                if min_fidelity is not None and fidelity < min_fidelity:
                    self.registry.record_outcome(node_id, ok=False, observed_fidelity=fidelity)
                    await self._setback(
                        job_id,
                        fid,
                        history,
                        "fidelity_below_threshold",
                        node_id=node_id,
                        attempt=attempts,
                        outcome="fidelity_below_threshold",
                        observed_fidelity=fidelity,
                        min_fidelity=min_fidelity,
                    )
                    break
                self.registry.record_outcome(node_id, ok=True, observed_fidelity=fidelity)
                history.append(
                    {
                        "node_id": node_id,
                        "attempt": attempts,
                        "outcome": "ok",
                        "observed_fidelity": fidelity,
                        "seconds": round(elapsed, 6),
                    }
                )
                new_state, operator = await asyncio.to_thread(_decode_reply, reply)
                return (
                    FragmentOutcome(
                        fragment_id=fid,
                        node_id=node_id,
                        attempts=attempts,
                        started_at=started,
                        finished_at=datetime.now(UTC),
                        observed_fidelity=fidelity,
                        state=new_state,
                        operator=operator,
                        qubits=[int(q) for q in reply.get("qubits", fragment["qubits"])],
                        history=history,
                    ),
                    False,
                )
        return attempts, busy_refusals > 0

    async def _setback(
        self,
        job_id: str,
        fid: str,
        history: list[dict[str, Any]],
        event_type: str,
        *,
        node_id: str,
        attempt: int | None,
        outcome: str,
        **details: Any,
    ) -> None:
        """A try that did not produce the fragment: into its history and the event log."""
        history.append({"node_id": node_id, "attempt": attempt, "outcome": outcome, **details})
        await self._event(
            job_id, event_type, fragment_id=fid, node_id=node_id, attempt=attempt, payload=details
        )

    def _delay(self, attempt: int, rng: random.Random) -> float:
        return backoff_delay(
            attempt,
            base=self.settings.retry_base_delay_s,
            cap=self.settings.retry_max_delay_s,
            rng=rng,
        )

    async def _cancel_quietly(self, reservation_id: str, reason: str) -> None:
        try:
            await self.reservations.cancel(reservation_id, reason=reason)
        except Exception as exc:
            log.info("reservation.cancel_failed", reservation_id=reservation_id, error=str(exc))
