"""Fast statevector QAOA for diagonal cost Hamiltonians.

The cost Hamiltonian is given by its diagonal: the 2**n energies ``E[i]`` of the computational
basis states, computed once per problem (see :mod:`quantum_mesh.quantum.qaoa.problems`). One
QAOA layer with angles ``(gamma, beta)`` is

* cost layer: ``psi[i] *= exp(-1j * gamma * E[i])`` (exactly ``exp(-i gamma H_C)``), and
* mixer: ``exp(-i beta X)`` = ``RX(2 beta)`` on every qubit (``mixer="x"``), applied a few
  qubits at a time as one matrix multiply over a reshaped view, or the XY ring mixer
  ``prod_{q} exp(-i beta (X_q X_{q+1} + Y_q Y_{q+1}) / 2)`` (``mixer="xy_ring"``,
  ``XXPlusYYGate(2 beta)`` on the pairs (0,1), (1,2), ..., (n-1,0) in that order), which
  preserves the Hamming weight.

This is the circuit ``qiskit.circuit.library.qaoa_ansatz(H_C, reps=p)`` builds (``H`` on
every qubit, then per layer ``PauliEvolutionGate(H_C, gamma)`` and ``RX(2 beta)``).

Bit ordering (same as Qiskit): basis index ``i`` has qubit ``q`` in state ``(i >> q) & 1``;
qubit 0 is the least significant bit, i.e. the rightmost character of a Qiskit bitstring.
Item ``j`` of a block is qubit ``j``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import comb
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.qaoa import kernel

MAX_QUBITS = 26
MIXER_CHUNK_QUBITS = 3
"""Qubits per blocked mixer multiply: 3 was fastest or within 10% of it (n = 20, 24, 2 cores)."""

#: Phase tables a cost keeps (by gamma), and the largest kept (2**16 complex128: 1 MiB).
PHASE_TABLES_KEPT = 16
PHASE_TABLE_MAX_SIZE = 1 << 16

Mixer = Literal["x", "xy_ring"]
FloatArray = NDArray[np.float64]
ComplexArray = NDArray[np.complex128]


@dataclass(frozen=True, slots=True)
class DiagonalCost:
    """Diagonal of a cost Hamiltonian, with an optional table of its distinct levels.

    When the energies are integers spanning fewer than 2**n levels (knapsack and QUBO with
    integer data), ``level_index[i]`` maps state ``i`` to ``energies[i] - level_offset`` and
    the cost phase is computed on the small table and gathered, far cheaper than 2**n
    complex exponentials.
    """

    energies: FloatArray
    num_qubits: int
    level_offset: float
    level_index: NDArray[np.int32] | None
    level_count: int = 0
    #: The largest ``|E|`` (whether the fused kernel may compute the phases itself).
    energy_bound: float = 0.0
    #: Phase tables by gamma (see ``phase_table``).
    _tables: dict[float, ComplexArray] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_energies(cls, energies: Sequence[float] | FloatArray) -> DiagonalCost:
        """Check ``energies`` (length a power of two, finite) and build the cost."""
        arr = np.ascontiguousarray(energies, dtype=np.float64)
        if arr.ndim != 1 or arr.size < 2 or arr.size & (arr.size - 1):
            raise InvalidInput(
                f"The number of energies must be a power of two >= 2. Instead, got {arr.size}.",
                details={"size": int(arr.size)},
            )
        num_qubits = int(arr.size).bit_length() - 1
        if num_qubits > MAX_QUBITS:
            raise InvalidInput(
                f"At most {MAX_QUBITS} qubits are supported. Instead, got {num_qubits}.",
                details={"num_qubits": num_qubits},
            )
        if not np.all(np.isfinite(arr)):
            raise InvalidInput("Energies must be finite.")
        low, high = float(arr.min()), float(arr.max())
        index: NDArray[np.int32] | None = None
        count = 0
        if high - low < arr.size and np.array_equal(arr, np.round(arr)):
            index = (arr - low).astype(np.int32)
            count = round(high - low) + 1
        return cls(
            energies=arr,
            num_qubits=num_qubits,
            level_offset=low,
            level_index=index,
            level_count=count,
            energy_bound=max(abs(low), abs(high)),
        )

    def phases(self, gamma: float) -> ComplexArray:
        """``exp(-1j * gamma * E)`` for every basis state (a new array)."""
        table = self.phase_table(gamma)
        return table.copy() if self.level_index is None else table.take(self.level_index)

    def phase_table(self, gamma: float) -> ComplexArray:
        """``exp(-1j * gamma * level)`` per level when there is a level table, else per basis
        state. Do not modify it: up to ``PHASE_TABLES_KEPT`` small tables are kept per cost,
        because an angle search evaluates every gamma of its grid with every beta, and with
        real-valued energies (no level table) the 2**n exponentials were costlier than the
        12-qubit kernel's walk over the state."""
        table = self._tables.get(gamma)
        if table is None:
            if self.level_index is None:
                table = np.exp(-1j * gamma * self.energies)
            else:
                levels = self.level_offset + np.arange(self.level_count, dtype=np.float64)
                table = np.exp(-1j * gamma * levels)
            if table.size <= PHASE_TABLE_MAX_SIZE:
                if len(self._tables) >= PHASE_TABLES_KEPT:
                    self._tables.clear()
                self._tables[gamma] = table
        return table


