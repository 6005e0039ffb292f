"""The benchmark's circuit workload: a seeded batch of QASMBench-sized random circuits.

``{"kind": "circuit", "params": {"count", "qubits", "depth", "seed", "shots"}}``. Each
circuit goes through the circuit job machinery: parsed, cut into fragments
(``build_fragments``), and then

- ``centralized``: every fragment run by the node's own handler in the coordinator's
  compute pool, one after another, no mesh (as the knapsack and SQD baselines run theirs);
- ``distributed``: planned onto the run's nodes and run wave by wave through the work
  scheduler by :class:`~quantum_mesh.control.runtime.CircuitRuntime`, as a circuit job is,
  restricted to those nodes and keeping its records in memory.

Counts are sampled from the final state with seed ``seed + i`` (circuit ``i``), so the same
seed gives the same counts in every mode on ideal nodes. Quality is the mean Hellinger
fidelity of the counts to the exact distribution from Qiskit Aer's statevector simulation of
the whole circuit (finite shots keep it a little below 1 even for an exact run; a noisy
node pulls it lower). Circuits are not a ``/workflows/runs`` kind: circuit jobs go through
``/circuits/submit``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.jobs import JobHandle
from quantum_mesh.control.planner import CostWeights, FragmentSpec, plan_fragments
from quantum_mesh.control.workflows.base import RunOptions, _local_dispatch
from quantum_mesh.control.workflows.params import int_param, reject_unknown, seed_of
from quantum_mesh.errors import NoCapacity
from quantum_mesh.mesh.protocol import METHOD_EXECUTE_FRAGMENT, SERVICE_SINGLE_QUBIT

if TYPE_CHECKING:
    from quantum_mesh.control.workflows.circuit import CircuitWorkload
    from quantum_mesh.quantum.circuits.model import Fragment, NormalizedCircuit

CIRCUIT_BATCH_KIND = "circuit"
PARAMS = frozenset({"count", "qubits", "depth", "seed", "shots"})
#: (default, low, high) of each integer parameter.
BOUNDS = {
    "count": (8, 1, 32),
    "qubits": (6, 2, 16),
    "depth": (8, 1, 64),
    "shots": (1024, 1, 65536),
}
#: Most common outcomes shown per circuit in a row's ``result``.
TOP_COUNTS = 4
#: Prepared batches (circuits parsed, fragments cut, references simulated) kept.
PREPARED_ENTRIES = 4
CAPACITY_POLL_S = 0.1


@dataclass(frozen=True)
class _Prepared:
    circuits: list[NormalizedCircuit]
    fragments: list[list[Fragment]]
    references: list[dict[str, float]]


def _prepare(texts: list[str]) -> _Prepared:
    """Parse, cut and simulate the batch once (compute pool): every run reuses it."""
    from quantum_mesh.quantum.circuits.fragments import build_fragments
    from quantum_mesh.quantum.circuits.generate import reference_distribution
    from quantum_mesh.quantum.circuits.parse import parse_circuit

    circuits = [parse_circuit(text) for text in texts]
    return _Prepared(
        circuits=circuits,
        fragments=[build_fragments(c) for c in circuits],
        references=[reference_distribution(c) for c in circuits],
    )


def _run_locally(circuit: NormalizedCircuit, fragments: list[Fragment], seed: int) -> Any:
    """The centralized mode: each fragment through the node's own handler, in order."""
    from quantum_mesh.quantum.circuits.execute import initial_state

    dispatch = _local_dispatch(METHOD_EXECUTE_FRAGMENT)
    ops = {op.op_id: op for op in circuit.operations}
    state = initial_state(circuit.num_qubits)
    for fragment in fragments:
        (reply,) = dispatch(
            [
                {
                    "num_qubits": circuit.num_qubits,
                    "operations": [ops[i].to_dict() for i in fragment.operation_ids],
                    "state": state,
                    "seed": seed,
                }
            ]
        )
        state = reply["state"]
    return state


def _counts_summary(
    circuit: NormalizedCircuit, state: Any, reference: dict[str, float], *, shots: int, seed: int
) -> dict[str, Any]:
    """Counts sampled from the final state as a circuit job samples them, and their quality."""
    from quantum_mesh.quantum.analysis import build_bounded_result
    from quantum_mesh.quantum.circuits.generate import counts_quality

    result = build_bounded_result(
        circuit, state, shots=shots, seed=seed, fragment_fidelities=[]
    ).quantum_result
    counts = {str(k): int(v) for k, v in result["counts"].items()}
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    quality = counts_quality(reference, counts)
    return {
        "outcomes": len(counts),
        "top_counts": [[k, v] for k, v in ordered[:TOP_COUNTS]],
        "counts_sha256": hashlib.sha256(json.dumps(sorted(counts.items())).encode()).hexdigest(),
        "hellinger_fidelity": round(quality["hellinger_fidelity"], 6),
        "tvd": round(quality["tvd"], 6),
    }


