"""The circuit runtime records waves one behind: the next wave runs while the record of the
wave before commits, and the records keep their order and their failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from qiskit import qasm2
from qiskit.circuit.random import random_circuit
from qiskit.quantum_info import Statevector

from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.planner import CostWeights, FragmentSpec, plan_fragments
from quantum_mesh.control.runtime import CircuitRuntime
from quantum_mesh.errors import QMeshError
from quantum_mesh.mesh.protocol import DEFAULT_SERVICES
from quantum_mesh.quantum.circuits.execute import execute_fragment
from quantum_mesh.quantum.circuits.fragments import build_fragments
from quantum_mesh.quantum.circuits.parse import parse_circuit
from quantum_mesh.store.database import WriteOp
from tests.control.conftest import Control, MakeControl, wait_for

#: h; cx; h; cx on 2 qubits: four fragments, each waiting for the one before.
CHAIN = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\n'
    "h q[0];\ncx q[0], q[1];\nh q[1];\ncx q[1], q[0];\n"
)

Record = Callable[[WriteOp, int, int], Awaitable[Any]]


async def _setup(control: MakeControl, text: str) -> tuple[Control, CircuitRuntime, Any, list[Any]]:
    c = await control()
    c.add_node("n1", services=DEFAULT_SERVICES, workers=2, handler=execute_fragment)
    circuit = parse_circuit(text)
    specs = [FragmentSpec.of(f, width=circuit.num_qubits) for f in build_fragments(circuit)]
    plan = plan_fragments(specs, c.registry.usable_snapshot(), weights=CostWeights())
    compute = ComputePools(c.settings)
    c.managers.append((_NoJobs(), compute))  # shut down with the control plane
    runtime = CircuitRuntime(db=c.db, scheduler=c.scheduler, compute=compute)
    return c, runtime, circuit, plan


class _NoJobs:
    async def shutdown(self) -> None:
        return None


async def _run(runtime: CircuitRuntime, circuit: Any, plan: list[Any], record: Record) -> Any:
    return await runtime.execute(
        job_id="job-1",
        circuit=circuit,
        fragments=plan,
        seed=3,
        min_fidelity=None,
        done_rows={},
        record=record,
    )


async def test_the_next_wave_runs_while_the_record_before_commits(control: MakeControl) -> None:
    c, runtime, circuit, plan = await _setup(control, CHAIN)
    assert len(plan) == 4
    first_record_may_commit = asyncio.Event()
    committed: list[int] = []

    async def record(write: WriteOp, done: int, total: int) -> Any:
        if done == 1:
            await first_record_may_commit.wait()
        result = await c.db.write(write)
        committed.append(done)
        return result

    task = asyncio.ensure_future(_run(runtime, circuit, plan, record))
    # The second fragment is sent although the first one's record has not committed.
    await wait_for(lambda: len(c.mesh.work_calls()) >= 2, what="the second wave")
    assert committed == []
    # ...but its own record waits for the first one's: the third wave does not start.
    await asyncio.sleep(0.2)
    assert len(c.mesh.work_calls()) == 2 and committed == []
    first_record_may_commit.set()
    state, results = await asyncio.wait_for(task, timeout=10)
    assert committed == [1, 2, 3, 4]
    assert [r["fragment_id"] for r in results] == ["f0", "f1", "f2", "f3"]
    qc = qasm2.loads(CHAIN)
    assert abs(np.vdot(Statevector.from_instruction(qc).data, state)) ** 2 == pytest.approx(1.0)


async def test_a_failed_record_stops_the_job_before_anything_after_it(
    control: MakeControl,
) -> None:
    c, runtime, circuit, plan = await _setup(control, CHAIN)
    asked: list[int] = []

    async def record(write: WriteOp, done: int, total: int) -> Any:
        asked.append(done)
        if done == 2:
            raise QMeshError("the disk is full")
        return await c.db.write(write)

    with pytest.raises(QMeshError, match="the disk is full"):
        await _run(runtime, circuit, plan, record)
    # The third wave may have run on the mesh, but nothing after the failed record was
    # queued for the database.
    assert asked == [1, 2]
    assert len(c.mesh.work_calls()) <= 3


@pytest.mark.parametrize("seed", [1, 2])
async def test_pipelined_records_give_the_statevector_and_every_row(
    control: MakeControl, seed: int
) -> None:
    qc = random_circuit(4, depth=6, max_operands=2, seed=seed)
    c, runtime, circuit, plan = await _setup(control, qasm2.dumps(qc))
    done_counts: list[int] = []

    async def record(write: WriteOp, done: int, total: int) -> Any:
        done_counts.append(done)
        return await c.db.write(write)

    state, results = await _run(runtime, circuit, plan, record)
    assert abs(np.vdot(Statevector.from_instruction(qc).data, state)) ** 2 == pytest.approx(1.0)
    assert done_counts == sorted(done_counts) and done_counts[-1] == len(plan)
    assert sorted(r["fragment_id"] for r in results) == sorted(f.fragment_id for f in plan)