def plus_state(num_qubits: int) -> ComplexArray:
    """``|+>^n``."""
    _check_qubits(num_qubits)
    size = 1 << num_qubits
    return np.full(size, 1.0 / np.sqrt(size), dtype=np.complex128)


def dicke_state(num_qubits: int, weight: int) -> ComplexArray:
    """Equal superposition of all basis states with exactly ``weight`` ones."""
    _check_qubits(num_qubits)
    if not 0 <= weight <= num_qubits:
        raise InvalidInput(
            f"Dicke weight must be in [0, {num_qubits}]. Instead, got {weight}.",
            details={"weight": weight},
        )
    mask = popcounts(num_qubits) == weight
    state = np.zeros(1 << num_qubits, dtype=np.complex128)
    state[mask] = 1.0 / np.sqrt(comb(num_qubits, weight))
    return state


def popcounts(num_qubits: int) -> NDArray[np.int64]:
    """Hamming weight of every basis index ``0 .. 2**n - 1``."""
    counts = np.zeros(1, dtype=np.int64)
    for _ in range(num_qubits):
        counts = np.concatenate([counts, counts + 1])
    return counts


def evolve(
    cost: DiagonalCost,
    *,
    gammas: Sequence[float],
    betas: Sequence[float],
    initial_state: ComplexArray | None = None,
    mixer: Mixer = "x",
) -> ComplexArray:
    """Statevector after ``p = len(gammas)`` QAOA layers (cost layer first in each).

    Args:
        cost: the diagonal cost.
        gammas: cost angles, one per layer.
        betas: mixer angles, one per layer (``RX(2 beta)`` per qubit for ``mixer="x"``).
        initial_state: start state (default ``|+>^n``); e.g. :func:`dicke_state` for XY.
        mixer: ``"x"`` (transverse field) or ``"xy_ring"`` (Hamming-weight preserving).

    Returns:
        The final state, a new array of length 2**n.

    Raises:
        InvalidInput: mismatched angle lists, wrong state length or unknown mixer.
    """
    if len(gammas) != len(betas) or not len(gammas):
        raise InvalidInput(
            f"Need as many gammas as betas (>= 1). Instead, got {len(gammas)} and {len(betas)}.",
            details={"gammas": len(gammas), "betas": len(betas)},
        )
    if mixer not in ("x", "xy_ring"):
        raise InvalidInput(f"Unknown mixer {mixer!r}; use 'x' or 'xy_ring'.")
    n = cost.num_qubits
    if initial_state is None:
        state = plus_state(n)
    else:
        state = np.array(initial_state, dtype=np.complex128)
        if state.shape != (1 << n,):
            raise InvalidInput(
                f"Initial state must have length {1 << n}. Instead, got shape {state.shape}.",
            )
    if mixer == "x" and _fused(n):
        _evolve_fused(cost, state, gammas, betas, want_energy=False)
        return state
    spare = np.empty_like(state)
    for gamma, beta in zip(gammas, betas, strict=True):
        table = cost.phase_table(float(gamma))
        state *= table if cost.level_index is None else table.take(cost.level_index)
        if mixer == "x":
            state, spare = _apply_rx_all(state, spare, float(beta), n)
        else:
            _apply_xy_ring(state, float(beta), n)
    return state


def expectation(cost: DiagonalCost, state: ComplexArray) -> float:
    """``<psi| H_C |psi>``."""
    return float(probabilities(state) @ cost.energies)


def probabilities(state: ComplexArray) -> FloatArray:
    """``|psi_i|^2`` for every basis state."""
    return np.asarray(state.real**2 + state.imag**2, dtype=np.float64)


