"""Input limits, checked on the program text before Qiskit builds anything.

Qiskit builds a declared register whole (``qreg q[10000000]`` is ten million qubit objects
before any check can run), and a few hundred bytes of nested gate definitions expand to
hundreds of thousands of operations. :func:`prescan` reads the statements
(:mod:`.source`) and refuses, at the line where the limit is passed:

- more qubits (``max_qubits``) or classical bits (``max_clbits``) declared in all registers
  (physical qubits ``$n`` count as n + 1);
- a gate definition nested deeper than ``max_gate_depth`` (a definition calling only
  library gates has depth 1), or one that alone expands to more than ``max_operations``;
- more than ``max_operations`` operations, counted after gate-definition expansion and
  register broadcasting, measurements included; a ``ctrl(n) @`` modifier multiplies the
  count by 5n² (at least 4; one or two controls on a library gate by 1), a ``pow(k) @`` on a
  gate of w ≥ 2 qubits counts at least 4^w (Qiskit builds and synthesises its 2^w by 2^w
  matrix). Library gates count one each here; the parser then counts their real expansion
  exactly, and stops at the limit. Every other statement but the header, the include and
  the register declarations counts one (a gate definition one per statement of its body),
  and so does each modifier, so the text Qiskit reads is bounded too;
- a gate applied to more operands than ``max_qubits`` (never valid: operands are distinct);
- an ``include`` of anything but the dialect's standard file, and the statements the model
  refuses anyway (``reset``, classical control, loops).

Every refusal is an :class:`~quantum_mesh.errors.InvalidCircuit` whose message names the
limit, its maximum and the value found, with ``details = {"limit", "max", "found", "line"}``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from quantum_mesh.errors import InvalidCircuit
from quantum_mesh.quantum.circuits import source

MAX_QUBITS = "max_circuit_qubits"
MAX_CLBITS = "max_circuit_clbits"
MAX_OPERATIONS = "max_circuit_operations"
MAX_GATE_DEPTH = "max_gate_definition_depth"
MAX_FRAGMENTS = "max_circuit_fragments"

DEFAULT_MAX_QUBITS = 20
DEFAULT_MAX_CLBITS = 64
DEFAULT_MAX_OPERATIONS = 20_000
DEFAULT_MAX_GATE_DEPTH = 8
DEFAULT_MAX_FRAGMENTS = 2_000

#: Counts saturate here: a hostile nesting cannot make the pre-scan do big-integer work.
_CAP = 10**15
#: ``pow(k) @`` on a gate wider than this counts as the cap (4**25 is past it anyway).
_MAX_POW_WIDTH = 25
_INCLUDE_RE = re.compile(r'\Ainclude\s*"([^"]*)"\s*\Z')
_GATE_RE = re.compile(
    r"\Agate\s+([A-Za-z_$][\w$]*)\s*(?:\([^)]*\))?([^{]*)\{(.*)\}\s*\Z", re.DOTALL
)
_PHYSICAL_QUBIT_RE = re.compile(r"(?<![\w$])\$(\d+)")
_ZERO_COST = {"barrier", "gphase"}


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds one parse is held to (keyword arguments of :func:`parse_circuit`)."""

    max_qubits: int = DEFAULT_MAX_QUBITS
    max_clbits: int = DEFAULT_MAX_CLBITS
    max_operations: int = DEFAULT_MAX_OPERATIONS
    max_gate_depth: int = DEFAULT_MAX_GATE_DEPTH


def exceeded(
    limit: str, what: str, *, found: int, maximum: int, line: int | None = None
) -> InvalidCircuit:
    """The refusal for a passed limit: ``what`` reads "circuit declares 30 qubits"."""
    where = "" if line is None else f"line {line}: "
    details: dict[str, object] = {"limit": limit, "max": maximum, "found": found}
    if line is not None:
        details["line"] = line
    return InvalidCircuit(
        f"{where}{what}, at most {maximum} are allowed ({limit} = {maximum})", details=details
    )


def check_fragments(count: int, *, max_fragments: int) -> None:
    """Refuse a circuit whose fragment plan has more than ``max_fragments`` fragments (each
    fragment is one node call; a long chain of them runs one after the other)."""
    if count > max_fragments:
        raise exceeded(
            MAX_FRAGMENTS,
            f"circuit needs {count} fragments",
            found=count,
            maximum=max_fragments,
        )


@dataclass(slots=True)
class _Gate:
    cost: int
    depth: int


