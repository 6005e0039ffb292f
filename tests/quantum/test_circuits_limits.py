"""Input limits: a hostile circuit is refused from its text, before Qiskit builds anything.

Each refusal is an ``InvalidCircuit`` whose ``details`` name the limit, its maximum and the
value found, and whose message names them too. "Before building" is checked by replacing
every loader the parser could reach (Qiskit's two importers and the OpenQASM 3 reference
parser) with one that fails the test if called; "memory bounded" by the peak RSS of a fresh
interpreter that parses the hostile text."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import openqasm3
import pytest
import qiskit_qasm3_import
from qiskit import qasm2, qasm3

from quantum_mesh.errors import InvalidCircuit
from quantum_mesh.quantum.circuits.parse import parse_circuit

#: The 61-byte circuit that used to make Qiskit build ten million qubits (17.8 s, 2.2 GB).
HUGE_QREG = 'OPENQASM 2.0; include "qelib1.inc"; qreg q[10000000]; h q[0];'
HUGE_QUBIT = 'OPENQASM 3.0; include "stdgates.inc"; qubit[10000000] q; h q[0];'
QASM2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n'
QASM3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'


def nested_gates(levels: int, calls: int, *, version: str = "2.0") -> str:
    """``levels`` gate definitions, each calling the previous one ``calls`` times: a short
    text that expands to ``calls ** levels`` operations."""
    include = '"qelib1.inc"' if version.startswith("2") else '"stdgates.inc"'
    lines = [f"OPENQASM {version};", f"include {include};", "qreg q[1];"]
    previous = "h"
    for level in range(levels):
        body = " ".join(f"{previous} a;" for _ in range(calls))
        lines.append(f"gate g{level} a {{ {body} }}")
        previous = f"g{level}"
    lines.append(f"{previous} q[0];")
    return "\n".join(lines) + "\n"


def alternating(gates: int) -> str:
    """``gates`` operations on 2 qubits, alternating service types (one fragment each)."""
    body = "h q[0];\ncx q[0], q[1];\n" * (gates // 2)
    return 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\n' + body


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every loader that builds (or fully parses) a circuit fails the test when called."""
    called: list[str] = []

    def spy(name: str) -> Any:
        def refuse(*_args: Any, **_kwargs: Any) -> Any:
            called.append(name)
            raise AssertionError(f"{name} was called for a circuit the pre-scan must refuse")

        return refuse

    monkeypatch.setattr(qasm2, "loads", spy("qiskit.qasm2.loads"))
    monkeypatch.setattr(qasm3, "loads", spy("qiskit.qasm3.loads"))
    monkeypatch.setattr(openqasm3, "parse", spy("openqasm3.parse"))
    monkeypatch.setattr(qiskit_qasm3_import, "parse", spy("qiskit_qasm3_import.parse"))
    monkeypatch.setattr(qiskit_qasm3_import, "convert", spy("qiskit_qasm3_import.convert"))
    return called


def _refused(text: str, limit: str, **limits: int) -> InvalidCircuit:
    with pytest.raises(InvalidCircuit) as info:
        parse_circuit(text, **limits)
    err = info.value
    assert err.code == "invalid_circuit"
    assert err.details["limit"] == limit, err.details
    assert err.details["found"] > err.details["max"]
    assert limit in err.message
    assert str(err.details["max"]) in err.message
    return err


@pytest.mark.parametrize("text", [HUGE_QREG, HUGE_QUBIT], ids=["qasm2", "qasm3"])
def test_huge_register_is_refused_without_building(text: str, no_build: list[str]) -> None:
    err = _refused(text, "max_circuit_qubits")
    assert err.details == {
        "limit": "max_circuit_qubits",
        "max": 20,
        "found": 10_000_000,
        "line": 1,
    }
    assert "10000000" in err.message
    assert no_build == []


