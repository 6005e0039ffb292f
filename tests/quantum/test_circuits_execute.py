"""execute_fragment: fragments run one by one reproduce Qiskit; parallel composition; noise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from qiskit import QuantumCircuit, qasm2, qasm3
from qiskit.circuit.random import random_circuit
from qiskit.quantum_info import Operator, Statevector

from quantum_mesh.arrays import decode_array, encode_array
from quantum_mesh.quantum.circuits.execute import (
    apply_fragment_operator,
    execute_fragment,
    initial_state,
)
from quantum_mesh.quantum.circuits.fragments import build_fragments
from quantum_mesh.quantum.circuits.model import Fragment, NormalizedCircuit
from quantum_mesh.quantum.circuits.parse import parse_circuit

#: Noise levels of an ideal and a noisy node.
IDEAL = 0.0
NOISY = 0.05


def _params(circuit: NormalizedCircuit, fragment: Fragment, state: np.ndarray) -> dict[str, Any]:
    ops = {op.op_id: op for op in circuit.operations}
    return {
        "num_qubits": circuit.num_qubits,
        "operations": [ops[i].to_dict() for i in fragment.operation_ids],
        "state": encode_array(state),
        "seed": 7,
    }


def _run_all(circuit: NormalizedCircuit, noise: float) -> tuple[np.ndarray, list[float]]:
    state = initial_state(circuit.num_qubits)
    fidelities = []
    for fragment in build_fragments(circuit, max_ops_per_fragment=4):
        out = execute_fragment(_params(circuit, fragment, state), noise_level=noise)
        assert out["applied_ops"] == list(fragment.operation_ids)
        assert out["qubits"] == list(fragment.qubits)
        state = decode_array(out["state"])
        fidelities.append(out["observed_fidelity"])
    return state, fidelities


def _random_circuit(seed: int) -> QuantumCircuit:
    return random_circuit(6, 8, max_operands=3, seed=seed)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dumps", [qasm2.dumps, qasm3.dumps], ids=["qasm2", "qasm3"])
def test_fragments_one_by_one_match_statevector(seed: int, dumps: Any) -> None:
    qc = _random_circuit(seed)
    circuit = parse_circuit(dumps(qc))
    state, fidelities = _run_all(circuit, IDEAL)
    expected = Statevector.from_instruction(qc)
    np.testing.assert_allclose(np.abs(state) ** 2, expected.probabilities(), atol=1e-9)
    assert abs(np.vdot(expected.data, state)) ** 2 == pytest.approx(1.0, abs=1e-9)
    assert fidelities == [1.0] * len(fidelities)


def test_operator_is_the_fragment_unitary_in_little_endian() -> None:
    circuit = parse_circuit('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[4];\ncx q[3], q[1];\n')
    fragment = build_fragments(circuit)[0]
    out = execute_fragment(_params(circuit, fragment, initial_state(4)), noise_level=IDEAL)
    assert out["qubits"] == [1, 3]
    reference = QuantumCircuit(2)
    reference.cx(1, 0)  # local 0 = qubit 1, local 1 = qubit 3
    np.testing.assert_allclose(decode_array(out["operator"]), Operator(reference).data)


def test_parallel_fragments_compose_with_operators() -> None:
    text = (
        'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[4] q;\n'
        "h q[0];\nry(0.4) q[1];\nrx(0.9) q[2];\nh q[3];\n"
        "bell_pair q[0], q[1];\ncz q[2], q[3];\nteleport q[1], q[2];\n"
    )
    circuit = parse_circuit(text)
    fragments = build_fragments(circuit)
    by_id = {f.fragment_id: f for f in fragments}
    done: dict[str, int] = {}
    state = initial_state(4)
    wave_index = 0
    while len(done) < len(fragments):
        wave = [
            f
            for f in fragments
            if f.fragment_id not in done and all(d in done for d in f.depends_on)
        ]
        qubit_sets = [set(f.qubits) for f in wave]
        assert all(a.isdisjoint(b) for i, a in enumerate(qubit_sets) for b in qubit_sets[i + 1 :])
        outputs = [execute_fragment(_params(circuit, f, state), noise_level=IDEAL) for f in wave]
        for f, out in zip(wave, outputs, strict=True):
            state = apply_fragment_operator(
                state, decode_array(out["operator"]), out["qubits"], circuit.num_qubits
            )
            done[f.fragment_id] = wave_index
        wave_index += 1
    assert max(len([1 for v in done.values() if v == w]) for w in range(wave_index)) >= 2
    assert set(by_id) == set(done)
    reference = QuantumCircuit(4)
    reference.h(0)
    reference.ry(0.4, 1)
    reference.rx(0.9, 2)
    reference.h(3)
    reference.h(0)
    reference.cx(0, 1)
    reference.cz(2, 3)
    reference.swap(1, 2)
    np.testing.assert_allclose(state, Statevector.from_instruction(reference).data, atol=1e-12)


def test_noisy_node_reports_lower_fidelity_and_really_changes_the_state() -> None:
    circuit = parse_circuit(qasm2.dumps(_random_circuit(11)))
    ideal_state, _ = _run_all(circuit, IDEAL)
    noisy_state, fidelities = _run_all(circuit, NOISY)
    assert all(0.0 < f < 1.0 for f in fidelities)
    assert abs(np.vdot(ideal_state, noisy_state)) ** 2 < 1.0 - 1e-6
    again, fidelities_again = _run_all(circuit, NOISY)
    np.testing.assert_array_equal(again, noisy_state)  # seeded: reproducible
    assert fidelities_again == fidelities


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.update(state=encode_array(np.ones(4, dtype=np.complex128) / 2)), "2**3"),
        (lambda p: p["operations"][0].update(qubits=[5]), "invalid for 3 qubits"),
        (lambda p: p["operations"][0].update(name="frobnicate"), "unknown gate"),
        (lambda p: p["operations"][0].update(qubits=[0, 1]), "acts on 1 qubit"),
        (lambda p: p.pop("state"), "missing parameter"),
        (lambda p: p.update(state=encode_array(np.zeros(8, dtype=np.complex128))), "normalised"),
    ],
)
def test_bad_params_raise_value_error(mutate: Any, message: str) -> None:
    circuit = parse_circuit('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\nh q[0];\n')
    params = _params(circuit, build_fragments(circuit)[0], initial_state(3))
    mutate(params)
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        execute_fragment(params, noise_level=IDEAL)


def test_wide_call_without_operator_still_evolves_correctly() -> None:
    n = 11
    ops = [
        {"op_id": q, "name": "ry", "qubits": [q], "params": [0.1 * (q + 1)], "service_type": "x"}
        for q in range(n)
    ]
    params = {"num_qubits": n, "operations": ops, "state": encode_array(initial_state(n))}
    out = execute_fragment(params, noise_level=IDEAL)
    assert out["operator"] is None
    reference = QuantumCircuit(n)
    for q in range(n):
        reference.ry(0.1 * (q + 1), q)
    expected = Statevector.from_instruction(reference).data
    np.testing.assert_allclose(decode_array(out["state"]), expected, atol=1e-12)