class _Scan:
    def __init__(self, fmt: str, limits: Limits) -> None:
        self.fmt = fmt
        self.limits = limits
        self.qubits = 0
        #: One past the highest physical qubit (``$n``) used: Qiskit builds all of them.
        self.physical = 0
        self.clbits = 0
        self.operations = 0
        self.registers: dict[str, int] = {}
        self.gates: dict[str, _Gate] = {}

    def statement(self, st: source.Statement, *, nesting: int = 0) -> None:
        keyword = st.keyword
        if keyword in source.FORBIDDEN:
            raise _at(st.line, source.FORBIDDEN[keyword])
        if keyword in source.BRANCH_KEYWORDS:
            self.branch(st, nesting)
            return
        if keyword == "reset":
            self.count(self.width(st.text[len("reset") :].strip()), st.line)
            return
        if keyword == "OPENQASM":
            return
        if keyword == "include":
            self.include(st)
            return
        if keyword == "gate":
            self.define(st)
            return
        if "$" in st.text:
            self.physical_qubits(st)
        if keyword in source.REGISTER_KEYWORDS:
            if not self.register(st):
                self.count(1, st.line)
        elif keyword in source.NON_INSTRUCTION:
            self.count(1, st.line)
            return
        if re.search(r"\bmeasure\b", st.text):
            self.count(self.measured(st.text), st.line)
        elif keyword not in source.REGISTER_KEYWORDS:
            call = source.parse_call(st.text)
            if call is None:
                self.count(1, st.line)
            else:
                self.check_arity(call, st.line)
                width = max((self.width(op) for op in call.operands), default=1)
                self.count(_saturate(self.cost(call) * width), st.line)

    def branch(self, st: source.Statement, nesting: int) -> None:
        """``if``/``else``: each statement of its body counted as if it stood alone."""
        if nesting >= MAX_BRANCH_NESTING:
            raise _at(st.line, f"'if' nests deeper than {MAX_BRANCH_NESTING} levels")
        self.count(1, st.line)
        body = _branch_body(st.text)
        for inner in source.iter_statements(body):
            line = st.line + inner.line - 1
            self.statement(
                source.Statement(line=line, text=inner.text, keyword=inner.keyword),
                nesting=nesting + 1,
            )

    def include(self, st: source.Statement) -> None:
        found = _INCLUDE_RE.match(st.text)
        standard = source.standard_include(self.fmt)
        if found is None or found.group(1) != standard:
            raise _at(st.line, f'only include "{standard}" is supported')

    def register(self, st: source.Statement) -> bool:
        """Count a register declaration; ``False`` when the statement declares none."""
        register = source.declared_register(st)
        if register is None:
            if st.keyword in {"input", "output"}:
                return False
            raise _at(st.line, "cannot read this register declaration")
        if register.size is None:
            raise _at(st.line, "a register size must be a constant integer")
        size = max(register.size, 0)
        if register.quantum:
            self.registers[register.name] = size
            self.qubits += size
            if self.qubits > self.limits.max_qubits:
                raise exceeded(
                    MAX_QUBITS,
                    f"circuit declares {self.qubits} qubits",
                    found=self.qubits,
                    maximum=self.limits.max_qubits,
                    line=st.line,
                )
        else:
            self.clbits += size
            if self.clbits > self.limits.max_clbits:
                raise exceeded(
                    MAX_CLBITS,
                    f"circuit declares {self.clbits} classical bits",
                    found=self.clbits,
                    maximum=self.limits.max_clbits,
                    line=st.line,
                )
        return True

    def physical_qubits(self, st: source.Statement) -> None:
        used = [int(n) if len(n) <= 15 else _CAP for n in _PHYSICAL_QUBIT_RE.findall(st.text)]
        self.physical = max(self.physical, max(used, default=-1) + 1)
        found = self.qubits + self.physical
        if found > self.limits.max_qubits:
            raise exceeded(
                MAX_QUBITS,
                f"circuit uses {found} qubits",
                found=found,
                maximum=self.limits.max_qubits,
                line=st.line,
            )

    def define(self, st: source.Statement) -> None:
        found = _GATE_RE.match(st.text)
        if found is None:
            self.count(1, st.line)
            return  # Qiskit reports the malformed definition
        name, arguments, body = found.group(1), found.group(2), found.group(3)
        arity = len([a for a in arguments.split(",") if a.strip()])
        if arity > self.limits.max_qubits:  # it could never be applied, and Qiskit builds it
            raise exceeded(
                MAX_QUBITS,
                f"gate '{name}' acts on {arity} qubits",
                found=arity,
                maximum=self.limits.max_qubits,
                line=st.line,
            )
        cost, inner_depth, statements = 0, 0, 1
        for text in body.replace("{", ";").replace("}", ";").split(";"):
            if not text.strip():
                continue
            statements += 1
            call = source.parse_call(text.strip())
            if call is None or call.name in _ZERO_COST:
                continue
            self.check_arity(call, st.line)
            callee = self.gates.get(call.name)
            if callee is not None:
                inner_depth = max(inner_depth, callee.depth)
            cost = _saturate(cost + self.cost(call))
            if cost > self.limits.max_operations:  # no call of it could pass
                raise exceeded(
                    MAX_OPERATIONS,
                    f"gate '{name}' expands to {cost} operations",
                    found=cost,
                    maximum=self.limits.max_operations,
                    line=st.line,
                )
        depth = inner_depth + 1
        if depth > self.limits.max_gate_depth:
            raise exceeded(
                MAX_GATE_DEPTH,
                f"gate '{name}' nests gate definitions {depth} deep",
                found=depth,
                maximum=self.limits.max_gate_depth,
                line=st.line,
            )
        self.gates[name] = _Gate(cost=cost, depth=depth)
        self.count(statements, st.line)

    def check_arity(self, call: source.Call, line: int) -> None:
        """A gate applied to more operands than the circuit may have qubits is never valid
        (its operands must be distinct), and would only cost the parser time to find out."""
        if len(call.operands) > self.limits.max_qubits:
            raise exceeded(
                MAX_QUBITS,
                f"'{call.name}' is applied to {len(call.operands)} operands",
                found=len(call.operands),
                maximum=self.limits.max_qubits,
                line=line,
            )

    def cost(self, call: source.Call) -> int:
        """Operations one application of the call expands to (no broadcasting); each
        modifier also counts one, for the parser's sake."""
        gate = self.gates.get(call.name)
        base = 1 if gate is None else gate.cost
        if not call.modifiers:
            return base
        modified = _modified_cost(base, call.modifiers, len(call.operands), library=gate is None)
        return _saturate(modified + len(call.modifiers))

    def width(self, operand: str) -> int:
        """How many times a register operand broadcasts (an upper bound where the text does
        not tell: an alias or a slice counts as its whole register, or every qubit)."""
        operand = operand.strip()
        name = operand.split("[", 1)[0].strip()
        everything = max(self.qubits + self.physical, 1)
        if "[" not in operand:
            return self.registers.get(name, everything)
        index = operand[operand.index("[") + 1 :]
        if any(ch in index for ch in ":,{"):
            return self.registers.get(name, everything)
        return 1

    def measured(self, text: str) -> int:
        found = re.search(r"\bmeasure\s+(.+?)\s*(?:->.*)?\Z", text, re.DOTALL)
        return self.width(found.group(1)) if found else 1

    def count(self, operations: int, line: int) -> None:
        self.operations = _saturate(self.operations + operations)
        if self.operations > self.limits.max_operations:
            raise exceeded(
                MAX_OPERATIONS,
                f"circuit expands to {self.operations} operations",
                found=self.operations,
                maximum=self.limits.max_operations,
                line=line,
            )