def qaoa_expectation(
    cost: DiagonalCost,
    *,
    gammas: Sequence[float],
    betas: Sequence[float],
    initial_state: ComplexArray | None = None,
    mixer: Mixer = "x",
) -> float:
    """Energy expectation of the QAOA state with the given angles."""
    n = cost.num_qubits
    if initial_state is None and mixer == "x" and _fused(n) and 0 < len(gammas) == len(betas):
        # The fused kernel sums the energy in its last walk over the state.
        return _evolve_fused(cost, None, gammas, betas, want_energy=True)
    state = evolve(cost, gammas=gammas, betas=betas, initial_state=initial_state, mixer=mixer)
    return expectation(cost, state)


#: From this many qubits the fused two-pass kernel (``kernel.py``) runs the X-mixer layers;
#: below, the state fits the caches and numpy's blocked multiply is as fast.
FUSED_MIN_QUBITS = 12


def _fused(num_qubits: int) -> bool:
    return kernel.AVAILABLE and num_qubits >= FUSED_MIN_QUBITS


#: Up to this many qubits a thread keeps the work arrays of its last energy evaluation
#: (2 x 2^n float64: 256 MiB at 24 qubits) for the next one of the same size: fresh arrays
#: of 2 x 32 MiB and more come from mmap, and faulting their pages in cost about two passes
#: over the state per evaluation at n = 22 (measured).
KEEP_PARTS_MAX_QUBITS = 24
_kept = threading.local()


def _energy_parts(num_qubits: int) -> tuple[FloatArray, FloatArray]:
    """Work arrays (real, imaginary) for an energy evaluation; contents undefined."""
    size = 1 << num_qubits
    if num_qubits > KEEP_PARTS_MAX_QUBITS:
        return np.empty(size), np.empty(size)
    kept: tuple[FloatArray, FloatArray] | None = getattr(_kept, "parts", None)
    if kept is None or kept[0].size != size:
        _kept.parts = None  # drop the old pair before allocating the new one
        kept = (np.empty(size), np.empty(size))
        _kept.parts = kept
    return kept


def _evolve_fused(
    cost: DiagonalCost,
    state: ComplexArray | None,
    gammas: Sequence[float],
    betas: Sequence[float],
    *,
    want_energy: bool,
) -> float:
    """Run the layers in the fused kernel; ``state`` (``None``: ``|+>^n``, for an energy
    alone) is updated in place. The kernel works on contiguous real and imaginary parts:
    split once here, and not at all for an energy from ``|+>^n``."""
    if state is None:
        # the kernel writes |+>'s phased amplitudes itself: nothing to initialise
        re, im = _energy_parts(cost.num_qubits)
    else:
        re, im = np.ascontiguousarray(state.real), np.ascontiguousarray(state.imag)
    angles = [float(g) for g in gammas]
    # Without a level table the kernel computes exp(-i gamma E) as it walks the state, ~18x
    # cheaper than numpy's complex exp into a table of 2^n phases (which then cost 2-4x the
    # walk itself at n = 20); tables only where |gamma E| is too large for its reduction.
    computed = cost.level_index is None and (
        cost.energy_bound * max(map(abs, angles)) <= kernel.COMPUTED_PHASE_MAX_ARG
    )
    energy = kernel.evolve_x(
        re,
        im,
        phase_tables=None if computed else [cost.phase_table(g) for g in angles],
        level_index=cost.level_index,
        energies=cost.energies,
        betas=[float(b) for b in betas],
        gammas=angles,
        energy_bound=cost.energy_bound,
        num_qubits=cost.num_qubits,
        want_energy=want_energy,
        plus=state is None,
    )
    if state is not None:
        state.real, state.imag = re, im
    return energy


def sample_indices(probs: FloatArray, *, shots: int, seed: int) -> NDArray[np.int64]:
    """Draw ``shots`` basis indices from ``probs`` (renormalised).

    Uses ``np.random.default_rng(seed).choice``, the same draw as Qiskit's
    ``Statevector.seed(seed); Statevector.sample_memory(shots)``, so both give the same
    samples for the same seed and probabilities.
    """
    if shots < 1:
        raise InvalidInput(f"shots must be >= 1. Instead, got {shots}.")
    total = float(probs.sum())
    if not total > 0:
        raise InvalidInput("Probabilities sum to zero.")
    rng = np.random.default_rng(seed)
    return np.asarray(rng.choice(probs.size, p=probs / total, size=shots), dtype=np.int64)


