"""build_quantum_result against independently computed Qiskit values, and its bounds."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from qiskit import QuantumCircuit, qasm2
from qiskit.circuit.random import random_circuit
from qiskit.quantum_info import Pauli, Statevector, entropy, partial_trace
from scipy.stats import chisquare

from quantum_mesh.arrays import decode_array, encode_array
from quantum_mesh.quantum.analysis import (
    DEFAULT_MAX_RESULT_BYTES,
    MAX_DISTRIBUTION_ENTRIES,
    MAX_INLINE_AMPLITUDES,
    build_bounded_result,
    build_quantum_result,
    ideal_statevector,
)
from quantum_mesh.quantum.circuits.execute import execute_fragment, initial_state
from quantum_mesh.quantum.circuits.fragments import build_fragments
from quantum_mesh.quantum.circuits.model import NormalizedCircuit
from quantum_mesh.quantum.circuits.parse import parse_circuit

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


# --- bounded results (docs/security.md, "Bounded results") -------------------------------------
def _uniform(n: int) -> tuple[NormalizedCircuit, np.ndarray]:
    circuit = parse_circuit(f'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[{n}];\nh q;\n')
    return circuit, np.full(2**n, 2 ** (-n / 2), dtype=np.complex128)


def _random_state(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    psi = rng.normal(size=2**n) + 1j * rng.normal(size=2**n)
    return psi / np.linalg.norm(psi)


def test_up_to_12_qubits_a_result_is_whole() -> None:
    assert MAX_DISTRIBUTION_ENTRIES == MAX_INLINE_AMPLITUDES == 2**12
    circuit, _ = _uniform(12)
    psi = _random_state(12, 1)
    bounded = build_bounded_result(circuit, psi, shots=100_000, seed=2, fragment_fidelities=[1.0])
    result = bounded.quantum_result
    assert bounded.artifacts == [] and "truncated" not in result
    assert len(result["probabilities"]) == len(result["measured_probabilities"]) == 2**12
    assert len(result["statevector"]) == 2**12
    assert sum(result["counts"].values()) == 100_000
    assert result == build_quantum_result(
        circuit, psi, shots=100_000, seed=2, fragment_fidelities=[1.0]
    )


def test_above_12_qubits_distributions_keep_their_most_likely_entries() -> None:
    circuit, _ = _uniform(13)
    psi = _random_state(13, 3)
    probs = np.abs(psi) ** 2
    bounded = build_bounded_result(circuit, psi, shots=200_000, seed=4, fragment_fidelities=[])
    result = bounded.quantum_result
    kept = np.sort(np.argsort(-probs, kind="stable")[:4096])
    assert list(result["probabilities"]) == [format(i, "013b") for i in kept]
    assert list(result["probabilities"].values()) == pytest.approx(probs[kept], abs=1e-15)
    left_out = np.setdiff1d(np.arange(2**13), kept)
    assert probs[kept].min() >= probs[left_out].max()  # nothing likelier was left out
    assert result["truncated"]["probabilities"] == {
        "kept": 4096,
        "total": 2**13,
        "kept_probability": pytest.approx(float(probs[kept].sum())),
    }
    # Measured on every qubit implicitly: the same distribution, keys in the same order.
    assert result["measured_probabilities"] == pytest.approx(result["probabilities"])
    assert result["truncated"]["measured_probabilities"]["kept"] == 4096
    # 200,000 shots hit (nearly) every one of the 8192 outcomes: the 4096 most frequent stay.
    counts = result["counts"]
    info = result["truncated"]["counts"]
    assert len(counts) == info["kept"] == 4096 < info["total"] <= 2**13
    assert sum(counts.values()) == info["kept_shots"] < 200_000
    assert list(counts) == sorted(counts)
    # The complete fields are complete.
    assert len(result["top_basis_states"]) == 8
    assert result["top_basis_states"][0]["probability"] == pytest.approx(float(probs.max()))
    assert set(result["entanglement_entropy"]) == {f"q{q}" for q in range(13)}
    assert len(result["observable_expectations"]["ZZ"]) == 13 * 12 // 2


def test_a_big_statevector_is_an_artifact_with_a_reference() -> None:
    circuit, _ = _uniform(13)
    psi = _random_state(13, 5)
    bounded = build_bounded_result(circuit, psi, shots=10, seed=1, fragment_fidelities=[])
    [artifact] = bounded.artifacts
    assert (artifact.name, artifact.dtype, artifact.shape) == ("statevector", "complex128", (8192,))
    assert len(artifact.data) == 16 * 8192
    assert artifact.sha256 == hashlib.sha256(artifact.data).hexdigest()
    np.testing.assert_array_equal(np.frombuffer(artifact.data, dtype="<c16"), psi)
    assert bounded.quantum_result["statevector"] == {
        "artifact": "statevector",
        "dtype": "complex128",
        "shape": [8192],
        "bytes": 16 * 8192,
        "sha256": artifact.sha256,
    }


def test_20_qubit_uniform_state_fits_the_default_budget() -> None:
    """The measured case: 138 MB before."""
    circuit, psi = _uniform(20)
    bounded = build_bounded_result(circuit, psi, shots=1024, seed=3, fragment_fidelities=[1.0])
    result = bounded.quantum_result
    assert len(json.dumps(result)) <= DEFAULT_MAX_RESULT_BYTES
    assert result["truncated"]["probabilities"]["total"] == 2**20
    assert sum(result["counts"].values()) == 1024 and "counts" not in result["truncated"]
    assert result["fidelity"] == pytest.approx(1.0, abs=1e-9)
    qc = QuantumCircuit(20)
    qc.h(range(20))
    np.testing.assert_allclose(
        np.frombuffer(bounded.artifacts[0].data, dtype="<c16"),
        Statevector.from_instruction(qc).data,
        rtol=0,
        atol=1e-9,
    )


@pytest.mark.parametrize("budget", [20_000, 60_000, 250_000])
def test_a_smaller_budget_halves_the_distributions_until_the_result_fits(budget: int) -> None:
    circuit, _ = _uniform(13)
    psi = _random_state(13, 7)
    result = build_quantum_result(
        circuit, psi, shots=50_000, seed=1, fragment_fidelities=[], max_result_bytes=budget
    )
    assert len(json.dumps(result)) <= budget
    kept = result["truncated"]["probabilities"]["kept"]
    assert len(result["probabilities"]) == kept and kept & (kept - 1) == 0  # 4096 / 2**k
    assert len(json.dumps(result)) > budget / 4  # halved only as far as needed


def test_over_the_budget_the_statevector_moves_out_first() -> None:
    circuit, _ = _uniform(10)
    psi = _random_state(10, 9)
    whole = build_quantum_result(circuit, psi, shots=100, seed=1, fragment_fidelities=[])
    budget = len(json.dumps(whole)) - 1
    bounded = build_bounded_result(
        circuit, psi, shots=100, seed=1, fragment_fidelities=[], max_result_bytes=budget
    )
    assert bounded.quantum_result["statevector"]["artifact"] == "statevector"
    assert "truncated" not in bounded.quantum_result  # the distributions were not cut
    assert len(bounded.artifacts[0].data) == 16 * 2**10


def test_nothing_left_to_cut_ends_with_empty_distributions() -> None:
    """A budget below the fixed part never fails the job: everything that can go, goes."""
    circuit = parse_circuit(BELL_QASM2)
    state, _ = _execute(circuit, 0.0)
    tiny = build_quantum_result(
        circuit, state, shots=100, seed=1, fragment_fidelities=[], max_result_bytes=10
    )
    assert tiny["counts"] == {} and tiny["probabilities"] == {}
    assert tiny["truncated"]["counts"] == {"kept": 0, "total": 2, "kept_shots": 0}
    assert tiny["statevector"]["artifact"] == "statevector"
    assert tiny["fidelity"] == pytest.approx(1.0)


def test_ideal_state_is_simulated_once_per_source_and_read_only() -> None:
    """A circuit submitted again (another seed) reuses its ideal state; another source does
    not, and the kept state cannot be changed by a caller."""
    first = ideal_statevector(parse_circuit(BELL_QASM2))
    again = ideal_statevector(parse_circuit(BELL_QASM2))
    assert again is first
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0] = 0
    other = ideal_statevector(parse_circuit(BELL_QASM2.replace("h q[0];", "x q[0];\nh q[0];")))
    assert other is not first
    np.testing.assert_allclose(np.abs(first) ** 2, [0.5, 0, 0, 0.5], atol=1e-12)
    np.testing.assert_allclose(np.abs(other) ** 2, [0.5, 0, 0, 0.5], atol=1e-12)
    assert not np.allclose(first, other)