#: ``if`` inside ``if`` at most this deep.
MAX_BRANCH_NESTING = 8


def _branch_body(text: str) -> str:
    """What an ``if (...)``/``else`` guards: the ``{...}`` block, else the one statement after
    the condition (OpenQASM 2's ``if (c==1) x q[0];``)."""
    brace = text.find("{")
    if brace >= 0:
        return text[brace + 1 : text.rfind("}")] if text.rfind("}") > brace else text[brace + 1 :]
    if text.startswith("else"):
        return text[len("else") :]
    depth = 0
    for index, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return text[index + 1 :]
    return ""


def prescan(
    statements: Iterable[source.Statement], fmt: str, limits: Limits
) -> list[source.Statement]:
    """Refuse a program that passes a limit, from its statements alone (see the module).
    Statements are read one at a time, so a refusal comes as soon as a limit is passed.

    Returns:
        The statements, all read.

    Raises:
        InvalidCircuit: a limit passed, a register size that is not a constant, a
            non-standard include, or a statement the circuit model cannot represent.
    """
    scan = _Scan(fmt, limits)
    read: list[source.Statement] = []
    for st in statements:
        scan.statement(st)
        read.append(st)
    return read


def _modified_cost(
    base: int, modifiers: tuple[tuple[str, str | None], ...], arity: int, *, library: bool
) -> int:
    """The cost of ``base`` under its modifiers, applied innermost first: ``ctrl(n)``
    multiplies by 5n² (at least 4; a library gate with one or two controls stays as it is),
    ``pow`` on a w-qubit gate costs at least 4^w (Qiskit synthesises its matrix)."""
    counts = [_controls(kind, argument, arity) for kind, argument in modifiers]
    width = max(arity - sum(counts), 1)
    cost, pending = base, 0
    for (kind, _argument), controls in zip(reversed(modifiers), reversed(counts), strict=True):
        if controls:
            pending += controls
            width += controls
        elif kind == "pow":
            cost, pending, library = _controlled(cost, pending, library=library), 0, False
            if width >= 2:
                cost = max(cost, 4 ** min(width, _MAX_POW_WIDTH))
    return _saturate(_controlled(cost, pending, library=library))


def _controls(kind: str, argument: str | None, arity: int) -> int:
    if kind not in {"ctrl", "negctrl"}:
        return 0
    n = 1 if argument is None else source.constant_int(argument)
    return max(arity - 1, 1) if n is None or n < 1 else min(n, arity)


def _controlled(cost: int, controls: int, *, library: bool) -> int:
    if controls == 0 or (library and controls <= 2):
        return cost
    return _saturate(cost * max(4, 5 * controls * controls))


def _saturate(value: int) -> int:
    return min(value, _CAP)


def _at(line: int, reason: str) -> InvalidCircuit:
    return InvalidCircuit(f"line {line}: {reason}", details={"line": line})