def sample_counts(probs: FloatArray, *, shots: int, seed: int) -> dict[int, int]:
    """Counts ``{basis index: hits}`` of :func:`sample_indices`."""
    values, counts = np.unique(sample_indices(probs, shots=shots, seed=seed), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def best_distinct(indices: NDArray[np.int64], energies: FloatArray, *, k: int) -> NDArray[np.int64]:
    """The ``k`` distinct indices (among ``indices``) of lowest energy, lowest first.

    Ties are broken by the smaller index, so the result is deterministic.
    """
    if k < 1:
        raise InvalidInput(f"k must be >= 1. Instead, got {k}.")
    distinct = np.unique(indices)
    order = np.lexsort((distinct, energies[distinct]))
    return np.asarray(distinct[order[:k]], dtype=np.int64)


def most_probable(probs: FloatArray, *, k: int) -> NDArray[np.int64]:
    """The ``k`` most probable basis indices, most probable first (ties: smaller index)."""
    k = min(k, probs.size)
    part = np.argpartition(-probs, k - 1)[:k]
    order = np.lexsort((part, -probs[part]))
    return np.asarray(part[order], dtype=np.int64)


def index_to_bits(index: int, num_qubits: int) -> list[int]:
    """Bits ``[b_0, b_1, ...]`` of a basis index, qubit 0 first."""
    return [(int(index) >> q) & 1 for q in range(num_qubits)]


def bits_to_index(bits: Sequence[int]) -> int:
    """Inverse of :func:`index_to_bits`."""
    return sum(int(b) << q for q, b in enumerate(bits))


def _check_qubits(num_qubits: int) -> None:
    if not 1 <= num_qubits <= MAX_QUBITS:
        raise InvalidInput(
            f"Number of qubits must be in [1, {MAX_QUBITS}]. Instead, got {num_qubits}.",
            details={"num_qubits": num_qubits},
        )


@functools.lru_cache(maxsize=256)
def _rx_power(beta: float, count: int) -> ComplexArray:
    """``RX(2 beta)^{(x) count}`` as a 2**count square matrix (qubit 0 = last factor).

    Cached (read-only): a layer needs the same few matrices for every chunk of qubits, and
    an angle search revisits each beta of its grid; building them with ``np.kron`` was
    most of an evaluation below ``FUSED_MIN_QUBITS`` (0.4 of 0.42 ms at 11 qubits)."""
    c, s = np.cos(beta), -1j * np.sin(beta)
    single = np.array([[c, s], [s, c]], dtype=np.complex128)
    matrix: ComplexArray = np.ones((1, 1), dtype=np.complex128)
    for _ in range(count):
        matrix = np.asarray(np.kron(matrix, single), dtype=np.complex128)
    matrix.flags.writeable = False
    return matrix


def _chunks(num_qubits: int) -> list[tuple[int, int]]:
    """Split qubits ``0..n-1`` into nearly equal runs ``(first, count)``."""
    parts = -(-num_qubits // MIXER_CHUNK_QUBITS)
    base, extra = divmod(num_qubits, parts)
    out, first = [], 0
    for i in range(parts):
        count = base + (1 if i < extra else 0)
        out.append((first, count))
        first += count
    return out


def _apply_rx_all(
    state: ComplexArray, spare: ComplexArray, beta: float, n: int
) -> tuple[ComplexArray, ComplexArray]:
    """Apply ``RX(2 beta)`` to every qubit; returns ``(new_state, spare_buffer)``."""
    for first, count in _chunks(n):
        matrix = _rx_power(beta, count)
        block, low = 1 << count, 1 << first
        high = state.size // (block * low)
        if low == 1:
            np.matmul(state.reshape(high, block), matrix.T, out=spare.reshape(high, block))
        else:
            np.matmul(matrix, state.reshape(high, block, low), out=spare.reshape(high, block, low))
        state, spare = spare, state
    return state, spare


def _apply_xy_ring(state: ComplexArray, beta: float, n: int) -> None:
    """In place: ``exp(-i beta (XX + YY) / 2)`` on (0,1), (1,2), ..., (n-1, 0)."""
    if n < 2:
        return
    pairs = [(q, q + 1) for q in range(n - 1)]
    if n > 2:
        pairs.append((n - 1, 0))
    c, s = np.cos(beta), -1j * np.sin(beta)
    tensor = state.reshape((2,) * n)  # axis n-1-q is qubit q
    for a, b in pairs:
        idx01: list[slice | int] = [slice(None)] * n
        idx10: list[slice | int] = [slice(None)] * n
        idx01[n - 1 - a], idx01[n - 1 - b] = 1, 0
        idx10[n - 1 - a], idx10[n - 1 - b] = 0, 1
        one = tensor[tuple(idx01)].copy()
        two = tensor[tuple(idx10)]
        tensor[tuple(idx01)] = c * one + s * two
        tensor[tuple(idx10)] = s * one + c * two
