"""Circuit jobs: parse, plan fragments onto nodes, run them in waves, analyse the result."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from quantum_mesh.config import Settings
from quantum_mesh.control import repository as repo
from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import CIRCUIT_KIND, JobHandle, JobManager
from quantum_mesh.control.planner import (
    CostWeights,
    FragmentSpec,
    PlannedFragment,
    plan_fragments,
)
from quantum_mesh.control.registry import PeerRegistry
from quantum_mesh.control.runtime import CircuitRuntime
from quantum_mesh.errors import NoCapacity
from quantum_mesh.quantum.analysis import build_quantum_result
from quantum_mesh.quantum.circuits.fragments import build_fragments
from quantum_mesh.quantum.circuits.model import NormalizedCircuit
from quantum_mesh.quantum.circuits.parse import parse_circuit
from quantum_mesh.store.database import Database

__all__ = ["CIRCUIT_KIND", "CircuitWorkload", "check_circuit"]

CAPACITY_POLL_S = 0.25


def check_circuit(text: str) -> int:
    """Parse only to validate (in a validation process); returns the qubit count."""
    return parse_circuit(text).num_qubits


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

    async def submit(
        self, jobs: JobManager, *, request: dict[str, Any], idempotency_key: str | None
    ) -> Any:
        # Parse before accepting, so a bad circuit is a 400 and never a FAILED job; in a
        # worker process, so a huge or hostile circuit cannot stall the API loop.
        jobs.admit()
        await self.compute.isolated(check_circuit, request["circuit"])
        return await jobs.submit(
            kind=CIRCUIT_KIND, request=request, idempotency_key=idempotency_key
        )

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
                    return await self.compute.run(
                        plan_fragments, specs, peers, weights=weights, min_fidelity=min_fidelity
                    )
                except NoCapacity:
                    if time.monotonic() >= deadline:
                        raise
            await asyncio.sleep(CAPACITY_POLL_S)

    def _trusted_known(self) -> list[Any]:
        return [v for v in self.registry.snapshot() if self.registry.is_trusted(v.peer_id)]


class CircuitProcess:
    def __init__(self, workload: CircuitWorkload, handle: JobHandle) -> None:
        self.w = workload
        self.handle = handle
        self.circuit: NormalizedCircuit | None = None
        self.fragments: list[PlannedFragment] = []
        self.order: dict[str, int] = {}

    async def compile(self) -> str | None:
        w, handle = self.w, self.handle
        request = handle.request
        circuit = await w.compute.run(parse_circuit, request["circuit"])
        fragments = await w.compute.run(build_fragments, circuit)
        async with w.db.transaction() as session:
            done = {
                r.fragment_id for r in await repo.fragment_executions(session, job_id=handle.job_id)
            }
        specs = [
            FragmentSpec(
                fragment_id=f.fragment_id,
                service_type=f.service_type,
                qubits=f.qubits,
                operation_ids=f.operation_ids,
                depends_on=f.depends_on,
                width=circuit.num_qubits,
            )
            for f in fragments
        ]
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

        async def save(session: AsyncSession) -> None:
            await repo.save_plan(session, plan_id=plan_id, job_id=handle.job_id, plan=plan)

        await w.db.write(save)
        return plan_id

    async def execute(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        w, handle, circuit = self.w, self.handle, self.circuit
        assert circuit is not None, "compile() runs first"
        request = handle.request

        async def on_wave(completed: int, total: int) -> None:
            if completed:
                await handle.progress({"fragments_done": completed, "fragments_total": total})

        seed = int(request.get("seed") or 0)
        final_state, fragment_results = await w.runtime.execute(
            job_id=handle.job_id,
            circuit=circuit,
            fragments=self.fragments,
            seed=seed,
            min_fidelity=request.get("min_fidelity"),
            on_wave=on_wave,
        )
        fragment_results.sort(key=lambda r: self.order[r["fragment_id"]])
        quantum_result = await w.compute.run(
            build_quantum_result,
            circuit,
            final_state,
            shots=int(request.get("shots", 1024)),
            seed=seed,
            fragment_fidelities=[
                r["observed_fidelity"]
                for r in fragment_results
                if r["observed_fidelity"] is not None
            ],
        )
        total = len(self.fragments)
        return (
            {"fragment_results": fragment_results, "quantum_result": quantum_result},
            {"fragments_done": total, "fragments_total": total},
        )
