"""The Qiskit result builder: a circuit job's ``quantum_result`` from its final statevector.

The runtime says which node ran what and at which observed fidelity; this module says what
quantum state that execution implies: sampled counts, probabilities, observables, subsystem
states, and the fidelity to an independent Qiskit simulation of the same parsed circuit.
Pure and seeded: the same inputs give the same result, counts included.

Bounded (docs/security.md, "Bounded results"): a result has a size budget. Up to 12 qubits
(``MAX_DISTRIBUTION_ENTRIES`` = ``MAX_INLINE_AMPLITUDES`` = 2**12) nothing changes; above,
each distribution keeps its ``MAX_DISTRIBUTION_ENTRIES`` most likely entries (``truncated``
says what was left out) and the statevector becomes an artifact (raw little-endian
``complex128`` bytes kept beside the result), the result holding a reference to it. Should
the JSON still exceed ``max_result_bytes``, the statevector moves out and the distributions
halve until it fits.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from qiskit import QuantumCircuit, transpile
from qiskit.quantum_info import Statevector
from qiskit_aer import AerSimulator
from qiskit_aer.library import SaveStatevector

from quantum_mesh.quantum.circuits.gates import append_operation
from quantum_mesh.quantum.circuits.model import NormalizedCircuit

PROBABILITY_FLOOR = 1e-15
TOP_BASIS_STATES = 8
#: Entries kept in each of ``probabilities``, ``measured_probabilities`` and ``counts`` (the
#: most likely ones): 2**12, so a circuit of up to 12 qubits keeps every entry.
MAX_DISTRIBUTION_ENTRIES = 4096
#: The statevector is inline (a list of ``[re, im]``, about 190 KB of JSON at this size) up
#: to this many amplitudes (12 qubits); above, it is an artifact.
MAX_INLINE_AMPLITUDES = 4096
#: Default budget of a ``quantum_result``'s JSON (``QMESH_MAX_RESULT_BYTES`` in the service).
DEFAULT_MAX_RESULT_BYTES = 4 * 1024 * 1024
#: numpy dtype of the statevector artifact, stored little-endian.
STATEVECTOR_DTYPE = "complex128"


@dataclass(frozen=True)
class ResultArtifact:
    """A big array kept beside a result rather than in it: raw little-endian bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes = field(repr=False)
    sha256: str

    @classmethod
    def of(cls, name: str, array: NDArray[Any]) -> ResultArtifact:
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        data = little.tobytes()
        return cls(
            name=name,
            dtype=array.dtype.name,
            shape=tuple(int(d) for d in array.shape),
            data=data,
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def reference(self) -> dict[str, Any]:
        """What the result holds in the array's place."""
        return {
            "artifact": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "bytes": len(self.data),
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class BoundedResult:
    """A ``quantum_result`` within its budget and the artifacts it refers to."""

    quantum_result: dict[str, Any]
    artifacts: list[ResultArtifact]


#: Up to this many qubits the ideal state is computed directly, not through Aer.
DIRECT_STATEVECTOR_MAX_QUBITS = 12


#: Ideal states of circuits up to this width are kept for reuse (a sweep or a load of one
#: circuit with many seeds simulates it once): at most ``_IDEAL_CACHE_SIZE`` x 256 KiB.
IDEAL_CACHE_MAX_QUBITS = 14
_IDEAL_CACHE_SIZE = 64
_ideal_cache: OrderedDict[tuple[str, int], NDArray[np.complex128]] = OrderedDict()
_ideal_lock = threading.Lock()


def ideal_statevector(circuit: NormalizedCircuit) -> NDArray[np.complex128]:
    """The circuit's noiseless final state (read-only), reused for the same source text."""
    if circuit.num_qubits > IDEAL_CACHE_MAX_QUBITS:
        return _simulate_ideal(circuit)
    key = (circuit.source_hash, circuit.num_qubits)
    with _ideal_lock:
        state = _ideal_cache.get(key)
        if state is not None:
            _ideal_cache.move_to_end(key)
            return state
    state = _simulate_ideal(circuit)
    state.setflags(write=False)
    with _ideal_lock:
        _ideal_cache[key] = state
        while len(_ideal_cache) > _IDEAL_CACHE_SIZE:
            _ideal_cache.popitem(last=False)
    return state


def _simulate_ideal(circuit: NormalizedCircuit) -> NDArray[np.complex128]:
    """The circuit's noiseless final state (before measurement), simulated in one piece by
    Qiskit Aer, independently of the fragment path the runtime took.

    Small registers use ``Statevector.from_instruction``: Aer's per-call set-up (building its
    transpiler target) costs ~30 ms, which dominated the coordinator's CPU time per Bell job.
    Large ones use Aer (~10x faster at 20 qubits), one thread, because the coordinator runs
    this beside other numpy work on few cores.
    """
    qc = QuantumCircuit(circuit.num_qubits)
    for op in circuit.operations:
        append_operation(qc, name=op.name, params=op.params, qubits=op.qubits)
    if circuit.num_qubits <= DIRECT_STATEVECTOR_MAX_QUBITS:
        return np.asarray(Statevector.from_instruction(qc).data, dtype=np.complex128)
    qc.append(SaveStatevector(circuit.num_qubits), qc.qubits)
    simulator = AerSimulator(method="statevector", max_parallel_threads=1)
    compiled = transpile(qc, simulator, optimization_level=0)
    result = simulator.run(compiled).result()
    return np.asarray(result.get_statevector(), dtype=np.complex128)


#: Fields of a circuit result that need one final statevector, which a dynamic circuit
#: (measurements steering later gates, shot by shot) does not have.
STATEVECTOR_FIELDS = (
    "probabilities",
    "statevector",
    "observable_expectations",
    "reduced_density_matrices",
    "bloch_vectors",
    "entanglement_entropy",
    "fidelity",
    "top_basis_states",
)


def build_dynamic_result(
    circuit: NormalizedCircuit, reply: dict[str, Any], *, shots: int, seed: int
) -> dict[str, Any]:
    """The ``quantum_result`` of a dynamic circuit, from the counts a node measured."""
    counts = {str(k): int(v) for k, v in dict(reply.get("counts", {})).items()}
    total = sum(counts.values()) or 1
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return {
        "dynamic": True,
        "features": list(circuit.dynamic.features) if circuit.dynamic else [],
        "num_qubits": circuit.num_qubits,
        "num_clbits": circuit.num_clbits,
        "shots": shots,
        "seed": seed,
        "counts": ordered,
        "measured_probabilities": {k: v / total for k, v in ordered.items()},
        "most_likely": next(iter(ordered), None),
        "node_seconds": reply.get("seconds"),
        "omitted": list(STATEVECTOR_FIELDS),
        "note": "measurements steer later operations shot by shot: there is no single "
        "final statevector, so only measured distributions are reported",
    }


def build_quantum_result(
    circuit: NormalizedCircuit, final_state: NDArray[np.complex128], **options: Any
) -> dict[str, Any]:
    """Every field of the contract's ``quantum_result``, within its budget: the result of
    :func:`build_bounded_result` (same arguments) without the artifacts' bytes."""
    return build_bounded_result(circuit, final_state, **options).quantum_result


def build_bounded_result(
    circuit: NormalizedCircuit,
    final_state: NDArray[np.complex128],
    *,
    shots: int,
    seed: int,
    fragment_fidelities: list[float],
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    max_entries: int = MAX_DISTRIBUTION_ENTRIES,
    max_inline_amplitudes: int = MAX_INLINE_AMPLITUDES,
) -> BoundedResult:
    """The contract's ``quantum_result`` within a size budget, and the artifacts it refers to.

    Args:
        circuit: the parsed circuit (its measurements choose what ``counts`` are over; a
            circuit that measures nothing is measured on every qubit, clbit i <- qubit i,
            and ``measured_all_implicitly`` says so).
        final_state: the statevector the distributed execution produced.
        shots: number of samples for ``counts``.
        seed: seed of the sampling generator.
        fragment_fidelities: observed fidelity of each fragment, multiplied into
            ``estimated_execution_fidelity``.
        max_result_bytes: budget of the result's JSON (``json.dumps``), met by moving the
            statevector out and halving the distributions; only what does not depend on
            the number of basis states (observables, single-qubit states) is never cut.
        max_entries: most entries kept in each distribution (its most likely ones).
        max_inline_amplitudes: largest statevector kept inline; a larger one is the
            ``statevector`` artifact, and ``statevector`` is its reference
            (``{"artifact", "dtype", "shape", "bytes", "sha256"}``).

    Returns:
        The result (``truncated`` present only when a distribution lost entries: per field
        ``kept``, ``total`` and the probability or shots kept) and its artifacts.
    """
    n = circuit.num_qubits
    psi = np.asarray(final_state, dtype=np.complex128).reshape(-1)
    if psi.shape[0] != 2**n:
        raise ValueError(f"final_state has {psi.shape[0]} amplitudes, expected {2**n}")
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    if max_result_bytes < 0 or max_entries < 0 or max_inline_amplitudes < 0:
        raise ValueError("result bounds must be >= 0")
    probs = np.abs(psi) ** 2
    total = float(probs.sum())
    if total <= 0 or not math.isfinite(total):
        raise ValueError("final_state has zero or non-finite norm")
    probs = probs / total
    measurements, num_clbits, implicit = _measurement_map(circuit)
    outcomes, measured_weights, used = _measured_distribution(probs, measurements, num_clbits)
    sampled = _sample(measured_weights, shots=shots, seed=seed)
    rdms = [_reduced_density_matrix(psi, q, n) / total for q in range(n)]
    blochs = [_bloch_vector(rho) for rho in rdms]
    ideal = ideal_statevector(circuit)
    nonzero = np.flatnonzero(probs >= PROBABILITY_FLOOR)
    hits = np.flatnonzero(sampled)

    def outcome_keys(indices: NDArray[np.int64]) -> list[str]:
        return _outcome_keys(outcomes[indices], used, num_clbits)

    fixed: dict[str, Any] = {
        "measured_qubits": sorted({q for q, _ in measurements}),
        "measurements": [[q, c] for q, c in measurements],
        "measured_all_implicitly": implicit,
        "observable_expectations": _observables(psi, probs, blochs, n),
        "reduced_density_matrices": {
            f"q{q}": [[[float(x.real), float(x.imag)] for x in row] for row in rho]
            for q, rho in enumerate(rdms)
        },
        "bloch_vectors": {f"q{q}": b for q, b in enumerate(blochs)},
        "entanglement_entropy": {f"q{q}": _entropy_bits(rho) for q, rho in enumerate(rdms)},
        "fidelity": min(float(abs(np.vdot(ideal, psi)) ** 2 / total), 1.0),
        "estimated_execution_fidelity": float(np.prod(fragment_fidelities))
        if fragment_fidelities
        else 1.0,
        "top_basis_states": _top_basis_states(probs, n),
    }
    inline = psi.shape[0] <= max_inline_amplitudes
    entries = max_entries
    artifact: ResultArtifact | None = None
    statevector: Any = None
    while True:
        if inline and statevector is None:
            statevector = np.column_stack([psi.real, psi.imag]).tolist()
        elif not inline and artifact is None:
            artifact = ResultArtifact.of("statevector", psi)
            statevector = artifact.reference()
        truncated: dict[str, Any] = {}
        kept_counts = _most_likely(hits, sampled[hits], entries)
        kept_states = _most_likely(nonzero, probs[nonzero], entries)
        kept_outcomes = _most_likely(
            np.arange(outcomes.shape[0], dtype=np.int64), measured_weights, entries
        )
        if kept_counts.shape[0] < hits.shape[0]:
            truncated["counts"] = {
                "kept": int(kept_counts.shape[0]),
                "total": int(hits.shape[0]),
                "kept_shots": int(sampled[kept_counts].sum()),
            }
        if kept_states.shape[0] < nonzero.shape[0]:
            truncated["probabilities"] = {
                "kept": int(kept_states.shape[0]),
                "total": int(nonzero.shape[0]),
                "kept_probability": float(probs[kept_states].sum()),
            }
        if kept_outcomes.shape[0] < outcomes.shape[0]:
            truncated["measured_probabilities"] = {
                "kept": int(kept_outcomes.shape[0]),
                "total": int(outcomes.shape[0]),
                "kept_probability": float(measured_weights[kept_outcomes].sum()),
            }
        result: dict[str, Any] = {
            "num_qubits": n,
            "num_clbits": num_clbits,
            "shots": shots,
            "seed": seed,
            "counts": dict(
                zip(outcome_keys(kept_counts), sampled[kept_counts].tolist(), strict=True)
            ),
            "probabilities": dict(
                zip(_basis_bitstrings(kept_states, n), probs[kept_states].tolist(), strict=True)
            ),
            "measured_probabilities": dict(
                zip(
                    outcome_keys(kept_outcomes),
                    measured_weights[kept_outcomes].tolist(),
                    strict=True,
                )
            ),
            "statevector": statevector,
            **fixed,
        }
        if truncated:
            result["truncated"] = truncated
        if len(json.dumps(result)) <= max_result_bytes:
            break
        if inline:
            inline = False
        elif entries > 0:
            entries //= 2
        else:
            break  # nothing left to cut: the fixed part alone is over the budget
    return BoundedResult(quantum_result=result, artifacts=[] if artifact is None else [artifact])


def _measurement_map(circuit: NormalizedCircuit) -> tuple[list[tuple[int, int]], int, bool]:
    if circuit.measurements:
        return list(circuit.measurements), circuit.num_clbits, False
    n = circuit.num_qubits
    return [(q, q) for q in range(n)], n, True


def _bitstrings(columns: NDArray[np.uint8]) -> list[str]:
    """Rows of a 0/1 matrix (leftmost column first) as Python strings, without a Python loop
    per character: a 2**20-state register has a million keys."""
    if columns.shape[1] == 0:
        return [""] * columns.shape[0]
    chars = np.ascontiguousarray(columns.astype(np.uint8) + ord("0"))
    return chars.view(f"S{columns.shape[1]}").ravel().astype(f"U{columns.shape[1]}").tolist()


def _basis_bitstrings(indices: NDArray[np.int64], n: int) -> list[str]:
    """n-bit Qiskit-order keys (qubit 0 rightmost) of basis-state indices."""
    shifts = np.arange(n - 1, -1, -1, dtype=np.int64)
    return _bitstrings(((indices[:, None] >> shifts) & 1).astype(np.uint8))


def _measured_distribution(
    probs: NDArray[np.float64], measurements: list[tuple[int, int]], num_clbits: int
) -> tuple[NDArray[np.int64], NDArray[np.float64], list[int]]:
    """Marginal over the classical register: the outcomes (the used clbits packed, clbit
    ``used[i]`` in bit i; ascending, which is the order of their keys), their probabilities
    (those below ``PROBABILITY_FLOOR`` dropped) and ``used``.

    A clbit written twice keeps its last measurement, as in Qiskit; unwritten clbits are 0.
    """
    source_of: dict[int, int] = {}
    for qubit, clbit in measurements:
        source_of[clbit] = qubit
    used = sorted(source_of)
    index = np.arange(probs.shape[0], dtype=np.int64)
    outcome = np.zeros_like(index)
    for position, clbit in enumerate(used):  # outcome packs the used clbits only
        outcome |= ((index >> source_of[clbit]) & 1) << position
    values, inverse = np.unique(outcome, return_inverse=True)
    weights = np.bincount(inverse, weights=probs, minlength=values.shape[0]).astype(np.float64)
    keep = weights >= PROBABILITY_FLOOR
    return values[keep].astype(np.int64), weights[keep], used


def _outcome_keys(values: NDArray[np.int64], used: list[int], num_clbits: int) -> list[str]:
    """Qiskit-order keys (clbit 0 rightmost) of packed outcomes."""
    columns = np.zeros((values.shape[0], num_clbits), dtype=np.uint8)
    for position, clbit in enumerate(used):
        columns[:, num_clbits - 1 - clbit] = (values >> position) & 1
    return _bitstrings(columns)


def _sample(weights: NDArray[np.float64], *, shots: int, seed: int) -> NDArray[np.int64]:
    """``shots`` samples of the measured distribution with ``numpy.random.default_rng(seed)``:
    how many fell on each outcome."""
    return np.random.default_rng(seed).multinomial(shots, weights / weights.sum())


def _most_likely(
    indices: NDArray[np.int64], weights: NDArray[Any], limit: int
) -> NDArray[np.int64]:
    """The ``limit`` entries of ``indices`` with the largest ``weights`` (ties: the earlier
    one), in their original order; all of them when there are no more than ``limit``."""
    if indices.shape[0] <= limit:
        return indices
    order = np.argsort(-weights, kind="stable")[:limit]
    return np.sort(indices[order])


def _top_basis_states(probs: NDArray[np.float64], n: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:TOP_BASIS_STATES]
    order = order[probs[order] >= PROBABILITY_FLOOR]
    return [
        {"bitstring": key, "probability": float(probs[i])}
        for key, i in zip(_basis_bitstrings(order, n), order, strict=True)
    ]


def _reduced_density_matrix(psi: NDArray[np.complex128], qubit: int, n: int) -> NDArray[Any]:
    """2x2 state of one qubit: trace out the rest (little-endian: qubit q is bit q)."""
    tensor = psi.reshape(2 ** (n - qubit - 1), 2, 2**qubit)
    return np.einsum("iaj,ibj->ab", tensor, tensor.conj())


def _bloch_vector(rho: NDArray[Any]) -> list[float]:
    return [
        float(2 * rho[1, 0].real),
        float(2 * rho[1, 0].imag),
        float((rho[0, 0] - rho[1, 1]).real),
    ]


def _entropy_bits(rho: NDArray[Any]) -> float:
    eigenvalues = np.linalg.eigvalsh((rho + rho.conj().T) / 2)
    eigenvalues = eigenvalues[eigenvalues > PROBABILITY_FLOOR]
    return max(float(-(eigenvalues * np.log2(eigenvalues)).sum()), 0.0)


def _walsh_hadamard(vector: NDArray[Any], n: int) -> NDArray[Any]:
    """Unnormalised Walsh-Hadamard transform, O(n 2**n): ``out[m] = sum_i (-1)^|i & m| v[i]``.

    On probabilities it yields every Z-parity expectation at once (``out[1<<a | 1<<b]`` is
    <Z_a Z_b>); on amplitudes, divided by 2**(n/2), it is H applied to every qubit.
    """
    out = vector.copy()
    for q in range(n):
        view = out.reshape(2 ** (n - q - 1), 2, 2**q)
        low = view[:, 0, :].copy()
        view[:, 0, :] += view[:, 1, :]
        view[:, 1, :] = low - view[:, 1, :]
    return out


def _observables(
    psi: NDArray[np.complex128], probs: NDArray[np.float64], blochs: list[list[float]], n: int
) -> dict[str, dict[str, float]]:
    """Single-qubit X, Y, Z and all-pairs ZZ, XX.

    ZZ (and Z) are Z-parities of the probabilities; XX are the same parities of the
    X-basis probabilities (H on every qubit), all from two Walsh-Hadamard transforms.
    """
    z_parity = _walsh_hadamard(probs, n)
    x_amplitudes = _walsh_hadamard(psi, n) / 2 ** (n / 2)
    x_probs = np.abs(x_amplitudes) ** 2
    x_parity = _walsh_hadamard(x_probs / x_probs.sum(), n)
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    return {
        "X": {f"q{q}": blochs[q][0] for q in range(n)},
        "Y": {f"q{q}": blochs[q][1] for q in range(n)},
        "Z": {f"q{q}": float(z_parity[1 << q]) for q in range(n)},
        "ZZ": {f"q{a},q{b}": float(z_parity[(1 << a) | (1 << b)]) for a, b in pairs},
        "XX": {f"q{a},q{b}": float(x_parity[(1 << a) | (1 << b)]) for a, b in pairs},
    }
