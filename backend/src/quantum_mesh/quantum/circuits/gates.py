"""Gate vocabulary: Qiskit's standard gates, the service aliases, and their service types.

The parser, the node executor and the result builder all turn an operation *name* back into
Qiskit gates through :func:`append_operation`, so the three can never disagree on what an
alias means.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import cache

from qiskit.circuit import Gate, QuantumCircuit
from qiskit.circuit.library import (
    CXGate,
    HGate,
    SwapGate,
    get_standard_gate_name_mapping,
)

#: Service alias -> (arity, service type). Semantics follow the contract: ``bell_pair a, b`` is
#: ``h a; cx a, b``; ``cnot`` is ``cx``; ``teleport a, b`` is modelled as a logical swap;
#: ``syndrome_extraction`` and ``distillation`` leave the simulated state unchanged.
ALIASES: dict[str, tuple[int, str]] = {
    "bell_pair": (2, "bell_pair"),
    "cnot": (2, "cnot"),
    "teleport": (2, "teleportation"),
    "syndrome_extraction": (1, "syndrome_extraction"),
    "distillation": (1, "distillation"),
}

#: Gate definitions that declare the aliases to Qiskit's own parsers (both dialects accept
#: this text), written on one line so that injecting them shifts no line numbers.
ALIAS_DEFINITIONS = (
    "gate bell_pair a, b { h a; cx a, b; } "
    "gate cnot a, b { cx a, b; } "
    "gate teleport a, b { cx a, b; cx b, a; cx a, b; } "
    "gate syndrome_extraction a { } "
    "gate distillation a { }"
)

_NAMED_SERVICE_TYPES = {"cx": "cnot", "cz": "cz"}


@cache
def standard_gates() -> dict[str, Gate]:
    """Qiskit's standard unitary gates by name (measure, reset, delay, global phase excluded)."""
    return {
        name: gate
        for name, gate in get_standard_gate_name_mapping().items()
        if isinstance(gate, Gate) and gate.num_qubits >= 1
    }


def is_known_gate(name: str) -> bool:
    """Whether a node can apply an operation of this name."""
    return name in ALIASES or name in standard_gates()


def service_type_for(name: str, num_qubits: int) -> str:
    """The service a node must offer to run this operation."""
    if name in ALIASES:
        return ALIASES[name][1]
    if name in _NAMED_SERVICE_TYPES:
        return _NAMED_SERVICE_TYPES[name]
    if num_qubits == 1:
        return "single_qubit"
    if num_qubits == 2:
        return "two_qubit"
    return "multi_qubit"


def standard_gate(name: str, params: Sequence[float]) -> Gate:
    """A standard gate instance with concrete parameters.

    Raises:
        ValueError: unknown name or wrong number of parameters.
    """
    template = standard_gates().get(name)
    if template is None:
        raise ValueError(f"Unknown gate {name!r}: not a Qiskit standard gate or service alias")
    if len(params) != len(template.params):
        raise ValueError(
            f"Gate {name!r} takes {len(template.params)} parameter(s), got {len(params)}"
        )
    if not params:
        return template
    gate = copy.copy(template)
    gate.params = [float(p) for p in params]
    return gate


def expected_arity(name: str) -> int:
    """Number of qubits an operation of this (known) name acts on."""
    if name in ALIASES:
        return ALIASES[name][0]
    return standard_gates()[name].num_qubits


def append_operation(
    circuit: QuantumCircuit, *, name: str, params: Sequence[float], qubits: Sequence[int]
) -> None:
    """Append one operation (standard gate or alias) to ``circuit`` on the given indices.

    Raises:
        ValueError: unknown name, wrong parameter count, or wrong number of qubits.
    """
    if name in ALIASES:
        arity = ALIASES[name][0]
        if len(qubits) != arity:
            raise ValueError(f"Alias {name!r} acts on {arity} qubit(s), got {len(qubits)}")
        if params:
            raise ValueError(f"Alias {name!r} takes no parameters, got {len(params)}")
        if name == "bell_pair":
            circuit.append(HGate(), [qubits[0]])
            circuit.append(CXGate(), [qubits[0], qubits[1]])
        elif name == "cnot":
            circuit.append(CXGate(), [qubits[0], qubits[1]])
        elif name == "teleport":
            circuit.append(SwapGate(), [qubits[0], qubits[1]])
        # syndrome_extraction / distillation: orchestration steps, no unitary evolution.
        return
    gate = standard_gate(name, params)
    if len(qubits) != gate.num_qubits:
        raise ValueError(f"Gate {name!r} acts on {gate.num_qubits} qubit(s), got {len(qubits)}")
    circuit.append(gate, list(qubits))
