"""Light source-level reading of OpenQASM text: version, statements and their lines.

Qiskit's parsers do the real parsing; this module only knows enough about the text to
(1) prepare it for them (alias definitions injected on the version line, so no line number
moves), (2) tell which source line each emitted instruction came from, which Qiskit's
circuits do not record, and (3) read declarations and gate calls for the pre-scan of
:mod:`.limits`, which bounds a program before Qiskit builds anything. Everything here is
linear in the text and builds nothing bigger than the text.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass

from quantum_mesh.errors import InvalidCircuit
from quantum_mesh.quantum.circuits.gates import ALIAS_DEFINITIONS

_VERSION_RE = re.compile(r"\A\s*OPENQASM\s+([0-9]+(?:\.[0-9]+)?)\s*;")
_IDENT_RE = re.compile(r"[A-Za-z_$][\w$]*")
_MODIFIERS_RE = re.compile(r"\A(?:\s*(?:inv|ctrl|negctrl|pow)\s*(?:\([^)]*\))?\s*@)*\s*")
_MEASURE_RE = re.compile(r"\bmeasure\s+(.+?)\s*(?:->.*)?\Z", re.DOTALL)
_STANDARD_INCLUDE = {"qasm2": "qelib1.inc", "qasm3": "stdgates.inc"}
#: Strings (kept whole, so "//" inside one is no comment) and comments (blanked).
_LEXEME_RE = re.compile(r'"[^"]*"?|//[^\n]*|/\*.*?(?:\*/|\Z)', re.DOTALL)
_NOT_NEWLINE_RE = re.compile(r"[^\n]")
#: A statement end (with the empty statements after it), an opening run, a closing brace.
_DELIMITER_RE = re.compile(r";[\s;]*|\{[\s{]*|\}")
_NON_SPACE_RE = re.compile(r"\S")
_MODIFIER_RE = re.compile(r"\s*(inv|ctrl|negctrl|pow)\b\s*")
_AT_RE = re.compile(r"\s*@")
_REGISTER_RE = re.compile(
    r"\A(?:(?:input|output)\s+)?(?:"
    r"(?P<old>qreg|creg)\s+(?P<old_name>[A-Za-z_$][\w$]*)\s*(?:\[(?P<old_size>[^\]]*)\])?"
    r"|(?P<new>qubit|bit)\s*(?:\[(?P<new_size>[^\]]*)\])?\s*(?P<new_name>[A-Za-z_$][\w$]*))"
)
#: Keywords that may start a register declaration.
REGISTER_KEYWORDS = frozenset({"qreg", "creg", "qubit", "bit", "input", "output"})
_QUANTUM_REGISTER = {"qreg", "qubit"}
#: Longest register-size expression evaluated (a designator is a short constant).
_MAX_DESIGNATOR_CHARS = 64
_DESIGNATOR_CHARS_RE = re.compile(r"\A[0-9A-Fa-fxXoObB_+\-*/%()<>&|^~\s]*\Z")
#: Integers past this are clamped while evaluating a designator (its sign kept).
_HUGE = 10**40

#: Statements that declare or configure but emit no instruction.
NON_INSTRUCTION = {
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
#: What dynamic circuits may use (run whole on a node offering ``measurement_feedforward``).
DYNAMIC_SUPPORTED = "dynamic circuits may use mid-circuit measurement, reset and 'if'/'else'"
#: Statements the service cannot run, with the reason given to the user.
FORBIDDEN = {
    "for": f"control flow ('for') is not supported: {DYNAMIC_SUPPORTED}",
    "while": f"control flow ('while') is not supported: {DYNAMIC_SUPPORTED}",
    "switch": f"control flow ('switch') is not supported: {DYNAMIC_SUPPORTED}",
    "box": f"'box' is not supported: {DYNAMIC_SUPPORTED}",
    "break": f"control flow ('break') is not supported: {DYNAMIC_SUPPORTED}",
    "continue": f"control flow ('continue') is not supported: {DYNAMIC_SUPPORTED}",
    "return": "'return' is not supported",
    "end": "'end' is not supported",
}
#: Statements whose body holds further statements (``if (...) { ... } else { ... }``).
BRANCH_KEYWORDS = frozenset({"if", "else"})


@dataclass(frozen=True, slots=True)
class Statement:
    """One top-level statement: its first line, comment-free text and leading keyword."""

    line: int
    text: str
    keyword: str


def strip_comments(text: str) -> str:
    """Replace comments by spaces (newlines kept) so offsets and lines stay valid."""
    return _LEXEME_RE.sub(_blank_comment, text)


def _blank_comment(found: re.Match[str]) -> str:
    lexeme = found.group(0)
    return lexeme if lexeme.startswith('"') else _NOT_NEWLINE_RE.sub(" ", lexeme)


def split_statements(clean: str) -> list[Statement]:
    """Split comment-free text into top-level statements (blocks ``{...}`` kept whole)."""
    return list(iter_statements(clean))


def iter_statements(clean: str) -> Iterator[Statement]:
    """:func:`split_statements`, one statement at a time (a pre-scan can stop early)."""
    depth, begin = 0, 0
    line, counted = 1, 0
    for found in _DELIMITER_RE.finditer(clean):
        ch, at = found.group(0)[0], found.start()
        if ch == "{":
            depth += found.group(0).count("{")
            continue
        if ch == "}":
            depth = max(depth - 1, 0)
            end = at + 1
        else:
            end = at
        if depth:
            continue
        first = _NON_SPACE_RE.search(clean, begin, end)
        if first is not None:
            line += clean.count("\n", counted, first.start())
            counted = first.start()
            yield _statement(line, clean[first.start() : end])
        begin = found.end() if ch == ";" else at + 1
    first = _NON_SPACE_RE.search(clean, begin)
    if first is not None:
        line += clean.count("\n", counted, first.start())
        yield _statement(line, clean[first.start() :])


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


@dataclass(frozen=True, slots=True)
class Register:
    """A declared register: ``quantum`` or classical, its size (``None`` when the size is not
    a constant integer expression) and the line declaring it."""

    quantum: bool
    name: str
    size: int | None
    line: int


def declared_register(st: Statement) -> Register | None:
    """The register a statement declares (``qreg``/``creg``, ``qubit``/``bit``, with or
    without a size, ``input``/``output`` bits), or ``None`` when it declares none."""
    if st.keyword not in REGISTER_KEYWORDS:
        return None
    found = _REGISTER_RE.match(st.text)
    if found is None:
        return None
    kind = found.group("old") or found.group("new")
    name = found.group("old_name") or found.group("new_name")
    designator = found.group("old_size") if found.group("old") else found.group("new_size")
    size = 1 if designator is None else constant_int(designator)
    return Register(quantum=kind in _QUANTUM_REGISTER, name=name, size=size, line=st.line)


def constant_int(expr: str) -> int | None:
    """The value of a short constant integer expression (literals in any base, ``+ - * / %
    ** << >> & | ^ ~`` and parentheses), or ``None`` when it is anything else. Values are
    clamped to about 1e40, so a designator like ``2**1000000`` costs nothing to read."""
    expr = expr.strip()
    if expr.isdigit():
        return int(expr) if len(expr) <= _MAX_DESIGNATOR_CHARS else _HUGE
    if not expr or len(expr) > _MAX_DESIGNATOR_CHARS or not _DESIGNATOR_CHARS_RE.match(expr):
        return None
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return _evaluate(tree.body)


def _evaluate(node: ast.expr) -> int | None:
    if isinstance(node, ast.Constant):
        return node.value if type(node.value) is int else None
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand)
        if value is None:
            return None
        unary = {ast.USub: -value, ast.UAdd: value, ast.Invert: ~value}
        return unary.get(type(node.op))
    if not isinstance(node, ast.BinOp):
        return None
    left, right = _evaluate(node.left), _evaluate(node.right)
    if left is None or right is None:
        return None
    return _clamp(_binary(node.op, left, right))


def _binary(op: ast.operator, left: int, right: int) -> int | None:
    if isinstance(op, ast.Add):
        return left + right
    if isinstance(op, ast.Sub):
        return left - right
    if isinstance(op, ast.Mult):
        return left * right
    if isinstance(op, (ast.Div, ast.FloorDiv, ast.Mod)):
        if right == 0:
            return None
        return left % right if isinstance(op, ast.Mod) else left // right
    if isinstance(op, ast.Pow):
        if right < 0:
            return None
        if abs(left) <= 1 or right * abs(left).bit_length() <= 160:
            return int(left**right)
        return _HUGE if left > 0 or right % 2 == 0 else -_HUGE
    if isinstance(op, (ast.LShift, ast.RShift)):
        if right < 0:
            return None
        if isinstance(op, ast.RShift):
            return left >> min(right, 256)
        return left << right if right <= 160 else (_HUGE if left > 0 else -_HUGE if left else 0)
    bitwise = {ast.BitAnd: left & right, ast.BitOr: left | right, ast.BitXor: left ^ right}
    return bitwise.get(type(op))


def _clamp(value: int | None) -> int | None:
    if value is None:
        return None
    return max(-_HUGE, min(_HUGE, value))


def register_sizes(statements: list[Statement]) -> dict[str, tuple[int, int]]:
    """Quantum registers in declaration order: name -> (size, declaring line)."""
    sizes: dict[str, tuple[int, int]] = {}
    for st in statements:
        register = declared_register(st)
        if register is not None and register.quantum and register.size is not None:
            sizes[register.name] = (register.size, register.line)
    return sizes


@dataclass(frozen=True, slots=True)
class Call:
    """A gate call: its modifiers outermost first (``("ctrl", "2")``, ``("inv", None)``), the
    gate's name and the operands."""

    modifiers: tuple[tuple[str, str | None], ...]
    name: str
    operands: tuple[str, ...]