@pytest.mark.parametrize(
    ("declaration", "limit"),
    [
        ("qreg r[2147483648];", "max_circuit_qubits"),
        ("qubit[10**9] r;", "max_circuit_qubits"),
        ("qubit[0x7fffffff] r;", "max_circuit_qubits"),
        ("qreg a[15]; qreg b[15];", "max_circuit_qubits"),
        ("creg c[10000000];", "max_circuit_clbits"),
        ("bit[10000000] c;", "max_circuit_clbits"),
        ("creg c[40]; bit[40] d;", "max_circuit_clbits"),
    ],
)
def test_every_register_form_is_bounded(declaration: str, limit: str, no_build: list[str]) -> None:
    version = "3.0" if "qubit" in declaration or "bit" in declaration else "2.0"
    text = f"OPENQASM {version};\nqreg q[1];\n{declaration}\nh q[0];\n"
    err = _refused(text, limit)
    assert err.details["line"] == 3
    assert no_build == []


def test_register_size_that_is_not_a_constant_is_refused(no_build: list[str]) -> None:
    with pytest.raises(InvalidCircuit) as info:
        parse_circuit("OPENQASM 3.0;\nqubit[n] q;\nh q[0];\n")
    assert info.value.details["line"] == 2
    assert no_build == []


def test_constant_register_expressions_still_parse() -> None:
    circuit = parse_circuit('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2*2] q;\nh q[3];\n')
    assert circuit.num_qubits == 4


def test_nested_gate_definitions_are_refused_before_expansion(no_build: list[str]) -> None:
    text = nested_gates(11, 3)
    assert len(text.encode()) < 500
    err = _refused(text, "max_gate_definition_depth")
    assert err.details["max"] == 8
    assert err.details["found"] == 9
    assert err.details["line"] == 12  # g8, the first definition nested 9 deep
    assert no_build == []


@pytest.mark.parametrize("version", ["2.0", "3.0"])
def test_wide_gate_definitions_are_refused_by_the_operation_count(
    version: str, no_build: list[str]
) -> None:
    # 4 levels of 12 calls: shallow enough, but 12**4 = 20736 operations. The definition
    # that passes the limit is refused where it is defined: no call of it could pass.
    err = _refused(nested_gates(4, 12, version=version), "max_circuit_operations")
    assert err.details["line"] == 7
    assert err.details["max"] == 20_000 and err.details["found"] > 20_000
    assert "g3" in err.message
    # Called often enough, a cheaper gate is refused at the call that passes the limit (each
    # definition counts one per statement: 3 * (1 + 12), then 1728 per call of g2).
    text = nested_gates(3, 12, version=version).replace("g2 q[0];", "g2 q[0];\n" * 12)
    err = _refused(text, "max_circuit_operations")
    assert err.details == {
        "limit": "max_circuit_operations",
        "max": 20_000,
        "found": 3 * 13 + 1_728 * 12,
        "line": 18,
    }
    assert no_build == []


def test_operation_count_includes_broadcast_and_measurements(no_build: list[str]) -> None:
    text = QASM2 + "qreg q[10];\ncreg c[10];\n" + "h q;\nmeasure q -> c;\n" * 3
    err = _refused(text, "max_circuit_operations", max_operations=50)
    assert err.details["found"] == 60 and err.details["line"] == 10
    assert no_build == []


def test_ten_thousand_gates_are_refused_by_the_operation_limit(no_build: list[str]) -> None:
    err = _refused(alternating(10_000), "max_circuit_operations", max_operations=5_000)
    assert err.details["max"] == 5_000
    assert no_build == []


@pytest.mark.parametrize(
    "filler",
    ["barrier q;\n", "}}\n", "gate g{i} a {{ h a; }}\n", "opaque o{i} a;\n"],
    ids=["barriers", "stray-braces", "gate-definitions", "opaque"],
)
def test_every_statement_counts_so_the_text_qiskit_reads_is_bounded(
    filler: str, no_build: list[str]
) -> None:
    text = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\n' + "".join(
        filler.format(i=i) for i in range(2_000)
    )
    _refused(text, "max_circuit_operations", max_operations=1_000)
    assert no_build == []


def test_power_of_a_wide_gate_is_refused_before_qiskit_builds_its_matrix(
    no_build: list[str],
) -> None:
    qubits = ", ".join(f"q[{i}]" for i in range(12))
    text = QASM3 + f"qubit[12] q;\npow(0.5) @ ctrl(11) @ x {qubits};\n"
    err = _refused(text, "max_circuit_operations")
    assert err.details["line"] == 4
    assert no_build == []


