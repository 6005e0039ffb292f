"""Node method ``sqd_batch``: one SQD batch diagonalisation (qiskit-addon-sqd's ``solve_sci``).

Params (JSON; arrays via ``quantum.encoding``):

- ``problem_hash``: ``ActiveSpaceProblem.content_hash`` of the integrals.
- ``integrals``: ``{"h1": array (norb, norb), "h2": array (norb,)*4}``, optional once this
  worker process has cached the hash; without it and without a cached copy the handler
  raises ``ValueError`` whose message starts with ``MISSING_INTEGRALS`` (resend with them).
- ``norb``, ``nelec`` ``[n_alpha, n_beta]``.
- ``ci_strs_a``, ``ci_strs_b``: int64 arrays; the subspace is their Cartesian product.
- ``solver``: ``{"spin_sq": float | None, "max_cycle"?: int, "tol"?: float, "max_space"?: int}``.
- ``seed``: int, recorded for provenance. The solve itself is deterministic (Davidson from a
  deterministic guess, no random numbers), so the same inputs give the same result.
- ``iteration``, ``batch``: echoed back.

Result: ``energy`` (electronic energy, EXCLUDING the core energy; ``None`` when the solver
produced a non-finite value), ``orbital_occupancies`` ``{"alpha", "beta"}``,
``spin_squared``, ``subspace_dim``, ``amplitudes`` and ``ci_strs_a``/``ci_strs_b`` of the SCI
state (needed for carry-over), ``seconds`` (wall) and ``cpu_seconds`` of the solve, and the
echoed ``iteration``, ``batch``, ``seed``, ``problem_hash``.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quantum_mesh.arrays import decode_array
from quantum_mesh.quantum.sqd.problem import MAX_ACTIVE_ORBITALS, integrals_hash
from quantum_mesh.quantum.sqd.threads import pyscf_threads

MISSING_INTEGRALS = "missing_integrals"
"""Prefix of the ValueError raised when a hash is unknown here and no integrals came along."""

SOLVER_OPTIONS = ("max_cycle", "tol", "max_space")
"""Options forwarded to ``pyscf.fci.selected_ci.kernel_fixed_space``."""

_CACHE_SIZE = 4
_INTEGRALS: OrderedDict[str, tuple[NDArray[np.float64], NDArray[np.float64]]] = OrderedDict()


def solve_batch(params: dict[str, Any], *, threads: int | None = None) -> dict[str, Any]:
    """Diagonalise the Hamiltonian in one batch's subspace with ``threads`` OpenMP threads
    (a node passes its ``blas_threads``; ``None``: leave the process setting as is)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    norb, nelec = _check_space(params)
    h1, h2 = _integrals(params, norb=norb, nelec=nelec)
    strs_a = _ci_strings(params, "ci_strs_a", norb=norb, n_electrons=nelec[0])
    strs_b = _ci_strings(params, "ci_strs_b", norb=norb, n_electrons=nelec[1])
    spin_sq, options = _solver_options(params.get("solver") or {})
    seed = params.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f"seed must be an integer or absent; got {seed!r}.")

    from qiskit_addon_sqd.fermion import solve_sci

    with pyscf_threads(threads):
        result = solve_sci(
            (strs_a, strs_b), h1, h2, norb=norb, nelec=nelec, spin_sq=spin_sq, **options
        )
        state = result.sci_state
        assert state is not None  # solve_sci always materialises the state
        spin_squared = float(state.spin_square())
    energy = float(result.energy)
    occ_a, occ_b = result.orbital_occupancies
    return {
        "iteration": params.get("iteration"),
        "batch": params.get("batch"),
        "seed": seed,
        "problem_hash": params.get("problem_hash"),
        "energy": energy if math.isfinite(energy) else None,
        "orbital_occupancies": {
            "alpha": np.asarray(occ_a, dtype=np.float64),
            "beta": np.asarray(occ_b, dtype=np.float64),
        },
        "spin_squared": spin_squared,
        "subspace_dim": len(strs_a) * len(strs_b),
        "amplitudes": np.asarray(state.amplitudes, dtype=np.float64),
        "ci_strs_a": np.asarray(state.ci_strs_a, dtype=np.int64),
        "ci_strs_b": np.asarray(state.ci_strs_b, dtype=np.int64),
        "seconds": time.perf_counter() - start,
        # Beside the wall time: a solve slowed by cores shared with other work shows here as
        # wall time without CPU time (this process runs one solve at a time).
        "cpu_seconds": time.process_time() - cpu_start,
    }


