"""build_quantum_result against independently computed Qiskit values."""

from __future__ import annotations

import numpy as np
import pytest
from qiskit import QuantumCircuit, qasm2
from qiskit.circuit.random import random_circuit
from qiskit.quantum_info import Pauli, Statevector, entropy, partial_trace
from scipy.stats import chisquare

from quantum_mesh.quantum.analysis import build_quantum_result, ideal_statevector
from quantum_mesh.quantum.circuits.execute import execute_fragment, initial_state
from quantum_mesh.quantum.circuits.fragments import build_fragments
from quantum_mesh.quantum.circuits.model import NormalizedCircuit
from quantum_mesh.quantum.circuits.parse import parse_circuit
from quantum_mesh.quantum.encoding import decode_array, encode_array

BELL_QASM2 = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0], q[1];
measure q[0] -> c[0];
measure q[1] -> c[1];
"""

GHZ5_QASM3 = """OPENQASM 3.0;
include "stdgates.inc";
qubit[5] q;
bit[5] c;
h q[0];
cx q[0], q[1];
cx q[1], q[2];
cx q[2], q[3];
cx q[3], q[4];
c = measure q;
"""


def _execute(circuit: NormalizedCircuit, noise: float) -> tuple[np.ndarray, list[float]]:
    ops = {op.op_id: op for op in circuit.operations}
    state = initial_state(circuit.num_qubits)
    fidelities = []
    for fragment in build_fragments(circuit):
        out = execute_fragment(
            {
                "num_qubits": circuit.num_qubits,
                "operations": [ops[i].to_dict() for i in fragment.operation_ids],
                "state": encode_array(state),
                "seed": 3,
            },
            noise_level=noise,
        )
        state = decode_array(out["state"])
        fidelities.append(out["observed_fidelity"])
    return state, fidelities


def _result(text: str, *, shots: int = 4000, seed: int = 5) -> dict:  # type: ignore[type-arg]
    circuit = parse_circuit(text)
    state, fidelities = _execute(circuit, 0.0)
    return build_quantum_result(
        circuit, state, shots=shots, seed=seed, fragment_fidelities=fidelities
    )


def test_bell_qasm2() -> None:
    result = _result(BELL_QASM2)
    assert set(result["counts"]) == {"00", "11"}
    assert sum(result["counts"].values()) == 4000
    assert result["probabilities"] == pytest.approx({"00": 0.5, "11": 0.5}, abs=1e-12)
    assert result["measured_probabilities"] == pytest.approx({"00": 0.5, "11": 0.5}, abs=1e-12)
    assert result["entanglement_entropy"]["q0"] == pytest.approx(1.0, abs=1e-9)
    assert result["entanglement_entropy"]["q1"] == pytest.approx(1.0, abs=1e-9)
    assert result["observable_expectations"]["ZZ"]["q0,q1"] == pytest.approx(1.0)
    assert result["observable_expectations"]["XX"]["q0,q1"] == pytest.approx(1.0)
    assert result["observable_expectations"]["Z"]["q0"] == pytest.approx(0.0, abs=1e-12)
    assert result["bloch_vectors"]["q0"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    assert result["fidelity"] == pytest.approx(1.0)
    assert result["estimated_execution_fidelity"] == 1.0
    assert result["measured_qubits"] == [0, 1]
    assert result["measured_all_implicitly"] is False
    assert [t["bitstring"] for t in result["top_basis_states"]] == ["00", "11"]


def test_ghz5_qasm3_counts_consistent_with_probabilities() -> None:
    result = _result(GHZ5_QASM3, shots=2000)
    assert set(result["counts"]) == {"00000", "11111"}
    assert sum(result["counts"].values()) == 2000
    stat = chisquare(list(result["counts"].values()), [1000, 1000])
    assert stat.pvalue > 1e-4
    for a in range(5):
        for b in range(a + 1, 5):
            assert result["observable_expectations"]["ZZ"][f"q{a},q{b}"] == pytest.approx(1.0)
            assert result["observable_expectations"]["XX"][f"q{a},q{b}"] == pytest.approx(
                0.0, abs=1e-12
            )


def test_plus_state_bloch_vector_and_implicit_measurement() -> None:
    result = _result('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\nh q[0];\n', shots=100)
    assert result["bloch_vectors"]["q0"] == pytest.approx([1.0, 0.0, 0.0], abs=1e-12)
    assert result["entanglement_entropy"]["q0"] == pytest.approx(0.0, abs=1e-9)
    assert result["measured_all_implicitly"] is True
    assert result["measured_qubits"] == [0]
    assert sum(result["counts"].values()) == 100


def test_random_circuit_fields_match_independent_qiskit_values() -> None:
    qc = random_circuit(6, 8, max_operands=3, seed=42)
    text = qasm2.dumps(qc).replace("qreg q[6];", "qreg q[6];\ncreg c[4];")
    # Measure q4 -> c0, q1 -> c2, q0 -> c3 (c1 never written): Qiskit order, c3 leftmost.
    text += "measure q[4] -> c[0];\nmeasure q[1] -> c[2];\nmeasure q[0] -> c[3];\n"
    result = _result(text, shots=20000, seed=9)
    sv = Statevector.from_instruction(qc)
    expected_full = {k: v for k, v in sv.probabilities_dict().items() if v >= 1e-15}
    assert result["probabilities"].keys() == expected_full.keys()
    for key, value in expected_full.items():
        assert result["probabilities"][key] == pytest.approx(value, abs=1e-9)
    marginal = sv.probabilities_dict(qargs=[4, 1, 0])  # key: q0 q1 q4 (left to right)
    expected_measured = {f"{k[0]}{k[1]}0{k[2]}": v for k, v in marginal.items() if v >= 1e-15}
    assert result["measured_probabilities"] == pytest.approx(expected_measured, abs=1e-9)
    counts = result["counts"]
    assert sum(counts.values()) == 20000
    keys = sorted(expected_measured)
    observed = [counts.get(k, 0) for k in keys]
    expected = [20000 * expected_measured[k] for k in keys]
    assert chisquare(observed, np.array(expected) * sum(observed) / sum(expected)).pvalue > 1e-4
    np.testing.assert_allclose(
        np.array([complex(re, im) for re, im in result["statevector"]]), sv.data, atol=1e-9
    )
    obs = result["observable_expectations"]
    for q in range(6):
        label = ["I"] * 6
        label[5 - q] = "Z"
        assert obs["Z"][f"q{q}"] == pytest.approx(sv.expectation_value(Pauli("".join(label))).real)
        rho = partial_trace(sv, [i for i in range(6) if i != q]).data
        got = np.array(
            [[complex(*x) for x in row] for row in result["reduced_density_matrices"][f"q{q}"]]
        )
        np.testing.assert_allclose(got, rho, atol=1e-12)
        assert result["entanglement_entropy"][f"q{q}"] == pytest.approx(
            entropy(partial_trace(sv, [i for i in range(6) if i != q]), base=2), abs=1e-9
        )
    for a, b in [(0, 1), (2, 5), (3, 4)]:
        for pauli in ("ZZ", "XX"):
            label = ["I"] * 6
            label[5 - a] = label[5 - b] = pauli[0]
            assert obs[pauli][f"q{a},q{b}"] == pytest.approx(
                sv.expectation_value(Pauli("".join(label))).real, abs=1e-12
            )
    assert result["fidelity"] == pytest.approx(1.0, abs=1e-9)
    top = [t["probability"] for t in result["top_basis_states"]]
    assert top == pytest.approx(sorted(expected_full.values(), reverse=True)[:8], abs=1e-9)


def test_noisy_execution_lowers_both_fidelities() -> None:
    qc = random_circuit(5, 6, max_operands=2, seed=3)
    circuit = parse_circuit(qasm2.dumps(qc))
    state, fidelities = _execute(circuit, 0.05)
    result = build_quantum_result(
        circuit, state, shots=1000, seed=1, fragment_fidelities=fidelities
    )
    assert result["fidelity"] < 1.0 - 1e-6
    assert result["estimated_execution_fidelity"] == pytest.approx(float(np.prod(fidelities)))
    assert result["estimated_execution_fidelity"] < 1.0


def test_ideal_statevector_applies_aliases() -> None:
    circuit = parse_circuit(
        "OPENQASM 3;\nqubit[3] q;\nx q[0];\nteleport q[0], q[2];\nbell_pair q[0], q[1];\n"
        "syndrome_extraction q[1];\n"
    )
    reference = QuantumCircuit(3)
    reference.x(2)
    reference.h(0)
    reference.cx(0, 1)
    np.testing.assert_allclose(
        ideal_statevector(circuit), Statevector.from_instruction(reference).data, atol=1e-12
    )


def test_counts_are_seeded() -> None:
    a = _result(GHZ5_QASM3, shots=500, seed=1)["counts"]
    b = _result(GHZ5_QASM3, shots=500, seed=1)["counts"]
    assert a == b
