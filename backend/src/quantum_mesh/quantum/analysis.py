"""The Qiskit result builder: a circuit job's ``quantum_result`` from its final statevector.

The runtime says which node ran what and at which observed fidelity; this module says what
quantum state that execution implies: sampled counts, probabilities, observables, subsystem
states, and the fidelity to an independent Qiskit simulation of the same parsed circuit.
Pure and seeded: the same inputs give the same result, counts included.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from qiskit import QuantumCircuit, transpile
from qiskit_aer import AerSimulator
from qiskit_aer.library import SaveStatevector

from quantum_mesh.quantum.circuits.gates import append_operation
from quantum_mesh.quantum.circuits.model import NormalizedCircuit

PROBABILITY_FLOOR = 1e-15
TOP_BASIS_STATES = 8


def ideal_statevector(circuit: NormalizedCircuit) -> NDArray[np.complex128]:
    """The circuit's noiseless final state (before measurement), simulated in one piece by
    Qiskit Aer, independently of the fragment path the runtime took.

    Aer rather than ``Statevector.from_instruction``: ~10x faster at 20 qubits. One thread,
    because the coordinator runs this beside other numpy work on few cores.
    """
    qc = QuantumCircuit(circuit.num_qubits)
    for op in circuit.operations:
        append_operation(qc, name=op.name, params=op.params, qubits=op.qubits)
    qc.append(SaveStatevector(circuit.num_qubits), qc.qubits)
    simulator = AerSimulator(method="statevector", max_parallel_threads=1)
    compiled = transpile(qc, simulator, optimization_level=0)
    result = simulator.run(compiled).result()
    return np.asarray(result.get_statevector(), dtype=np.complex128)


def build_quantum_result(
    circuit: NormalizedCircuit,
    final_state: NDArray[np.complex128],
    *,
    shots: int,
    seed: int,
    fragment_fidelities: list[float],
) -> dict[str, Any]:
    """Every field of the contract's ``quantum_result``.

    Args:
        circuit: the parsed circuit (its measurements choose what ``counts`` are over; a
            circuit that measures nothing is measured on every qubit, clbit i <- qubit i,
            and ``measured_all_implicitly`` says so).
        final_state: the statevector the distributed execution produced.
        shots: number of samples for ``counts``.
        seed: seed of the sampling generator.
        fragment_fidelities: observed fidelity of each fragment, multiplied into
            ``estimated_execution_fidelity``.
    """
    n = circuit.num_qubits
    psi = np.asarray(final_state, dtype=np.complex128).reshape(-1)
    if psi.shape[0] != 2**n:
        raise ValueError(f"final_state has {psi.shape[0]} amplitudes, expected {2**n}")
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    probs = np.abs(psi) ** 2
    total = float(probs.sum())
    if total <= 0 or not math.isfinite(total):
        raise ValueError("final_state has zero or non-finite norm")
    probs = probs / total
    measurements, num_clbits, implicit = _measurement_map(circuit)
    measured_keys, measured_weights = _measured_distribution(probs, measurements, num_clbits)
    rdms = [_reduced_density_matrix(psi, q, n) / total for q in range(n)]
    blochs = [_bloch_vector(rho) for rho in rdms]
    ideal = ideal_statevector(circuit)
    return {
        "num_qubits": n,
        "num_clbits": num_clbits,
        "shots": shots,
        "seed": seed,
        "counts": _sample_counts(measured_keys, measured_weights, shots=shots, seed=seed),
        "probabilities": _basis_probabilities(probs, n),
        "measured_probabilities": dict(zip(measured_keys, measured_weights.tolist(), strict=True)),
        "statevector": np.column_stack([psi.real, psi.imag]).tolist(),
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
) -> tuple[list[str], NDArray[np.float64]]:
    """Marginal over the classical register: keys in Qiskit order (clbit 0 rightmost), sorted,
    and their probabilities (those below ``PROBABILITY_FLOOR`` dropped).

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
    values, weights = values[keep], weights[keep]
    columns = np.zeros((values.shape[0], num_clbits), dtype=np.uint8)
    for position, clbit in enumerate(used):
        columns[:, num_clbits - 1 - clbit] = (values >> position) & 1
    return _bitstrings(columns), weights


def _sample_counts(
    keys: list[str], weights: NDArray[np.float64], *, shots: int, seed: int
) -> dict[str, int]:
    """``shots`` samples of the measured distribution with ``numpy.random.default_rng(seed)``."""
    sampled = np.random.default_rng(seed).multinomial(shots, weights / weights.sum())
    hit = np.flatnonzero(sampled)
    return {keys[i]: int(sampled[i]) for i in hit}


def _basis_probabilities(probs: NDArray[np.float64], n: int) -> dict[str, float]:
    keep = np.flatnonzero(probs >= PROBABILITY_FLOOR)
    return dict(zip(_basis_bitstrings(keep, n), probs[keep].tolist(), strict=True))


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
