"""Seeded random circuits of QASMBench-like sizes, and their exact reference distributions.

A benchmark's circuit workload is a batch of these: ``count`` circuits on ``qubits`` qubits,
``depth`` layers each (a layer: one single-qubit gate on every qubit, drawn from ``h``,
``sx``, ``t``, ``s``, ``rx``, ``ry``, ``rz``, then ``cx``/``cz`` on a random matching of
about half the qubits), every qubit measured at the end. QASMBench's small and medium
circuits span 2-27 qubits and a few to a few hundred layers; the bounds here keep a batch
within a benchmark's minutes. Circuit ``i`` of a batch depends only on ``(seed, i)``.
"""

from __future__ import annotations

import numpy as np
from qiskit import QuantumCircuit, transpile
from qiskit.quantum_info import hellinger_fidelity
from qiskit_aer import AerSimulator
from qiskit_aer.library import SaveStatevector

from quantum_mesh.quantum.circuits.gates import append_operation
from quantum_mesh.quantum.circuits.model import NormalizedCircuit

SINGLE = ("h", "sx", "t", "s")
ROTATIONS = ("rx", "ry", "rz")
ENTANGLERS = ("cx", "cz")
#: Angles are written with this many decimals, so the QASM text is the circuit exactly.
ANGLE_DECIMALS = 6


def random_circuit_qasm(*, qubits: int, depth: int, seed: int, index: int = 0) -> str:
    """Circuit ``index`` of the batch with this ``seed``: OpenQASM 2 text."""
    rng = np.random.default_rng([seed, index])
    lines = [
        "OPENQASM 2.0;",
        'include "qelib1.inc";',
        f"qreg q[{qubits}];",
        f"creg c[{qubits}];",
    ]
    for _ in range(depth):
        for q in range(qubits):
            pick = int(rng.integers(len(SINGLE) + len(ROTATIONS)))
            if pick < len(SINGLE):
                lines.append(f"{SINGLE[pick]} q[{q}];")
            else:
                angle = round(float(rng.uniform(-np.pi, np.pi)), ANGLE_DECIMALS)
                lines.append(f"{ROTATIONS[pick - len(SINGLE)]}({angle}) q[{q}];")
        order = [int(q) for q in rng.permutation(qubits)]
        for a, b in zip(order[0::2], order[1::2], strict=False):
            if rng.random() < 0.5:
                gate = ENTANGLERS[int(rng.integers(len(ENTANGLERS)))]
                lines.append(f"{gate} q[{a}],q[{b}];")
    lines.append("measure q -> c;")
    return "\n".join(lines) + "\n"


def random_batch(*, count: int, qubits: int, depth: int, seed: int) -> list[str]:
    """The batch: ``count`` circuits, each as :func:`random_circuit_qasm` makes it."""
    return [
        random_circuit_qasm(qubits=qubits, depth=depth, seed=seed, index=i) for i in range(count)
    ]


def reference_distribution(circuit: NormalizedCircuit) -> dict[str, float]:
    """The exact measured distribution of a circuit that measures every qubit ``q[i] -> c[i]``
    (as :func:`random_circuit_qasm` writes them), from Qiskit Aer's statevector simulator run
    on the whole circuit at once: keys are bitstrings in Qiskit's order, as ``counts`` are."""
    n = circuit.num_qubits
    qc = QuantumCircuit(n)
    for op in circuit.operations:
        append_operation(qc, name=op.name, params=op.params, qubits=op.qubits)
    qc.append(SaveStatevector(n), qc.qubits)
    simulator = AerSimulator(method="statevector", max_parallel_threads=1)
    result = simulator.run(transpile(qc, simulator, optimization_level=0)).result()
    probabilities = np.abs(np.asarray(result.get_statevector(), dtype=np.complex128)) ** 2
    return {format(i, f"0{n}b"): float(p) for i, p in enumerate(probabilities) if p > 1e-15}


def counts_quality(reference: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
    """How close measured ``counts`` are to the exact distribution: Hellinger fidelity
    (``(Σ √(p q))²``, 1 = identical) and total variation distance (``½ Σ |p - q|``, 0 =
    identical). Finite shots keep both off their ideal values even for an exact run."""
    shots = sum(counts.values()) or 1
    measured = {k: v / shots for k, v in counts.items()}
    keys = set(reference) | set(measured)
    tvd = 0.5 * sum(abs(reference.get(k, 0.0) - measured.get(k, 0.0)) for k in keys)
    fidelity = float(hellinger_fidelity(reference, measured))
    return {"hellinger_fidelity": fidelity, "tvd": float(tvd)}
