"""OpenQASM 2/3 text -> :class:`NormalizedCircuit`, parsed by Qiskit's own parsers.

The service aliases are declared to Qiskit as ordinary gate definitions injected on the
version line (so Qiskit's line numbers stay the user's), and the resulting instructions are
mapped back to alias names and service types. User-defined gates and non-standard library
gates are expanded to standard gates; anything that cannot be, fails with the line it is on.

Nothing reaches Qiskit before :func:`.limits.prescan` has bounded it from the text (register
sizes, gate-definition nesting, expanded operation count), and the expansion here counts
exactly and stops as soon as it passes ``max_operations``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

from openqasm3.parser import QASM3ParsingError
from qiskit import QuantumCircuit, qasm2, qasm3
from qiskit.circuit import ControlFlowOp, Instruction
from qiskit.exceptions import QiskitError
from qiskit_qasm3_import import ConversionError

from quantum_mesh.errors import InvalidCircuit
from quantum_mesh.quantum.circuits import limits, source
from quantum_mesh.quantum.circuits.gates import ALIASES, service_type_for, standard_gates
from quantum_mesh.quantum.circuits.model import DynamicProgram, NormalizedCircuit, Operation

_IGNORED = {"barrier", "delay", "global_phase"}
#: Definition levels a library gate may add below the user's own (``_expand``'s bound is the
#: user's ``max_gate_depth`` plus this, and never under 16).
_LIBRARY_DEFINITION_DEPTH = 8
_MIN_DEFINITION_DEPTH = 16
_QISKIT_POSITION_RES = (
    re.compile(r"<input>:(\d+),(\d+):\s*(.*)", re.DOTALL),  # qasm2
    re.compile(r"\AL(\d+):C(\d+):\s*(.*)", re.DOTALL),  # openqasm3 reference parser
    re.compile(r"\A(\d+),(\d+):\s*(.*)", re.DOTALL),  # qiskit-qasm3-import
)


def parse_circuit(
    text: str,
    *,
    max_qubits: int = limits.DEFAULT_MAX_QUBITS,
    max_clbits: int = limits.DEFAULT_MAX_CLBITS,
    max_operations: int = limits.DEFAULT_MAX_OPERATIONS,
    max_gate_depth: int = limits.DEFAULT_MAX_GATE_DEPTH,
) -> NormalizedCircuit:
    """Parse OpenQASM 2 or 3 (with service aliases) into a normalised circuit.

    The limits are checked on the text first (:mod:`.limits`), so a hostile program is
    refused before Qiskit builds anything.

    Args:
        text: the program. ``OPENQASM 2.0;`` selects OpenQASM 2, anything else OpenQASM 3.
        max_qubits: refuse circuits declaring more qubits than this.
        max_clbits: refuse circuits declaring more classical bits than this.
        max_operations: refuse circuits with more operations than this, counted after
            gate-definition expansion and register broadcasting, measurements included.
        max_gate_depth: refuse gate definitions nested deeper than this.

    Raises:
        InvalidCircuit: syntax errors, unknown gates, classical control, resets, gates after
            a measurement on the same qubit, a limit passed; ``details["line"]`` is set
            whenever the line is known, and the message names it; a passed limit also sets
            ``details["limit"]``, ``["max"]`` and ``["found"]``.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidCircuit("circuit text is empty")
    bounds = limits.Limits(
        max_qubits=max_qubits,
        max_clbits=max_clbits,
        max_operations=max_operations,
        max_gate_depth=max_gate_depth,
    )
    clean = source.strip_comments(text)
    fmt, version = source.detect_format(clean)
    statements = limits.prescan(source.iter_statements(clean), fmt, bounds)
    prepared = source.prepare_source(text, clean, fmt, version)
    qc = _qiskit_parse(prepared, fmt, statements)
    _check_size(qc, statements, bounds)
    lines = source.instruction_lines(statements)
    features = dynamic_features(qc)
    if features:
        _check_dynamic(qc, lines, bounds)
        return NormalizedCircuit(
            format=fmt,
            num_qubits=qc.num_qubits,
            num_clbits=qc.num_clbits,
            operations=(),
            measurements=(),
            source_hash=hashlib.sha256(text.encode()).hexdigest(),
            dynamic=DynamicProgram(format=fmt, source=prepared, features=features),
        )
    operations, measurements = _normalise(qc, lines, bounds)
    return NormalizedCircuit(
        format=fmt,
        num_qubits=qc.num_qubits,
        num_clbits=qc.num_clbits,
        operations=tuple(operations),
        measurements=tuple(measurements),
        source_hash=hashlib.sha256(text.encode()).hexdigest(),
    )