class CircuitBatchWorkflow:
    kind = CIRCUIT_BATCH_KIND
    #: Every node offering single-qubit fragments runs circuits (benchmarks pick by it).
    service_type = SERVICE_SINGLE_QUBIT

    def __init__(self, circuits: CircuitWorkload | None = None) -> None:
        #: The circuit machinery (None: a validating instance, which never runs).
        self.circuits = circuits
        self._prepared: OrderedDict[str, _Prepared] = OrderedDict()

    async def validate(self, params: dict[str, Any], compute: ComputePools) -> dict[str, Any]:
        reject_unknown(params, PARAMS, "the circuit benchmark workload")
        checked = {name: int_param(params, name, *bound) for name, bound in BOUNDS.items()}
        return {**checked, "seed": seed_of(params)}

    async def _batch(self, compute: ComputePools, params: dict[str, Any]) -> _Prepared:
        from quantum_mesh.quantum.circuits.generate import random_batch

        key = json.dumps(params, sort_keys=True)
        prepared = self._prepared.get(key)
        if prepared is None:
            texts = random_batch(
                count=params["count"],
                qubits=params["qubits"],
                depth=params["depth"],
                seed=params["seed"],
            )
            prepared = await compute.run(_prepare, texts)
            self._prepared[key] = prepared
            while len(self._prepared) > PREPARED_ENTRIES:
                self._prepared.popitem(last=False)
        return prepared

    async def run(
        self, handle: JobHandle, params: dict[str, Any], options: RunOptions
    ) -> dict[str, Any]:
        if self.circuits is None:
            raise RuntimeError("a validating CircuitBatchWorkflow cannot run")
        started = time.perf_counter()
        batch = await self._batch(handle.compute, params)
        setup_s = time.perf_counter() - started
        timing: dict[str, float] = {"mesh_s": 0.0}
        summaries: list[dict[str, Any]] = []
        fragments_run: list[dict[str, Any]] = []
        for i, circuit in enumerate(batch.circuits):
            handle.check_cancelled()
            if options.local:
                state = await handle.compute.run(
                    _run_locally, circuit, batch.fragments[i], params["seed"]
                )
            else:
                state, results = await self._distributed(
                    handle, i, circuit, batch, params, timing, options
                )
                fragments_run.extend(results)
            summaries.append(
                await handle.compute.run(
                    _counts_summary,
                    circuit,
                    state,
                    batch.references[i],
                    shots=params["shots"],
                    seed=params["seed"] + i,
                )
            )
        fidelities = [s["hellinger_fidelity"] for s in summaries]
        return {
            "circuits": [
                {"index": i, "qubits": c.num_qubits, "operations": len(c.operations), **s}
                for i, (c, s) in enumerate(zip(batch.circuits, summaries, strict=True))
            ],
            "shots": params["shots"],
            "hellinger_fidelity_mean": round(sum(fidelities) / len(fidelities), 6),
            "tvd_mean": round(sum(s["tvd"] for s in summaries) / len(summaries), 6),
            "fragments": sum(len(f) for f in batch.fragments),
            "retries": sum(max(0, int(r["attempts"]) - 1) for r in fragments_run),
            "nodes_used": sorted({r["node_id"] for r in fragments_run}),
            "timing": {"mesh_s": round(timing["mesh_s"], 6), "setup_s": round(setup_s, 6)},
        }

    async def _distributed(
        self,
        handle: JobHandle,
        index: int,
        circuit: NormalizedCircuit,
        batch: _Prepared,
        params: dict[str, Any],
        timing: dict[str, float],
        options: RunOptions,
    ) -> tuple[Any, list[dict[str, Any]]]:
        assert self.circuits is not None
        specs = [FragmentSpec.of(f, width=circuit.num_qubits) for f in batch.fragments[index]]
        planned = await self._plan(handle, specs, options.nodes)
        return await self.circuits.runtime.execute(
            job_id=handle.job_id,
            circuit=circuit,
            fragments=planned,
            seed=params["seed"],
            min_fidelity=None,
            done_rows={},
            nodes=options.nodes,
            unit_prefix=f"{handle.new_unit_id('circuit')}/",
            durable=False,
            timing=timing,
        )

    async def _plan(
        self, handle: JobHandle, specs: list[FragmentSpec], nodes: frozenset[str] | None
    ) -> list[Any]:
        """Plan onto the run's nodes that are usable now, else onto those known and trusted
        (the scheduler waits for them); with none of them heard yet (a node about to join),
        wait for one, bounded by ``QMESH_CAPACITY_WAIT_S``."""
        assert self.circuits is not None
        registry, settings = self.circuits.registry, self.circuits.settings
        weights = CostWeights.from_settings(settings)
        deadline = time.monotonic() + settings.capacity_wait_s
        while True:
            for peers in (
                registry.usable_snapshot(),
                [v for v in registry.snapshot() if registry.is_trusted(v.peer_id)],
            ):
                chosen = [v for v in peers if nodes is None or v.peer_id in nodes]
                try:
                    return await handle.compute.run(plan_fragments, specs, chosen, weights=weights)
                except NoCapacity:
                    if time.monotonic() >= deadline:
                        raise
            await asyncio.sleep(CAPACITY_POLL_S)