def test_expansion_past_the_estimate_is_stopped_while_expanding() -> None:
    # Library gates count as one operation in the pre-scan; their real expansion is counted
    # exactly as the parser expands, and stops at the limit.
    text = QASM2 + "qreg q[4];\n" + "c3x q[0], q[1], q[2], q[3];\n" * 10
    err = _refused(text, "max_circuit_operations", max_operations=40)
    assert err.details["found"] == 41


def test_only_the_standard_include_is_read(no_build: list[str]) -> None:
    for text in (
        'OPENQASM 2.0;\ninclude "/etc/hostname";\nqreg q[1];\n',
        'OPENQASM 2.0;\ninclude "qelib1.inc";\ninclude "/dev/zero";\nqreg q[1];\n',
    ):
        with pytest.raises(InvalidCircuit) as info:
            parse_circuit(text)
        assert "include" in info.value.message
        assert info.value.details["line"] in {2, 3}
    assert no_build == []


def test_control_flow_is_refused_before_building(no_build: list[str]) -> None:
    text = QASM3 + "qubit[1] q;\nfor int i in [0:99999999] { h q[0]; }\n"
    with pytest.raises(InvalidCircuit) as info:
        parse_circuit(text)
    assert info.value.details["line"] == 4
    assert no_build == []


def test_limits_are_keyword_arguments() -> None:
    text = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\nh q;\n'
    _refused(text, "max_circuit_qubits", max_qubits=2)
    _refused(text, "max_circuit_operations", max_operations=2)
    _refused(nested_gates(3, 1), "max_gate_definition_depth", max_gate_depth=2)
    assert parse_circuit(nested_gates(8, 2)).num_qubits == 1
    assert len(parse_circuit(text, max_operations=3).operations) == 3


def test_refusing_a_huge_register_keeps_memory_bounded() -> None:
    """In a fresh interpreter: the peak RSS after refusing ``qreg q[100000000]`` (which used
    to grow ~220 MB per million qubits) stays within a few MB of the peak after a Bell
    circuit."""
    script = textwrap.dedent(
        """
        import json, resource
        from quantum_mesh.errors import InvalidCircuit
        from quantum_mesh.quantum.circuits.parse import parse_circuit

        def peak_kib():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        parse_circuit('OPENQASM 2.0; include "qelib1.inc"; qreg q[2]; h q[0]; cx q[0], q[1];')
        parse_circuit('OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; h q[0];')
        before = peak_kib()
        refused = []
        for text in (
            'OPENQASM 2.0; include "qelib1.inc"; qreg q[100000000]; h q[0];',
            'OPENQASM 3.0; include "stdgates.inc"; qubit[100000000] q; h q[0];',
        ):
            try:
                parse_circuit(text)
            except InvalidCircuit as exc:
                refused.append(exc.details["limit"])
        print(json.dumps({"growth_kib": peak_kib() - before, "refused": refused}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["refused"] == ["max_circuit_qubits", "max_circuit_qubits"]
    assert report["growth_kib"] < 16 * 1024, report


def test_calls_with_more_operands_than_qubits_are_refused(no_build: list[str]) -> None:
    text = QASM3 + "qubit[2] q;\nh " + "q[0], " * 5_000 + "q[1];\n"
    err = _refused(text, "max_circuit_qubits")
    assert err.details["found"] == 5_001 and err.details["line"] == 4
    text = QASM3 + "qubit[2] q;\n" + "inv @ " * 5_000 + "x q[0];\n"
    _refused(text, "max_circuit_operations", max_operations=1_000)
    assert no_build == []


def test_an_expression_too_deep_for_the_parser_is_an_invalid_circuit() -> None:
    # The OpenQASM 3 reference parser recurses once per operator: RecursionError, not a 500.
    with pytest.raises(InvalidCircuit) as info:
        parse_circuit(QASM3 + "qubit[1] q;\nrx(" + "1+" * 5_000 + "1) q[0];\n")
    assert "nests too deeply" in info.value.message
