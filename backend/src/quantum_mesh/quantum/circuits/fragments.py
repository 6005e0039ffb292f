"""Group operations into fragments: one node call each.

Greedy in program order: an operation joins the fragment that last touched one of its
qubits when that fragment has the same service type (or ``fuse`` allows the mix of
services), has room, and nothing depends on it yet; otherwise it opens a new fragment.
"Nothing depends on it yet" is what keeps the fragment graph acyclic: a new edge can only
point *into* a fragment with no successors, so no cycle can close through it. Fragments are
then listed in a topological order.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from quantum_mesh.quantum.circuits.model import Fragment, NormalizedCircuit, Operation


@dataclass(slots=True)
class _Group:
    service_type: str
    #: Every service of its operations, in the order first seen (``service_type`` first).
    services: list[str] = field(default_factory=list)
    op_ids: list[int] = field(default_factory=list)
    qubits: set[int] = field(default_factory=set)
    preds: set[int] = field(default_factory=set)
    succs: set[int] = field(default_factory=set)


def build_fragments(
    circuit: NormalizedCircuit,
    *,
    max_ops_per_fragment: int = 16,
    max_qubits_per_fragment: int = 4,
    fuse: Callable[[frozenset[str]], bool] | None = None,
) -> list[Fragment]:
    """Partition the circuit's operations into fragments listed in a topological order.

    Args:
        circuit: the parsed circuit.
        max_ops_per_fragment: most operations in one fragment.
        max_qubits_per_fragment: most qubits one fragment may span (bounds the size of the
            fragment operator a node returns, 4**k entries); a single wider operation still
            forms a fragment of its own.
        fuse: whether one fragment may hold operations of these services (a node offers
            them all): an operation then joins its predecessor's fragment across service
            types, and a chain such as ``h; cx`` is one node call instead of two. ``None``:
            one service type per fragment.

    Returns:
        Fragments ``f0, f1, ...``; executing them in list order applies every operation
        exactly once, in an order equivalent to the program's. ``depends_on`` lists the
        fragments that must finish first.
    """
    if max_ops_per_fragment < 1 or max_qubits_per_fragment < 1:
        raise ValueError("max_ops_per_fragment and max_qubits_per_fragment must be >= 1")
    groups: list[_Group] = []
    last_on_qubit: dict[int, int] = {}
    for op in circuit.operations:
        preds = {last_on_qubit[q] for q in op.qubits if q in last_on_qubit}
        target = _joinable(groups, preds, op, max_ops_per_fragment, max_qubits_per_fragment, fuse)
        if target is None:
            groups.append(_Group(service_type=op.service_type))
            target = len(groups) - 1
        for pred in preds - {target}:
            groups[pred].succs.add(target)
            groups[target].preds.add(pred)
        group = groups[target]
        if op.service_type not in group.services:
            group.services.append(op.service_type)
        group.op_ids.append(op.op_id)
        group.qubits.update(op.qubits)
        for q in op.qubits:
            last_on_qubit[q] = target
    return _in_topological_order(groups)


def _joinable(
    groups: list[_Group],
    preds: set[int],
    op: Operation,
    max_ops: int,
    max_qubits: int,
    fuse: Callable[[frozenset[str]], bool] | None,
) -> int | None:
    for index in sorted(preds):
        group = groups[index]
        if (
            _services_mix(group, op.service_type, fuse)
            and not group.succs
            and len(group.op_ids) < max_ops
            and len(group.qubits.union(op.qubits)) <= max_qubits
        ):
            return index
    return None


def _services_mix(
    group: _Group, service_type: str, fuse: Callable[[frozenset[str]], bool] | None
) -> bool:
    if service_type in group.services:
        return True
    return fuse is not None and fuse(frozenset([*group.services, service_type]))


def _in_topological_order(groups: list[_Group]) -> list[Fragment]:
    """Kahn's algorithm, ties broken by first operation, so the order follows the program."""
    remaining = {i: len(g.preds) for i, g in enumerate(groups)}
    ready = [i for i, n in remaining.items() if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        current = heapq.heappop(ready)
        order.append(current)
        for succ in groups[current].succs:
            remaining[succ] -= 1
            if remaining[succ] == 0:
                heapq.heappush(ready, succ)
    if len(order) != len(groups):  # pragma: no cover - excluded by construction
        raise RuntimeError("fragment graph has a cycle")
    position = {g: pos for pos, g in enumerate(order)}
    return [
        Fragment(
            fragment_id=f"f{position[g]}",
            service_type=groups[g].service_type,
            qubits=tuple(sorted(groups[g].qubits)),
            operation_ids=tuple(groups[g].op_ids),
            depends_on=tuple(f"f{p}" for p in sorted(position[x] for x in groups[g].preds)),
            services=tuple(groups[g].services) if len(groups[g].services) > 1 else (),
        )
        for g in order
    ]