def parse_call(text: str) -> Call | None:
    """Read ``[modifier @ ...] name[(params)] operand, ...``; ``None`` when it is not one."""
    modifiers: list[tuple[str, str | None]] = []
    pos = 0
    while True:
        keyword = _MODIFIER_RE.match(text, pos)
        if keyword is None:
            break
        after, argument = keyword.end(), None
        if text.startswith("(", after):
            close = _matching_paren(text[after:])
            if close is None:
                return None
            argument, after = text[after + 1 : after + close], after + close + 1
        at = _AT_RE.match(text, after)
        if at is None:
            break
        modifiers.append((keyword.group(1), argument))
        pos = at.end()
    called = _name_and_operands(text[pos:].lstrip())
    if called is None:
        return None
    name, rest = called
    return Call(tuple(modifiers), name, tuple(_split_top_level(rest)))


def standard_include(fmt: str) -> str:
    """The one include file a program of this dialect may name."""
    return _STANDARD_INCLUDE[fmt]


def instruction_lines(statements: list[Statement]) -> list[int] | None:
    """The source line of every instruction Qiskit emits (barriers excluded), in order.

    Broadcasting (``h q;`` on a register) emits one instruction per element. Returns ``None``
    when a statement's instruction count cannot be told from the text (slices, unknown names).
    """
    sizes = {name: size for name, (size, _) in register_sizes(statements).items()}
    lines: list[int] = []
    for st in statements:
        declares = st.keyword in NON_INSTRUCTION or st.keyword in {"qreg", "qubit"}
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
    called = _name_and_operands(_MODIFIERS_RE.sub("", st.text, count=1))
    if called is None:
        return None
    operands = _split_top_level(called[1])
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


def _name_and_operands(text: str) -> tuple[str, str] | None:
    """``name(params) operands`` -> (name, the operand text); None if it does not parse."""
    name = _IDENT_RE.match(text)
    if name is None:
        return None
    rest = text[name.end() :].lstrip()
    if rest.startswith("("):
        close = _matching_paren(rest)
        if close is None:
            return None
        rest = rest[close + 1 :]
    return name.group(0), rest


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
        if st.keyword in NON_INSTRUCTION or st.keyword in {"qreg", "qubit"}:
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