#: The name the in-process drivers (``sqd/loop.py``, ``sqd/local_pool.py``) call it by.
solve_batch_with_threads = solve_batch


def clear_cache() -> None:
    """Forget the integrals cached in this process."""
    _INTEGRALS.clear()


def _check_space(params: dict[str, Any]) -> tuple[int, tuple[int, int]]:
    norb, nelec = params.get("norb"), params.get("nelec")
    if not isinstance(norb, int) or not 1 <= norb <= MAX_ACTIVE_ORBITALS:
        raise ValueError(f"norb must be an integer in 1..{MAX_ACTIVE_ORBITALS}; got {norb!r}.")
    if (
        not isinstance(nelec, list | tuple)
        or len(nelec) != 2
        or not all(isinstance(n, int) and 0 <= n <= norb for n in nelec)
    ):
        raise ValueError(f"nelec must be [n_alpha, n_beta] with 0 <= n <= norb; got {nelec!r}.")
    return norb, (int(nelec[0]), int(nelec[1]))


def _integrals(
    params: dict[str, Any], *, norb: int, nelec: tuple[int, int]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    key = params.get("problem_hash")
    if not isinstance(key, str) or not key:
        raise ValueError("problem_hash must be the content hash of the integrals.")
    payload = params.get("integrals")
    if payload is None:
        cached = _INTEGRALS.get(key)
        if cached is None:
            raise ValueError(
                f"{MISSING_INTEGRALS}: integrals for problem_hash {key[:12]}... are not cached in "
                "this worker; send them in params['integrals']."
            )
        _INTEGRALS.move_to_end(key)
        return cached
    h1 = np.asarray(decode_array(payload["h1"]), dtype=np.float64)
    h2 = np.asarray(decode_array(payload["h2"]), dtype=np.float64)
    if h1.shape != (norb, norb) or h2.shape != (norb,) * 4:
        raise ValueError(
            f"integrals must have shapes ({norb}, {norb}) and ({norb},)*4; "
            f"got {h1.shape} and {h2.shape}."
        )
    if integrals_hash(h1=h1, h2=h2, nelec=nelec) != key:
        raise ValueError("The integrals do not match problem_hash.")
    _INTEGRALS[key] = (h1, h2)
    while len(_INTEGRALS) > _CACHE_SIZE:
        _INTEGRALS.popitem(last=False)
    return h1, h2


def _ci_strings(
    params: dict[str, Any], name: str, *, norb: int, n_electrons: int
) -> NDArray[np.int64]:
    payload = params.get(name)
    if not isinstance(payload, dict | np.ndarray):
        raise ValueError(f"{name} must be an int64 array.")
    strings = np.asarray(decode_array(payload))
    if strings.dtype != np.int64 or strings.ndim != 1 or strings.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D int64 array.")
    if strings.min() < 0 or strings.max() >= 1 << norb:
        raise ValueError(f"{name} holds strings outside 0..2**{norb}-1.")
    weights = np.bitwise_count(strings.astype(np.uint64))
    if not np.all(weights == n_electrons):
        raise ValueError(f"Every string in {name} must have exactly {n_electrons} set bits.")
    return np.sort(np.unique(strings))


def _solver_options(solver: dict[str, Any]) -> tuple[float | None, dict[str, Any]]:
    unknown = set(solver) - {"spin_sq", *SOLVER_OPTIONS}
    if unknown:
        raise ValueError(
            f"Unknown solver options {sorted(unknown)}; allowed: spin_sq, "
            f"{', '.join(SOLVER_OPTIONS)}."
        )
    spin_sq = solver.get("spin_sq")
    if spin_sq is not None and (not isinstance(spin_sq, int | float) or spin_sq < 0):
        raise ValueError(f"spin_sq must be a non-negative number or null; got {spin_sq!r}.")
    options: dict[str, Any] = {}
    for name in SOLVER_OPTIONS:
        value = solver.get(name)
        if value is None:
            continue
        if not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"solver.{name} must be a positive number; got {value!r}.")
        options[name] = int(value) if name != "tol" else float(value)
    return (None if spin_sq is None else float(spin_sq)), options