def load_qasm(prepared: str, fmt: str) -> QuantumCircuit:
    """Qiskit's own parser for the format (``prepared``: aliases declared, see ``source``)."""
    if fmt == "qasm2":
        return qasm2.loads(prepared, custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
    return qasm3.loads(prepared)


def dynamic_features(qc: QuantumCircuit) -> tuple[str, ...]:
    """What makes ``qc`` dynamic: a gate, reset or measurement on a qubit after it was
    measured, a reset, classical control. Empty for a unitary circuit with final
    measurements."""
    found: set[str] = set()
    measured: set[int] = set()
    for ci in qc.data:
        name = ci.operation.name
        qubits = {qc.find_bit(q).index for q in ci.qubits}
        if isinstance(ci.operation, ControlFlowOp) or getattr(ci.operation, "condition", None):
            found.add("classical_if")
        elif name == "reset":
            found.add("reset")
        elif name not in _IGNORED and measured & qubits:
            found.add("mid_circuit_measurement")
        if name == "measure":
            measured |= qubits
    return tuple(sorted(found))


def _check_dynamic(qc: QuantumCircuit, lines: list[int] | None, bounds: limits.Limits) -> None:
    """Only what a node runs shot by shot: gates, measure, reset and ``if``/``else`` (nested
    too); anything else is refused with its line."""
    data = [ci for ci in qc.data if ci.operation.name != "barrier"]
    if lines is not None and len(lines) != len(data):
        lines = None
    max_depth = max(_MIN_DEFINITION_DEPTH, bounds.max_gate_depth + _LIBRARY_DEFINITION_DEPTH)
    count = 0

    def walk(instructions: Any, line: int | None, nesting: int) -> None:
        nonlocal count
        for ci in instructions:
            op = ci.operation
            count += 1
            _check_count(count, line, bounds)
            if isinstance(op, ControlFlowOp):
                if op.name != "if_else":
                    raise _located(
                        line, f"'{op.name}' is not supported: {source.DYNAMIC_SUPPORTED}"
                    )
                for block in op.blocks:
                    walk(block.data, line, nesting + 1)
            elif op.name in ("measure", "reset") or op.name in _IGNORED:
                continue
            else:
                for _ in _expand(
                    op, tuple(range(op.num_qubits)), line, depth=0, max_depth=max_depth
                ):
                    count += 1
                    _check_count(count, line, bounds)

    for index, ci in enumerate(data):
        walk([ci], lines[index] if lines is not None else None, 0)


def _qiskit_parse(prepared: str, fmt: str, statements: list[source.Statement]) -> QuantumCircuit:
    try:
        return load_qasm(prepared, fmt)
    except (QiskitError, QASM3ParsingError, ConversionError, IndexError, ValueError) as exc:
        raise _circuit_error(exc, statements) from exc
    except RecursionError as exc:  # the OpenQASM 3 reference parser recurses per operator
        raise InvalidCircuit("cannot parse circuit: an expression nests too deeply") from exc


def _circuit_error(exc: Exception, statements: list[source.Statement]) -> InvalidCircuit:
    """Turn a parser exception into an InvalidCircuit naming the line."""
    message = str(exc).strip().strip("'\"")
    for pattern in _QISKIT_POSITION_RES:
        found = pattern.match(message)
        if found:
            line = int(found.group(1))
            return _at(line, found.group(3).strip())
    token_line = _antlr_line(exc)
    if token_line is not None:
        return _at(token_line, "syntax error")
    located = source.find_bad_operand(statements)
    if located is not None:
        return _at(*located)
    return InvalidCircuit(f"cannot parse circuit: {message or type(exc).__name__}")


def _antlr_line(exc: BaseException) -> int | None:
    """The reference OpenQASM 3 parser bails out with an empty error whose cause chain holds
    the ANTLR recognition error and its offending token."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        for candidate in (seen, *seen.args):
            token = getattr(candidate, "offendingToken", None)
            if token is not None and getattr(token, "line", None):
                return int(token.line)
        seen = seen.__cause__ or seen.__context__
    return None


def _at(line: int, reason: str) -> InvalidCircuit:
    return InvalidCircuit(f"line {line}: {reason}", details={"line": line})


def _check_size(
    qc: QuantumCircuit, statements: list[source.Statement], bounds: limits.Limits
) -> None:
    """What Qiskit built, against the limits (the pre-scan has refused what the text tells)."""
    if qc.num_qubits == 0:
        raise InvalidCircuit("circuit declares no qubits")
    if qc.num_qubits > bounds.max_qubits:
        line = None
        total = 0
        for size, declared in source.register_sizes(statements).values():
            total += size
            if total > bounds.max_qubits:
                line = declared
                break
        raise limits.exceeded(
            limits.MAX_QUBITS,
            f"circuit declares {qc.num_qubits} qubits",
            found=qc.num_qubits,
            maximum=bounds.max_qubits,
            line=line,
        )
    if qc.num_clbits > bounds.max_clbits:
        raise limits.exceeded(
            limits.MAX_CLBITS,
            f"circuit declares {qc.num_clbits} classical bits",
            found=qc.num_clbits,
            maximum=bounds.max_clbits,
        )


def _normalise(
    qc: QuantumCircuit, lines: list[int] | None, bounds: limits.Limits
) -> tuple[list[Operation], list[tuple[int, int]]]:
    data = [ci for ci in qc.data if ci.operation.name != "barrier"]
    if lines is not None and len(lines) != len(data):
        lines = None
    max_depth = max(_MIN_DEFINITION_DEPTH, bounds.max_gate_depth + _LIBRARY_DEFINITION_DEPTH)
    operations: list[Operation] = []
    measurements: list[tuple[int, int]] = []
    measured: set[int] = set()
    for index, ci in enumerate(data):
        line = lines[index] if lines is not None else None
        qubits = tuple(qc.find_bit(q).index for q in ci.qubits)
        if ci.operation.name == "measure":
            clbit = qc.find_bit(ci.clbits[0]).index
            measurements.append((qubits[0], clbit))
            measured.add(qubits[0])
            _check_count(len(operations) + len(measurements), line, bounds)
            continue
        expansion = _expand(ci.operation, qubits, line, depth=0, max_depth=max_depth)
        for name, op_qubits, params in expansion:
            after = measured.intersection(op_qubits)
            if after:
                raise _located(
                    line,
                    f"gate '{name}' acts on qubit {min(after)} after it was measured "
                    "(mid-circuit measurement is not supported)",
                )
            operations.append(
                Operation(
                    op_id=len(operations),
                    name=name,
                    qubits=op_qubits,
                    params=params,
                    service_type=service_type_for(name, len(op_qubits)),
                    line=line,
                )
            )
            _check_count(len(operations) + len(measurements), line, bounds)
    return operations, measurements


def _check_count(count: int, line: int | None, bounds: limits.Limits) -> None:
    """Stop expanding as soon as the count passes the limit (the pre-scan counted library
    gates as one operation each; here each is counted as it really expands)."""
    if count > bounds.max_operations:
        raise limits.exceeded(
            limits.MAX_OPERATIONS,
            f"circuit expands to more than {bounds.max_operations} operations",
            found=count,
            maximum=bounds.max_operations,
            line=line,
        )


def _expand(
    op: Instruction, qubits: tuple[int, ...], line: int | None, *, depth: int, max_depth: int
) -> Iterator[tuple[str, tuple[int, ...], tuple[float, ...]]]:
    """Standard gates and aliases as they are; other gates through their definitions, one
    operation at a time (so the caller can stop a runaway expansion at its limit)."""
    name = op.name
    if name in _IGNORED:
        return
    if name == "reset":
        raise _located(line, "reset is not supported")
    if isinstance(op, ControlFlowOp) or getattr(op, "condition", None) is not None:
        raise _located(line, "classical control is not supported")
    if name in ALIASES and len(qubits) == ALIASES[name][0] and not op.params:
        yield (name, qubits, ())
        return
    template = standard_gates().get(name)
    if template is not None and op.base_class is template.base_class:
        yield (name, qubits, _float_params(op, line))
        return
    definition = op.definition
    if definition is None or depth >= max_depth:
        raise _located(line, f"unsupported operation '{name}'")
    for inner in definition.data:
        inner_qubits = tuple(qubits[definition.find_bit(q).index] for q in inner.qubits)
        if inner.operation.name == "measure" or inner.clbits:
            raise _located(line, f"gate '{name}' contains non-unitary operations")
        yield from _expand(
            inner.operation, inner_qubits, line, depth=depth + 1, max_depth=max_depth
        )


def _float_params(op: Instruction, line: int | None) -> tuple[float, ...]:
    values: list[float] = []
    for p in op.params:
        try:
            values.append(float(p))
        except (TypeError, ValueError) as exc:
            raise _located(line, f"gate '{op.name}' has a non-numeric parameter {p}") from exc
    return tuple(values)


def _located(line: int | None, reason: str) -> InvalidCircuit:
    if line is None:
        return InvalidCircuit(reason)
    return _at(line, reason)


def describe(circuit: NormalizedCircuit) -> dict[str, Any]:
    """A short summary (counts per service type) for logs and job listings."""
    per_type: dict[str, int] = {}
    for op in circuit.operations:
        per_type[op.service_type] = per_type.get(op.service_type, 0) + 1
    return {
        "format": circuit.format,
        "num_qubits": circuit.num_qubits,
        "num_operations": len(circuit.operations),
        "num_measurements": len(circuit.measurements),
        "service_types": per_type,
    }
