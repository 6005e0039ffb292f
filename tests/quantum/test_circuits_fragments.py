"""Dependency DAG and fragments: acyclic, topological, every op once, dependencies respected."""

from __future__ import annotations

import pytest
from qiskit import qasm2
from qiskit.circuit.random import random_circuit

from quantum_mesh.quantum.circuits.dag import build_dependency_dag
from quantum_mesh.quantum.circuits.fragments import build_fragments
from quantum_mesh.quantum.circuits.model import Fragment, NormalizedCircuit
from quantum_mesh.quantum.circuits.parse import parse_circuit

SEED_EXAMPLE = """OPENQASM 3;
qubit[2] q;
bit[1] c;
bell_pair q[0], q[1];
cnot q[0], q[1];
cz q[0], q[1];
teleport q[0], q[1];
syndrome_extraction q[0];
distillation q[1];
measure q[0] -> c[0];
"""


def _random(seed: int, num_qubits: int = 6, depth: int = 8) -> NormalizedCircuit:
    qc = random_circuit(num_qubits, depth, max_operands=3, seed=seed)
    return parse_circuit(qasm2.dumps(qc))


def _check_fragments(circuit: NormalizedCircuit, fragments: list[Fragment]) -> None:
    ops = {op.op_id: op for op in circuit.operations}
    assert [f.fragment_id for f in fragments] == [f"f{i}" for i in range(len(fragments))]
    # Each operation exactly once.
    assert sorted(i for f in fragments for i in f.operation_ids) == sorted(ops)
    owner = {i: f.fragment_id for f in fragments for i in f.operation_ids}
    position = {f.fragment_id: k for k, f in enumerate(fragments)}
    for f in fragments:
        # One service per fragment unless fused; a fused one lists its services, first first.
        assert {ops[i].service_type for i in f.operation_ids} == set(f.required_services)
        assert len(f.required_services) == len(set(f.required_services))
        assert f.service_type == ops[f.operation_ids[0]].service_type == f.required_services[0]
        assert f.qubits == tuple(sorted({q for i in f.operation_ids for q in ops[i].qubits}))
        assert list(f.operation_ids) == sorted(f.operation_ids)
        # Topological list order (hence acyclic): dependencies come strictly earlier.
        assert all(position[d] < position[f.fragment_id] for d in f.depends_on)
    # Dependency correctness: every op-level edge across fragments is a fragment dependency,
    # and every declared dependency comes from some op-level edge.
    needed: dict[str, set[str]] = {f.fragment_id: set() for f in fragments}
    for op_id, preds in build_dependency_dag(circuit).items():
        for pred in preds:
            if owner[pred] != owner[op_id]:
                needed[owner[op_id]].add(owner[pred])
    assert {f.fragment_id: set(f.depends_on) for f in fragments} == needed


def test_dag_links_each_op_to_previous_op_on_its_qubits() -> None:
    circuit = parse_circuit(
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\n'
        "h q[0];\nh q[1];\ncx q[0], q[1];\nx q[2];\nccx q[0], q[1], q[2];\n"
    )
    assert build_dependency_dag(circuit) == {0: set(), 1: set(), 2: {0, 1}, 3: set(), 4: {2, 3}}


def test_seed_example_fragments() -> None:
    circuit = parse_circuit(SEED_EXAMPLE)
    fragments = build_fragments(circuit)
    _check_fragments(circuit, fragments)
    assert [f.service_type for f in fragments] == [
        "bell_pair",
        "cnot",
        "cz",
        "teleportation",
        "syndrome_extraction",
        "distillation",
    ]
    # syndrome_extraction (q0) and distillation (q1) can run in parallel.
    assert fragments[4].depends_on == ("f3",) and fragments[5].depends_on == ("f3",)


def test_same_service_runs_are_grouped_and_capped() -> None:
    body = "".join(f"rx({0.1 * k}) q[0];\n" for k in range(10))
    circuit = parse_circuit('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\n' + body)
    fragments = build_fragments(circuit, max_ops_per_fragment=4)
    assert [len(f.operation_ids) for f in fragments] == [4, 4, 2]
    assert [f.depends_on for f in fragments] == [(), ("f0",), ("f1",)]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("max_ops", "max_qubits"), [(16, 4), (3, 3), (1, 1)])
def test_random_circuit_fragment_properties(seed: int, max_ops: int, max_qubits: int) -> None:
    circuit = _random(seed)
    fragments = build_fragments(
        circuit, max_ops_per_fragment=max_ops, max_qubits_per_fragment=max_qubits
    )
    _check_fragments(circuit, fragments)
    assert all(len(f.operation_ids) <= max_ops for f in fragments)
    assert all(len(f.qubits) <= max_qubits for f in fragments if len(f.operation_ids) > 1)


def test_fragment_round_trips() -> None:
    for fragment in build_fragments(parse_circuit(SEED_EXAMPLE)):
        assert Fragment.from_dict(fragment.to_dict()) == fragment


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        build_fragments(parse_circuit(SEED_EXAMPLE), max_ops_per_fragment=0)


BELL = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[0];\ncx q[0], q[1];\n'


def test_without_fuse_a_bell_circuit_is_two_calls() -> None:
    fragments = build_fragments(parse_circuit(BELL))
    assert [(f.service_type, f.services) for f in fragments] == [
        ("single_qubit", ()),
        ("cnot", ()),
    ]
    assert "services" not in fragments[0].to_dict()


def test_fused_bell_circuit_is_one_call_listing_both_services() -> None:
    circuit = parse_circuit(BELL)
    asked: list[frozenset[str]] = []

    def fuse(services: frozenset[str]) -> bool:
        asked.append(services)
        return True

    fragments = build_fragments(circuit, fuse=fuse)
    _check_fragments(circuit, fragments)
    assert len(fragments) == 1
    (fused,) = fragments
    assert fused.service_type == "single_qubit"
    assert fused.services == ("single_qubit", "cnot")
    assert fused.operation_ids == (0, 1) and fused.qubits == (0, 1)
    assert asked == [frozenset({"single_qubit", "cnot"})]
    assert fused.to_dict()["services"] == ["single_qubit", "cnot"]
    assert Fragment.from_dict(fused.to_dict()) == fused


def test_fuse_joins_only_the_mixes_it_allows() -> None:
    circuit = parse_circuit(SEED_EXAMPLE)
    allowed = {"bell_pair", "cnot", "cz"}
    fragments = build_fragments(circuit, fuse=lambda services: services <= allowed)
    _check_fragments(circuit, fragments)
    assert [f.required_services for f in fragments] == [
        ("bell_pair", "cnot", "cz"),
        ("teleportation",),
        ("syndrome_extraction",),
        ("distillation",),
    ]
    assert fragments[2].depends_on == ("f1",) and fragments[3].depends_on == ("f1",)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("max_ops", "max_qubits"), [(16, 4), (3, 3)])
def test_fused_random_circuits_keep_every_dependency(
    seed: int, max_ops: int, max_qubits: int
) -> None:
    circuit = _random(seed)
    plain = build_fragments(
        circuit, max_ops_per_fragment=max_ops, max_qubits_per_fragment=max_qubits
    )
    fused = build_fragments(
        circuit,
        max_ops_per_fragment=max_ops,
        max_qubits_per_fragment=max_qubits,
        fuse=lambda services: True,
    )
    _check_fragments(circuit, fused)
    assert all(len(f.operation_ids) <= max_ops for f in fused)
    assert all(len(f.qubits) <= max_qubits for f in fused if len(f.operation_ids) > 1)
    assert len(fused) <= len(plain)
