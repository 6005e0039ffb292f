"""Light source-level reading of OpenQASM text: version, statements and their lines.

Qiskit's parsers do the real parsing; this module only knows enough about the text to
(1) prepare it for them (alias definitions injected on the version line, so no line number
moves) and (2) tell which source line each emitted instruction came from, which Qiskit's
circuits do not record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quantum_mesh.errors import InvalidCircuit
from quantum_mesh.quantum.circuits.gates import ALIAS_DEFINITIONS

_VERSION_RE = re.compile(r"\A\s*OPENQASM\s+([0-9]+(?:\.[0-9]+)?)\s*;")
_IDENT_RE = re.compile(r"[A-Za-z_$][\w$]*")
_MODIFIERS_RE = re.compile(r"\A(?:\s*(?:inv|ctrl|negctrl|pow)\s*(?:\([^)]*\))?\s*@)*\s*")
_QREG_RE = re.compile(r"\Aqreg\s+([A-Za-z_][\w]*)\s*\[\s*(\d+)\s*\]")
_QUBIT_RE = re.compile(r"\Aqubit\s*(?:\[\s*(\d+)\s*\])?\s+([A-Za-z_][\w]*)")
_MEASURE_RE = re.compile(r"\bmeasure\s+(.+?)\s*(?:->.*)?\Z", re.DOTALL)
_STANDARD_INCLUDE = {"qasm2": "qelib1.inc", "qasm3": "stdgates.inc"}

#: Statements that declare or configure but emit no instruction.
_NON_INSTRUCTION = {
    "OPENQASM",
    "include",
    "creg",
    "bit",
    "gate",
    "opaque",
    "def",
    "defcal",
    "defcalgrammar",
    "cal",
    "input",
    "output",
    "const",
    "let",
    "int",
    "uint",
    "float",
    "angle",
    "bool",
    "duration",
    "stretch",
    "complex",
    "array",
    "extern",
    "pragma",
    "barrier",
    "gphase",
}
#: Statements the circuit model cannot represent, with the reason given to the user.
FORBIDDEN = {
    "reset": "reset is not supported",
    "if": "classical control ('if') is not supported",
    "else": "classical control ('else') is not supported",
    "for": "control flow ('for') is not supported",
    "while": "control flow ('while') is not supported",
    "switch": "control flow ('switch') is not supported",
    "box": "'box' is not supported",
    "break": "control flow ('break') is not supported",
    "continue": "control flow ('continue') is not supported",
    "return": "'return' is not supported",
    "end": "'end' is not supported",
}


@dataclass(frozen=True, slots=True)
class Statement:
    """One top-level statement: its first line, comment-free text and leading keyword."""

    line: int
    text: str
    keyword: str


def strip_comments(text: str) -> str:
    """Replace comments by spaces (newlines kept) so offsets and lines stay valid."""
    out = list(text)
    i, n = 0, len(text)
    in_string = False
    while i < n:
        ch = text[i]
        if in_string:
            in_string = ch != '"'
            i += 1
        elif ch == '"':
            in_string = True
            i += 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            for j in range(i, end):
                if text[j] != "\n":
                    out[j] = " "
            i = end
        else:
            i += 1
    return "".join(out)


def split_statements(clean: str) -> list[Statement]:
    """Split comment-free text into top-level statements (blocks ``{...}`` kept whole)."""
    statements: list[Statement] = []
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
                statements.append(_statement(start_line, clean[start : i + 1]))
                start = -1
        elif ch == ";" and depth == 0 and start >= 0:
            statements.append(_statement(start_line, clean[start:i]))
            start = -1
    if start >= 0 and clean[start:].strip():
        statements.append(_statement(start_line, clean[start:]))
    return statements


def _statement(line: int, text: str) -> Statement:
    text = " ".join(text.split())
    match = _IDENT_RE.match(text)
    return Statement(line=line, text=text, keyword=match.group(0) if match else "")


def detect_format(clean: str) -> tuple[str, re.Match[str] | None]:
    """``("qasm2" | "qasm3", version match or None)``; a missing header means OpenQASM 3
    unless the text declares ``qreg`` registers only.

    Raises:
        InvalidCircuit: an OPENQASM version other than 2 or 3.
    """
    match = _VERSION_RE.match(clean)
    if match is None:
        has_qreg = re.search(r"\bqreg\b", clean) is not None
        has_qubit = re.search(r"\bqubit\b", clean) is not None
        return ("qasm2" if has_qreg and not has_qubit else "qasm3"), None
    major = match.group(1).split(".")[0]
    if major not in {"2", "3"}:
        line = clean.count("\n", 0, match.start(1)) + 1
        raise InvalidCircuit(
            f"line {line}: unsupported OpenQASM version {match.group(1)}",
            details={"line": line},
        )
    return ("qasm2" if major == "2" else "qasm3"), match


def prepare_source(text: str, clean: str, fmt: str, version: re.Match[str] | None) -> str:
    """Text for Qiskit: the user's standard include blanked out and, on the version line,
    the standard include plus the alias definitions (so every line number is unchanged)."""
    chars = list(text)
    include = re.compile(r'include\s*"' + re.escape(_STANDARD_INCLUDE[fmt]) + r'"\s*;')
    for found in include.finditer(clean):
        for j in range(found.start(), found.end()):
            chars[j] = " "
    body = "".join(chars)
    prelude = f'include "{_STANDARD_INCLUDE[fmt]}"; {ALIAS_DEFINITIONS} '
    if version is None:
        header = "OPENQASM 2.0; " if fmt == "qasm2" else "OPENQASM 3.0; "
        return header + prelude + body
    end = version.end()
    return body[:end] + " " + prelude + body[end:]


def register_sizes(statements: list[Statement]) -> dict[str, tuple[int, int]]:
    """Quantum registers in declaration order: name -> (size, declaring line)."""
    sizes: dict[str, tuple[int, int]] = {}
    for st in statements:
        qreg = _QREG_RE.match(st.text)
        if qreg:
            sizes[qreg.group(1)] = (int(qreg.group(2)), st.line)
            continue
        qubit = _QUBIT_RE.match(st.text)
        if qubit:
            sizes[qubit.group(2)] = (int(qubit.group(1) or 1), st.line)
    return sizes


def instruction_lines(statements: list[Statement]) -> list[int] | None:
    """The source line of every instruction Qiskit emits (barriers excluded), in order.

    Broadcasting (``h q;`` on a register) emits one instruction per element. Returns ``None``
    when a statement's instruction count cannot be told from the text (slices, unknown names).
    """
    sizes = {name: size for name, (size, _) in register_sizes(statements).items()}
    lines: list[int] = []
    for st in statements:
        declares = st.keyword in _NON_INSTRUCTION or st.keyword in {"qreg", "qubit"}
        if declares and (st.keyword in {"gate", "def"} or "measure" not in st.text.split()):
            continue
        count = _instruction_count(st, sizes)
        if count is None:
            return None
        lines.extend([st.line] * count)
    return lines


def _instruction_count(st: Statement, sizes: dict[str, int]) -> int | None:
    if re.search(r"\bmeasure\b", st.text):
        found = _MEASURE_RE.search(st.text)
        return _operand_size(found.group(1), sizes) if found else None
    rest = _MODIFIERS_RE.sub("", st.text, count=1)
    name = _IDENT_RE.match(rest)
    if name is None:
        return None
    rest = rest[name.end() :].lstrip()
    if rest.startswith("("):
        close = _matching_paren(rest)
        if close is None:
            return None
        rest = rest[close + 1 :]
    operands = _split_top_level(rest)
    counts = [_operand_size(op, sizes) for op in operands]
    if not counts or any(c is None for c in counts):
        return None
    return max(c for c in counts if c is not None)


def _operand_size(operand: str, sizes: dict[str, int]) -> int | None:
    operand = operand.strip()
    if "[" in operand:
        inner = operand[operand.index("[") + 1 : operand.rindex("]")] if "]" in operand else ":"
        return None if (":" in inner or "," in inner) else 1
    return sizes.get(operand)


def _matching_paren(text: str) -> int | None:
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return i
    return None


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        depth += (ch in "[(") - (ch in "])")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def find_bad_operand(statements: list[Statement]) -> tuple[int, str] | None:
    """A best-effort ``(line, reason)`` for an out-of-range index or a repeated qubit, used when
    Qiskit reports such an error without a position."""
    sizes = {name: size for name, (size, _) in register_sizes(statements).items()}
    for st in statements:
        if st.keyword in _NON_INSTRUCTION or st.keyword in {"qreg", "qubit"}:
            continue
        seen: set[str] = set()
        for operand in re.findall(r"([A-Za-z_][\w]*)\s*\[\s*(\d+)\s*\]", st.text):
            name, index = operand
            if name in sizes and int(index) >= sizes[name]:
                return st.line, f"index {index} is out of range for register '{name}'"
            key = f"{name}[{int(index)}]"
            if key in seen and not re.search(r"\bmeasure\b", st.text):
                return st.line, f"qubit {key} is used twice in one gate"
            seen.add(key)
    return None
