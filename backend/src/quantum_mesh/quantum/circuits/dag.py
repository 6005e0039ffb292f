"""Operation-level dependency DAG: operations sharing a qubit keep their program order."""

from __future__ import annotations

from quantum_mesh.quantum.circuits.model import NormalizedCircuit


def build_dependency_dag(circuit: NormalizedCircuit) -> dict[int, set[int]]:
    """Map each op id to the ids it directly depends on.

    An operation depends on the previous operation on each of its qubits; that is the
    transitive reduction of "touches the same qubit, earlier in the program", which is
    all the ordering a statevector simulation needs.
    """
    last_on_qubit: dict[int, int] = {}
    dag: dict[int, set[int]] = {}
    for op in circuit.operations:
        dag[op.op_id] = {last_on_qubit[q] for q in op.qubits if q in last_on_qubit}
        for q in op.qubits:
            last_on_qubit[q] = op.op_id
    return dag
