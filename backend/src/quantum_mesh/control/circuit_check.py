"""A circuit's check at submit: parsed and bounded in a validation process, before any job
exists (a bad circuit is a 400, never a FAILED job). Used by the circuit workload and by the
API front, which checks submits in a process apart from the job runtime."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from quantum_mesh.config import Settings
from quantum_mesh.control.compute import ComputePools
from quantum_mesh.quantum.circuits import limits
from quantum_mesh.quantum.circuits.fragments import build_fragments
from quantum_mesh.quantum.circuits.model import NormalizedCircuit
from quantum_mesh.quantum.circuits.parse import parse_circuit

#: Parsed circuits kept between a job's submit and its compile step (most entries, and most
#: operations over all entries: a full cache of 20,000-operation circuits is about 30 MB).
PARSED_CACHE_ENTRIES = 64
PARSED_CACHE_OPERATIONS = 200_000

#: Submitted texts up to this length are looked up among circuits validated before.
VALIDATED_LOOKUP_MAX_CHARS = 65_536


def check_circuit(
    text: str,
    *,
    max_qubits: int = limits.DEFAULT_MAX_QUBITS,
    max_clbits: int = limits.DEFAULT_MAX_CLBITS,
    max_operations: int = limits.DEFAULT_MAX_OPERATIONS,
    max_gate_depth: int = limits.DEFAULT_MAX_GATE_DEPTH,
    max_fragments: int = limits.DEFAULT_MAX_FRAGMENTS,
) -> NormalizedCircuit:
    """Parse and bound a circuit at submit (in a validation process); returns the parsed
    circuit, which pickles back cheaply (a 24,000-operation circuit: 0.75 MB, a fraction of
    a second against seconds to parse) so the job's compile step need not parse again."""
    circuit = parse_circuit(
        text,
        max_qubits=max_qubits,
        max_clbits=max_clbits,
        max_operations=max_operations,
        max_gate_depth=max_gate_depth,
    )
    limits.check_fragments(len(build_fragments(circuit)), max_fragments=max_fragments)
    return circuit


def circuit_limits(settings: Settings) -> dict[str, int]:
    """The parser's keyword limits from the ``QMESH_MAX_CIRCUIT_*`` settings."""
    return {
        "max_qubits": settings.max_circuit_qubits,
        "max_clbits": settings.max_circuit_clbits,
        "max_operations": settings.max_circuit_operations,
        "max_gate_depth": settings.max_gate_definition_depth,
    }


class ParsedCircuits:
    """A small LRU of parsed circuits keyed by the SHA-256 of their text, bounded in entries
    and in operations. A miss (after a restart, or an eviction) only means parsing again."""

    def __init__(
        self, *, entries: int = PARSED_CACHE_ENTRIES, operations: int = PARSED_CACHE_OPERATIONS
    ) -> None:
        self._entries = entries
        self._operations = operations
        self._held = 0
        self._items: OrderedDict[str, NormalizedCircuit] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, text: str) -> NormalizedCircuit | None:
        key = _text_hash(text)
        circuit = self._items.get(key)
        if circuit is not None:
            self._items.move_to_end(key)
        return circuit

    def put(self, circuit: NormalizedCircuit) -> None:
        size = len(circuit.operations)
        if size > self._operations:
            return
        old = self._items.pop(circuit.source_hash, None)
        if old is not None:
            self._held -= len(old.operations)
        self._items[circuit.source_hash] = circuit
        self._held += size
        while len(self._items) > self._entries or self._held > self._operations:
            _key, evicted = self._items.popitem(last=False)
            self._held -= len(evicted.operations)


def _text_hash(text: str) -> str:
    # The same key as NormalizedCircuit.source_hash.
    return hashlib.sha256(text.encode()).hexdigest()


class CircuitValidator:
    """Checks submitted circuits in a validation process of ``compute``, bounded by the
    ``QMESH_MAX_CIRCUIT_*`` settings, and remembers the circuits that passed."""

    def __init__(self, compute: ComputePools, settings: Settings) -> None:
        self.compute = compute
        self.limits = circuit_limits(settings)
        self.max_fragments = settings.max_circuit_fragments
        #: Circuits that passed ``check_circuit``.
        self.validated = ParsedCircuits()

    async def check(self, text: str) -> NormalizedCircuit:
        """The parsed circuit, or ``InvalidCircuit``. A text validated already (the same
        circuit with another seed, a load of one circuit) is not sent to the validation
        process again: the limits are the process's own, so the answer cannot change. Only
        small texts are looked up, so hashing stays off the loop's budget."""
        circuit = self.validated.get(text) if len(text) <= VALIDATED_LOOKUP_MAX_CHARS else None
        if circuit is None:
            circuit = await self.compute.isolated(
                check_circuit, text, **self.limits, max_fragments=self.max_fragments
            )
            self.validated.put(circuit)
        return circuit
