"""The normalised circuit model shared by the parser, the planner and the nodes.

Everything here is a frozen dataclass of plain values so that a circuit, an operation or a
fragment can cross the wire (JSON) and the database unchanged: ``from_dict(x.to_dict()) == x``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Operation:
    """One gate application on absolute qubit indices.

    ``name`` is a Qiskit standard gate name (``"h"``, ``"cu1"``, ...) or a service alias
    (``"bell_pair"``, ``"cnot"``, ``"teleport"``, ``"syndrome_extraction"``, ``"distillation"``);
    ``line`` is the source line it came from, when the parser could tell.
    """

    op_id: int
    name: str
    qubits: tuple[int, ...]
    params: tuple[float, ...]
    service_type: str
    line: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "op_id": self.op_id,
            "name": self.name,
            "qubits": list(self.qubits),
            "params": list(self.params),
            "service_type": self.service_type,
            "line": self.line,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Operation:
        line = data.get("line")
        return cls(
            op_id=int(data["op_id"]),
            name=str(data["name"]),
            qubits=tuple(int(q) for q in data["qubits"]),
            params=tuple(float(p) for p in data.get("params", ())),
            service_type=str(data["service_type"]),
            line=None if line is None else int(line),
        )


@dataclass(frozen=True, slots=True)
class DynamicProgram:
    """A circuit with mid-circuit measurement, reset or classical ``if``: it cannot be cut
    into unitary fragments, so a node offering ``measurement_feedforward`` runs it whole,
    shot by shot, from this source (the text Qiskit parsed, service aliases declared)."""

    format: str
    source: str
    #: What makes it dynamic, for users and logs: ``mid_circuit_measurement``, ``reset``,
    #: ``classical_if``.
    features: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "source": self.source, "features": list(self.features)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DynamicProgram:
        return cls(
            format=str(data["format"]),
            source=str(data["source"]),
            features=tuple(str(f) for f in data.get("features", ())),
        )


@dataclass(frozen=True, slots=True)
class NormalizedCircuit:
    """A parsed circuit: unitary operations in program order plus final measurements.

    ``measurements`` holds ``(qubit, clbit)`` pairs; they are terminal by construction (the
    parser rejects gates on a qubit after it was measured), so they are not operations.
    """

    format: str
    num_qubits: int
    num_clbits: int
    operations: tuple[Operation, ...]
    measurements: tuple[tuple[int, int], ...]
    source_hash: str
    #: Set for a dynamic circuit (then ``operations`` and ``measurements`` are empty).
    dynamic: DynamicProgram | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "num_qubits": self.num_qubits,
            "num_clbits": self.num_clbits,
            "operations": [op.to_dict() for op in self.operations],
            "measurements": [[q, c] for q, c in self.measurements],
            "source_hash": self.source_hash,
            "dynamic": None if self.dynamic is None else self.dynamic.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalizedCircuit:
        return cls(
            format=str(data["format"]),
            num_qubits=int(data["num_qubits"]),
            num_clbits=int(data["num_clbits"]),
            operations=tuple(Operation.from_dict(op) for op in data["operations"]),
            measurements=tuple((int(q), int(c)) for q, c in data["measurements"]),
            source_hash=str(data["source_hash"]),
            dynamic=(
                None if data.get("dynamic") is None else DynamicProgram.from_dict(data["dynamic"])
            ),
        )


@dataclass(frozen=True, slots=True)
class Fragment:
    """A group of operations executed by one node in one call.

    ``qubits`` is the sorted union of the operations' qubits; ``depends_on`` lists the
    fragments that must have finished before this one may start. ``service_type`` is the
    service of the fragment's first operation; a *fused* fragment (``build_fragments``'
    ``fuse``) also holds operations of other services, and ``services`` then lists them all,
    ``service_type`` first: the node that runs it must offer every one.
    """

    fragment_id: str
    service_type: str
    qubits: tuple[int, ...]
    operation_ids: tuple[int, ...]
    depends_on: tuple[str, ...]
    services: tuple[str, ...] = ()

    @property
    def required_services(self) -> tuple[str, ...]:
        return self.services or (self.service_type,)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "fragment_id": self.fragment_id,
            "service_type": self.service_type,
            "qubits": list(self.qubits),
            "operation_ids": list(self.operation_ids),
            "depends_on": list(self.depends_on),
        }
        if len(self.required_services) > 1:
            data["services"] = list(self.services)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fragment:
        return cls(
            fragment_id=str(data["fragment_id"]),
            service_type=str(data["service_type"]),
            qubits=tuple(int(q) for q in data["qubits"]),
            operation_ids=tuple(int(i) for i in data["operation_ids"]),
            depends_on=tuple(str(f) for f in data.get("depends_on", ())),
            services=tuple(str(s) for s in data.get("services", ())),
        )
