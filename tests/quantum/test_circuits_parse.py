"""parse_circuit: both dialects, service aliases, line numbers in errors, model round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qiskit import QuantumCircuit, qasm2, qasm3
from qiskit.quantum_info import Statevector

from quantum_mesh.errors import InvalidCircuit
from quantum_mesh.quantum.analysis import ideal_statevector
from quantum_mesh.quantum.circuits.model import NormalizedCircuit
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

QASM2_HEADER = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\ncreg c[3];\n'
QASM3_HEADER = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[3] q;\nbit[3] c;\n'


def _assert_same_state(circuit: NormalizedCircuit, reference: QuantumCircuit) -> None:
    expected = Statevector.from_instruction(reference)
    got = Statevector(ideal_statevector(circuit))
    assert abs(np.vdot(expected.data, got.data)) ** 2 == pytest.approx(1.0, abs=1e-12)


def test_seed_document_example_parses_to_service_types() -> None:
    circuit = parse_circuit(SEED_EXAMPLE)
    assert circuit.format == "qasm3"
    assert (circuit.num_qubits, circuit.num_clbits) == (2, 1)
    assert [op.service_type for op in circuit.operations] == [
        "bell_pair",
        "cnot",
        "cz",
        "teleportation",
        "syndrome_extraction",
        "distillation",
    ]
    assert [op.line for op in circuit.operations] == [4, 5, 6, 7, 8, 9]
    assert circuit.measurements == ((0, 0),)


@pytest.mark.parametrize("header", [QASM2_HEADER, QASM3_HEADER], ids=["qasm2", "qasm3"])
@pytest.mark.parametrize(
    ("alias", "service_type", "reference"),
    [
        ("bell_pair q[0], q[1];", "bell_pair", lambda qc: (qc.h(0), qc.cx(0, 1))),
        ("cnot q[0], q[1];", "cnot", lambda qc: qc.cx(0, 1)),
        ("teleport q[0], q[1];", "teleportation", lambda qc: qc.swap(0, 1)),
        ("syndrome_extraction q[0];", "syndrome_extraction", lambda qc: None),
        ("distillation q[0];", "distillation", lambda qc: None),
    ],
)
def test_every_alias_in_both_dialects(header, alias, service_type, reference) -> None:  # type: ignore[no-untyped-def]
    # A non-trivial input state so that swap/identity/bell are distinguishable.
    text = header + "ry(0.3) q[0];\nrx(1.1) q[1];\n" + alias + "\n"
    circuit = parse_circuit(text)
    alias_op = circuit.operations[-1]
    assert alias_op.name == alias.split()[0]
    assert alias_op.service_type == service_type
    assert alias_op.line == 7
    qc = QuantumCircuit(3)
    qc.ry(0.3, 0)
    qc.rx(1.1, 1)
    reference(qc)
    _assert_same_state(circuit, qc)


def test_qasm2_legacy_gates_keep_float_params_and_broadcast() -> None:
    text = QASM2_HEADER + (
        "h q;\nu3(0.1, 0.2, 0.3) q[0];\ncu1(pi/4) q[0], q[1];\nswap q[1], q[2];\n"
        "rzz(0.7) q[0], q[2];\nccx q[0], q[1], q[2];\nbarrier q;\nmeasure q -> c;\n"
    )
    circuit = parse_circuit(text)
    names = [op.name for op in circuit.operations]
    assert names == ["h", "h", "h", "u3", "cu1", "swap", "rzz", "ccx"]
    assert [op.line for op in circuit.operations] == [5, 5, 5, 6, 7, 8, 9, 10]
    assert circuit.operations[3].params == (0.1, 0.2, 0.3)
    assert circuit.operations[4].params == (pytest.approx(np.pi / 4),)
    assert [op.service_type for op in circuit.operations][3:] == [
        "single_qubit",
        "two_qubit",
        "two_qubit",
        "two_qubit",
        "multi_qubit",
    ]
    assert circuit.measurements == ((0, 0), (1, 1), (2, 2))
    reference = qasm2.loads(text, custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
    reference.remove_final_measurements()
    _assert_same_state(circuit, reference)


def test_user_gates_and_non_standard_library_gates_are_expanded() -> None:
    text = QASM2_HEADER.replace("q[3]", "q[4]") + (
        "gate mine(theta) a, b { ry(theta) a; cx a, b; }\nmine(0.4) q[0], q[1];\n"
        "c3x q[0], q[1], q[2], q[3];\n"
    )
    circuit = parse_circuit(text)
    assert {op.name for op in circuit.operations} <= {"ry", "cx", "h", "p", "cp", "u1", "cu1"}
    assert all(op.line in {6, 7} for op in circuit.operations)
    reference = qasm2.loads(text, custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
    _assert_same_state(circuit, reference)


def test_qasm3_modifiers_and_assignment_measurement() -> None:
    text = QASM3_HEADER + "h q[0];\nctrl @ x q[0], q[1];\nc[2] = measure q[1];\n"
    circuit = parse_circuit(text)
    assert [(op.name, op.qubits, op.service_type) for op in circuit.operations] == [
        ("h", (0,), "single_qubit"),
        ("cx", (0, 1), "cnot"),
    ]
    assert circuit.measurements == ((1, 2),)


def test_random_circuits_match_qiskit_in_both_dialects() -> None:
    from qiskit.circuit.random import random_circuit

    for seed in range(3):
        qc = random_circuit(5, 6, max_operands=3, seed=seed)
        for text in (qasm2.dumps(qc), qasm3.dumps(qc)):
            circuit = parse_circuit(text)
            _assert_same_state(circuit, qc)


def test_model_round_trips_through_json() -> None:
    circuit = parse_circuit(SEED_EXAMPLE)
    restored = NormalizedCircuit.from_dict(json.loads(json.dumps(circuit.to_dict())))
    assert restored == circuit


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (QASM2_HEADER + "h q[0];\nfoo q[1];\n", 6, "foo"),
        (QASM3_HEADER + "h q[0];\nfoo q[1];\n", 6, "foo"),
        (QASM2_HEADER + "h q[0];\ncx q[0] q[1];\n", 6, ""),
        (QASM3_HEADER + "h q[0];\ncx q[0] q[1];\n", 6, "syntax"),
        (QASM3_HEADER + "h q[0];\ncx q[0], q[7];\n", 6, "out of range"),
        (QASM3_HEADER + "h q[0];\nwhile (c[0]) { x q[1]; }\n", 6, "'while'"),
        (QASM3_HEADER + "h q[0];\nfor int i in [0:1] { x q[i]; }\n", 6, "'for'"),
        ("OPENQASM 3.0;\nqubit[3] q;\n\nqubit[30] r;\n", 4, "at most 20"),
    ],
)
def test_errors_name_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(InvalidCircuit) as info:
        parse_circuit(text)
    assert info.value.details.get("line") == line
    assert f"line {line}" in info.value.message
    assert fragment in info.value.message


def test_unsupported_version_and_empty_text() -> None:
    with pytest.raises(InvalidCircuit):
        parse_circuit("")
    with pytest.raises(InvalidCircuit) as info:
        parse_circuit("OPENQASM 4.0;\nqubit q;\n")
    assert info.value.details == {"line": 1}


@pytest.mark.parametrize(
    "text",
    [
        '// leading comment\nOPENQASM 2.0;\n// another\n\ninclude "qelib1.inc";\n'
        "qreg q[2];\nh q[0]; // trailing\nnot_a_gate q[1];\n",
        '// leading comment\nOPENQASM 3.0;\n/* block\n comment */\ninclude "stdgates.inc";\n'
        "qubit[2] q;\nh q[0]; // trailing\nnot_a_gate q[1];\n",
    ],
    ids=["qasm2", "qasm3"],
)
def test_comments_do_not_shift_lines(text: str) -> None:
    with pytest.raises(InvalidCircuit) as info:
        parse_circuit(text)
    assert info.value.details["line"] == 8
    assert "not_a_gate" in info.value.message


def _reference_strip(text: str) -> str:
    """The character-by-character reader the regex-based one replaced."""
    out, i, n, in_string = list(text), 0, len(text), False
    while i < n:
        if in_string:
            in_string = text[i] != '"'
            i += 1
        elif text[i] == '"':
            in_string, i = True, i + 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                out[i], i = " ", i + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            for j in range(i, end):
                out[j] = out[j] if text[j] == "\n" else " "
            i = end
        else:
            i += 1
    return "".join(out)


def _reference_split(clean: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    line, start, start_line, depth = 1, -1, 1, 0
    for i, ch in enumerate(clean):
        if start < 0 and not ch.isspace():
            start, start_line = i, line
        if ch == "\n":
            line += 1
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(depth - 1, 0)
            if depth == 0 and start >= 0:
                found.append((start_line, clean[start : i + 1]))
                start = -1
        elif ch == ";" and depth == 0 and start >= 0:
            found.append((start_line, clean[start:i]))
            start = -1
    if start >= 0 and clean[start:].strip():
        found.append((start_line, clean[start:]))
    return [(line, " ".join(text.split())) for line, text in found if text.strip()]


@pytest.mark.parametrize(
    "text",
    [
        SEED_EXAMPLE,
        QASM2_HEADER
        + "gate g a {\n h a; // c\n x a; }\n\n;; ;\nh q[0]; /* x;\n y */ cx q[0],\nq[1];",
        '// "quoted" ; not a statement\nOPENQASM 3.0; include "a//b;c"; /* open',
        "qubit[2] q;\n{ { h q[0]; } }\n}} stray; x q[1]\n",
        "\n\n  h q[0];\r\n\tcx q[0], q[1]  ;  \n/**/measure q -> c;",
    ],
)
def test_statement_reader_matches_the_character_reader(text: str) -> None:
    from quantum_mesh.quantum.circuits import source

    clean = source.strip_comments(text)
    assert clean == _reference_strip(text)
    assert [(st.line, st.text) for st in source.split_statements(clean)] == _reference_split(clean)


@pytest.mark.parametrize(
    ("text", "features"),
    [
        (QASM2_HEADER + "measure q[0] -> c[0];\nx q[0];\n", ("mid_circuit_measurement",)),
        (QASM3_HEADER + "h q[0];\nreset q[0];\n", ("reset",)),
        (QASM2_HEADER + "h q[0];\nif(c==1) x q[1];\n", ("classical_if",)),
        (
            QASM3_HEADER
            + "x q[0];\nc[0] = measure q[0];\nif (c[0]) { x q[1]; } else { h q[1]; }\n",
            ("classical_if",),
        ),
    ],
)
def test_dynamic_circuits_are_kept_whole_for_a_feedforward_node(
    text: str, features: tuple[str, ...]
) -> None:
    circuit = parse_circuit(text)
    assert circuit.dynamic is not None and circuit.dynamic.features == features
    assert circuit.operations == () and circuit.measurements == ()
    assert NormalizedCircuit.from_dict(circuit.to_dict()) == circuit


def test_a_dynamic_circuit_is_bounded_inside_its_branches() -> None:
    body = " ".join("x q[1];" for _ in range(30))
    text = QASM3_HEADER + f"c[0] = measure q[0];\nif (c[0]) {{ {body} }}\n"
    with pytest.raises(InvalidCircuit) as info:
        parse_circuit(text, max_operations=20)
    assert info.value.details["limit"] == "max_circuit_operations"
