"""Circuit jobs: parse, plan fragments onto nodes, run them in waves, analyse the result."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from quantum_mesh.config import Settings
from quantum_mesh.control import repository as repo
from quantum_mesh.control.circuit_check import (
    CircuitValidator,
    ParsedCircuits,
    check_circuit,
    circuit_limits,
)
from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import CIRCUIT_KIND, JobHandle, JobManager
from quantum_mesh.control.planner import (
    CostWeights,
    FragmentSpec,
    PlannedFragment,
    offers,
    plan_fragments,
)
from quantum_mesh.control.registry import PeerRegistry
from quantum_mesh.control.runtime import CircuitRuntime
from quantum_mesh.control.scheduler import WorkUnit
from quantum_mesh.control.states import JobStatus
from quantum_mesh.errors import NoCapacity
from quantum_mesh.mesh.protocol import METHOD_EXECUTE_DYNAMIC, SERVICE_MEASUREMENT_FEEDFORWARD
from quantum_mesh.quantum.analysis import build_bounded_result, build_dynamic_result
from quantum_mesh.quantum.circuits.fragments import build_fragments
from quantum_mesh.quantum.circuits.model import Fragment, NormalizedCircuit
from quantum_mesh.quantum.circuits.parse import parse_circuit
from quantum_mesh.store.database import Database, WriteOp
from quantum_mesh.store.tables import FragmentExecution

__all__ = ["CIRCUIT_KIND", "CircuitWorkload", "check_circuit"]

CAPACITY_POLL_S = 0.25
#: The one fragment of a dynamic circuit (run whole on one node).
DYNAMIC_FRAGMENT_ID = "dynamic"
#: Shortest interval between two progress reports of one circuit job.
PROGRESS_EVERY_S = 0.25


#: Smallest budget left to a ``quantum_result`` whatever its ``fragment_results`` weigh (a
#: 20-qubit result without distributions is about 10 KB).
MIN_QUANTUM_RESULT_BYTES = 65_536
#: The JSON around the two parts of a stored circuit result.
RESULT_ENVELOPE_BYTES = 64


def quantum_result_budget(max_result_bytes: int, fragment_results: list[dict[str, Any]]) -> int:
    """What ``QMESH_MAX_RESULT_BYTES`` leaves to the ``quantum_result`` beside these
    ``fragment_results`` (the stored document holds both)."""
    used = len(json.dumps(fragment_results, default=str)) + RESULT_ENVELOPE_BYTES
    return max(MIN_QUANTUM_RESULT_BYTES, max_result_bytes - used)


class CircuitWorkload:
    """Shared by every circuit job; :meth:`process` makes the per-job part."""

    def __init__(
        self,
        *,
        db: Database,
        registry: PeerRegistry,
        runtime: CircuitRuntime,
        compute: ComputePools,
        settings: Settings,
    ) -> None:
        self.db = db
        self.registry = registry
        self.runtime = runtime
        self.compute = compute
        self.settings = settings
        self.limits = circuit_limits(settings)
        self.parsed_cache = ParsedCircuits()
        self.validator = CircuitValidator(compute, settings)

    async def submit(
        self,
        jobs: JobManager,
        *,
        request: dict[str, Any],
        idempotency_key: str | None,
        owner: str | None = None,
        max_active: int | None = None,
    ) -> Any:
        # Parse before accepting, so a bad circuit is a 400 and never a FAILED job; in a
        # worker process, so a huge or hostile circuit cannot stall the API loop; bounded by
        # the input limits before Qiskit builds anything. The parsed circuit is kept for the
        # job's compile step.
        jobs.admit(idempotency_key)
        text = request["circuit"]
        circuit = await self.validator.check(text)
        self.parsed_cache.put(circuit)
        return await jobs.submit(
            kind=CIRCUIT_KIND,
            request=request,
            idempotency_key=idempotency_key,
            owner=owner,
            max_active=max_active,
        )

    async def parsed(self, text: str) -> NormalizedCircuit:
        """The circuit parsed at submit, or (after a restart) parsed again, with the limits."""
        circuit = self.parsed_cache.get(text)
        if circuit is None:
            circuit = await self.compute.run(parse_circuit, text, **self.limits)
            self.parsed_cache.put(circuit)
        return circuit

    def process(self, handle: JobHandle) -> CircuitProcess:
        return CircuitProcess(self, handle)

    async def plan(
        self, specs: list[FragmentSpec], min_fidelity: float | None
    ) -> list[PlannedFragment]:
        """Plan on the nodes usable now; right after a start-up or a node restart, on every
        node known to offer the services (the scheduler waits for them); with no such node
        at all, wait (bounded) for one to be heard."""
        weights = CostWeights.from_settings(self.settings)
        deadline = time.monotonic() + self.settings.capacity_wait_s
        while True:
            for peers in (self.registry.usable_snapshot(), self._trusted_known()):
                try:
                    return await self.compute.run_sized(
                        len(specs) * max(1, len(peers)),
                        plan_fragments,
                        specs,
                        peers,
                        weights=weights,
                        min_fidelity=min_fidelity,
                    )
                except NoCapacity:
                    if time.monotonic() >= deadline:
                        raise
            await asyncio.sleep(CAPACITY_POLL_S)

    def fusable(self, width: int) -> Callable[[frozenset[str]], bool] | None:
        """Which mixes of services one fragment may hold: those that some node (usable now,
        else known) offers together for ``width`` qubits. Each fragment is a node call, and
        under load the coordinator's cost per call, not the simulation, bounds jobs/s: a
        Bell circuit fused is one call instead of two (docs/control-plane.md, "Fused
        fragments"). ``None`` with ``QMESH_FUSE_FRAGMENTS=false``: one service per call."""
        if not self.settings.fuse_fragments:
            return None
        peers = self.registry.usable_snapshot() or self._trusted_known()

        def fuse(services: frozenset[str]) -> bool:
            first, *rest = sorted(services)
            return any(offers(p, first, width, *rest) for p in peers)

        return fuse

    def _trusted_known(self) -> list[Any]:
        return [v for v in self.registry.snapshot() if self.registry.is_trusted(v.peer_id)]


class CircuitProcess:
    def __init__(self, workload: CircuitWorkload, handle: JobHandle) -> None:
        self.w = workload
        self.handle = handle
        self.circuit: NormalizedCircuit | None = None
        self.fragments: list[PlannedFragment] = []
        self.order: dict[str, int] = {}
        self.done_rows: dict[str, FragmentExecution] = {}

    async def compile(self) -> str | None:
        w, handle = self.w, self.handle
        request = handle.request
        circuit = await w.parsed(request["circuit"])
        if circuit.dynamic is not None:
            return self._plan_dynamic(circuit)
        # Only a recovered job can have finished fragments already; it keeps the fragments
        # of its saved plan, since which services fuse depends on the nodes there were.
        saved: list[Fragment] | None = None
        if handle.status != JobStatus.QUEUED:
            async with w.db.transaction() as session:
                rows = await repo.fragment_executions(session, job_id=handle.job_id)
                last_plan = await repo.latest_plan_for_job(session, job_id=handle.job_id)
            self.done_rows = {r.fragment_id: r for r in rows}
            if last_plan is not None:
                saved = [Fragment.from_dict(f) for f in last_plan.plan["fragments"]]
        if saved:
            fragments = saved
        else:
            fuse = w.fusable(circuit.num_qubits)
            fragments = await w.compute.run_sized(
                len(circuit.operations), build_fragments, circuit, fuse=fuse
            )
        done = set(self.done_rows)
        specs = [FragmentSpec.of(f, width=circuit.num_qubits) for f in fragments]
        min_fidelity = request.get("min_fidelity")
        # A recovered job is planned again for what is left: nodes may have changed meanwhile.
        pending = [s for s in specs if s.fragment_id not in done]
        planned = {p.fragment_id: p for p in await w.plan(pending, min_fidelity)}
        self.fragments = [
            planned.get(s.fragment_id)
            or PlannedFragment(
                fragment_id=s.fragment_id,
                service_type=s.service_type,
                qubits=s.qubits,
                operation_ids=s.operation_ids,
                depends_on=s.depends_on,
                primary_node=None,
                fallback_nodes=(),
                cost={},
                completed_before_replan=True,
                services=s.services,
            )
            for s in specs
        ]
        self.circuit = circuit
        self.order = {f.fragment_id: i for i, f in enumerate(fragments)}
        plan_id = str(uuid.uuid4())
        plan = {
            "plan_id": plan_id,
            "job_id": handle.job_id,
            "num_qubits": circuit.num_qubits,
            "weights": CostWeights.from_settings(w.settings).__dict__,
            "min_fidelity": min_fidelity,
            "fragments": [f.to_dict() for f in self.fragments],
            "registry_snapshot": [p.to_dict() for p in w.registry.usable_snapshot()],
        }

        handle.write_with_next_transition(
            partial(repo.save_plan, plan_id=plan_id, job_id=handle.job_id, plan=plan)
        )
        return plan_id

    def _plan_dynamic(self, circuit: NormalizedCircuit) -> str:
        """A dynamic circuit is one unit for a node offering ``measurement_feedforward``."""
        assert circuit.dynamic is not None
        self.circuit = circuit
        plan_id = str(uuid.uuid4())
        plan = {
            "plan_id": plan_id,
            "job_id": self.handle.job_id,
            "num_qubits": circuit.num_qubits,
            "dynamic": {"features": list(circuit.dynamic.features)},
            "fragments": [
                {
                    "fragment_id": DYNAMIC_FRAGMENT_ID,
                    "service_type": SERVICE_MEASUREMENT_FEEDFORWARD,
                    "qubits": list(range(circuit.num_qubits)),
                    "depends_on": [],
                }
            ],
            "registry_snapshot": [p.to_dict() for p in self.w.registry.usable_snapshot()],
        }
        self.handle.write_with_next_transition(
            partial(repo.save_plan, plan_id=plan_id, job_id=self.handle.job_id, plan=plan)
        )
        return plan_id

    async def _execute_dynamic(
        self, circuit: NormalizedCircuit
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        assert circuit.dynamic is not None
        handle, request = self.handle, self.handle.request
        shots = int(request.get("shots", 1024))
        seed = int(request.get("seed") or 0)
        outcome = await handle.run_unit(
            WorkUnit(
                job_id=handle.job_id,
                unit_id=f"{DYNAMIC_FRAGMENT_ID}/{handle.new_unit_id(METHOD_EXECUTE_DYNAMIC)}",
                method=METHOD_EXECUTE_DYNAMIC,
                service_type=SERVICE_MEASUREMENT_FEEDFORWARD,
                params={
                    "format": circuit.dynamic.format,
                    "source": circuit.dynamic.source,
                    "shots": shots,
                    "seed": seed,
                },
                width=circuit.num_qubits,
                min_fidelity=request.get("min_fidelity"),
            )
        )
        fragment = {
            "fragment_id": DYNAMIC_FRAGMENT_ID,
            "node_id": outcome.node_id,
            "attempts": outcome.attempts,
            "started_at": outcome.started_at.isoformat(),
            "finished_at": outcome.finished_at.isoformat(),
            "observed_fidelity": None,
            "error": None,
        }
        result = build_dynamic_result(circuit, outcome.reply, shots=shots, seed=seed)
        return (
            {"fragment_results": [fragment], "quantum_result": result},
            {"fragments_done": 1, "fragments_total": 1},
        )

    async def execute(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        w, handle, circuit = self.w, self.handle, self.circuit
        assert circuit is not None, "compile() runs first"
        if circuit.dynamic is not None:
            return await self._execute_dynamic(circuit)
        request = handle.request

        # The first report comes PROGRESS_EVERY_S after the work started: a job done sooner
        # (a Bell circuit) writes no progress at all, its COMPLETED says it.
        last_report = time.monotonic()

        async def record(wave: WriteOp, completed: int, total: int) -> Any:
            # A wave's record carries the progress it makes: at most a few progress writes a
            # second whatever the number of waves, none for the last (COMPLETED says it).
            nonlocal last_report
            now = time.monotonic()
            if completed < total and now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                progress = {"fragments_done": completed, "fragments_total": total}
                return await handle.progress(progress, also=wave)
            return await w.db.write(wave)

        seed = int(request.get("seed") or 0)
        final_state, fragment_results = await w.runtime.execute(
            job_id=handle.job_id,
            circuit=circuit,
            fragments=self.fragments,
            seed=seed,
            min_fidelity=request.get("min_fidelity"),
            done_rows=self.done_rows,
            record=record,
            record_last=handle.record_with_completion,
        )
        fragment_results.sort(key=lambda r: self.order[r["fragment_id"]])
        # Bounded (docs/security.md, "Bounded results"): big arrays become artifacts, stored
        # with the COMPLETED transition.
        bounded = await w.compute.run(
            build_bounded_result,
            circuit,
            final_state,
            shots=int(request.get("shots", 1024)),
            seed=seed,
            fragment_fidelities=[
                r["observed_fidelity"]
                for r in fragment_results
                if r["observed_fidelity"] is not None
            ],
            max_result_bytes=quantum_result_budget(w.settings.max_result_bytes, fragment_results),
        )
        handle.keep_artifacts(bounded.artifacts)
        total = len(self.fragments)
        return (
            {"fragment_results": fragment_results, "quantum_result": bounded.quantum_result},
            {"fragments_done": total, "fragments_total": total},
        )
