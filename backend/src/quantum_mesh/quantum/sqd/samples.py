"""Where an SQD run's bitstrings come from.

Bitstrings have ``2 * norb`` bits in Qiskit's order: beta orbitals on the left, alpha on the
right (``b_{n-1} ... b_0 a_{n-1} ... a_0``), as qiskit-addon-sqd expects.

- ``uniform``: uniformly random bits (``generate_bit_array_uniform``), seeded. The default:
  configuration recovery turns them into a broad spread of determinants, which is what
  reached chemical accuracy on N2/cc-pVDZ (10e, 12o) in our measurements.
- ``lucj``: an LUCJ ansatz built from CCSD amplitudes (ffsim), sampled exactly from its
  statevector. Closed shell only; exponential in ``norb`` (statevector), slow beyond ~14
  orbitals, and its samples are concentrated on few determinants.
- ``counts``: user-supplied bitstring counts (e.g. from hardware).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from qiskit.primitives import BitArray

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.sqd.problem import ActiveSpaceProblem
from quantum_mesh.quantum.sqd.threads import pyscf_threads

SAMPLE_SOURCES = ("uniform", "lucj", "counts")
DEFAULT_SAMPLE_SOURCE = "uniform"
MAX_SAMPLES = 1_000_000
MAX_LUCJ_DETERMINANTS = 20_000_000
#: Classical starting guesses for the orbital occupancies of the first recovery iteration.
INITIAL_OCCUPANCIES = ("hf", "mp2")


def make_samples(
    problem: ActiveSpaceProblem,
    *,
    source: str,
    n_samples: int,
    seed: int,
    counts: Mapping[str, int] | None = None,
) -> BitArray:
    """Dispatch to the named sample source (``counts`` is required for ``"counts"``)."""
    if source == "uniform":
        return uniform_samples(norb=problem.norb, n_samples=n_samples, seed=seed)
    if source == "lucj":
        return lucj_samples(problem, n_samples=n_samples, seed=seed)
    if source == "counts":
        if counts is None:
            raise InvalidInput("sample_source 'counts' needs the bitstring counts.")
        return counts_samples(counts, norb=problem.norb)
    raise InvalidInput(
        f"Unknown sample source {source!r}; choose one of {', '.join(SAMPLE_SOURCES)}.",
        details={"sample_source": source},
    )


def uniform_samples(*, norb: int, n_samples: int, seed: int) -> BitArray:
    """``n_samples`` uniformly random bitstrings of ``2 * norb`` bits."""
    _check_n_samples(n_samples)
    from qiskit_addon_sqd.counts import generate_bit_array_uniform

    return generate_bit_array_uniform(n_samples, 2 * norb, rand_seed=np.random.default_rng(seed))


def counts_samples(counts: Mapping[str, Any], *, norb: int) -> BitArray:
    """Turn ``{"0101...": count}`` (Qiskit order, ``2 * norb`` bits) into a ``BitArray``."""
    if not isinstance(counts, Mapping) or not counts:
        raise InvalidInput("counts must be a non-empty mapping of bitstring to count.")
    n_bits = 2 * norb
    total = 0
    for bitstring, count in counts.items():
        if (
            not isinstance(bitstring, str)
            or len(bitstring) != n_bits
            or set(bitstring) - {"0", "1"}
        ):
            raise InvalidInput(
                f"Every bitstring must be {n_bits} characters of 0/1 (2 x {norb} orbitals); "
                f"got {bitstring!r}.",
                details={"bitstring": str(bitstring)[:80], "bits": n_bits},
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidInput(
                f"Counts must be non-negative integers; got {count!r} for {bitstring}.",
                details={"bitstring": bitstring},
            )
        total += count
    if total == 0 or total > MAX_SAMPLES:
        raise InvalidInput(
            f"The counts must add up to 1..{MAX_SAMPLES} shots; got {total}.",
            details={"shots": total},
        )
    return BitArray.from_counts({k: v for k, v in counts.items() if v}, num_bits=n_bits)


def lucj_samples(problem: ActiveSpaceProblem, *, n_samples: int, seed: int) -> BitArray:
    """Sample an LUCJ state built from the active space's CCSD amplitudes (closed shell)."""
    _check_n_samples(n_samples)
    n_alpha, n_beta = problem.nelec
    if n_alpha != n_beta:
        raise InvalidInput(
            "The LUCJ sample source supports closed-shell active spaces only; "
            f"got {n_alpha} alpha and {n_beta} beta electrons.",
            details={"nelec": [n_alpha, n_beta]},
        )
    if n_alpha in (0, problem.norb):
        raise InvalidInput("LUCJ needs both occupied and virtual active orbitals.")
    if problem.n_determinants > MAX_LUCJ_DETERMINANTS:
        raise InvalidInput(
            f"The LUCJ source simulates the full statevector ({problem.n_determinants} "
            f"amplitudes); at most {MAX_LUCJ_DETERMINANTS} are allowed. Use 'uniform'.",
            details={"determinants": problem.n_determinants},
        )
    import ffsim

    with pyscf_threads(1):  # reproducible amplitudes (see problem.build_from_molecule)
        t1, t2 = _ccsd_amplitudes(problem)
    norb, nelec = problem.norb, problem.nelec
    pairs_aa = [(p, p + 1) for p in range(norb - 1)]
    pairs_ab = [(p, p) for p in range(norb)]
    operator = ffsim.UCJOpSpinBalanced.from_t_amplitudes(
        t2, t1=t1, n_reps=1, interaction_pairs=(pairs_aa, pairs_ab)
    )
    vector = ffsim.apply_unitary(ffsim.hartree_fock_state(norb, nelec), operator, norb, nelec)
    bits = ffsim.sample_state_vector(
        vector,
        norb=norb,
        nelec=nelec,
        shots=n_samples,
        concatenate=True,
        bitstring_type=ffsim.BitstringType.BIT_ARRAY,
        seed=np.random.default_rng(seed),
    )
    return BitArray.from_bool_array(np.asarray(bits, dtype=bool), order="big")


def initial_occupancies(problem: ActiveSpaceProblem, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-spin orbital occupancies computed classically, for the first recovery iteration.

    ``hf``: 1 for the lowest ``n_alpha`` (``n_beta``) active orbitals, 0 above (the
    Hartree-Fock determinant in the canonical active orbitals). ``mp2``: the diagonal of the
    MP2 one-particle density matrix of the active space, halved per spin (closed shell only).
    Neither is a quantum result: they only tell configuration recovery which orbitals to fill
    when it repairs the electron counts of the samples.
    """
    norb, (n_alpha, n_beta) = problem.norb, problem.nelec
    if kind == "hf":
        occ_a = np.zeros(norb)
        occ_b = np.zeros(norb)
        occ_a[:n_alpha] = 1.0
        occ_b[:n_beta] = 1.0
        return occ_a, occ_b
    if kind != "mp2":
        raise InvalidInput(
            f"initial_occupancies must be one of {', '.join(INITIAL_OCCUPANCIES)}; got {kind!r}.",
            details={"field": "initial_occupancies"},
        )
    if n_alpha != n_beta:
        raise InvalidInput(
            "initial_occupancies 'mp2' needs a closed-shell active space; use 'hf'.",
            details={"nelec": [n_alpha, n_beta]},
        )
    if n_alpha in (0, norb):
        return initial_occupancies(problem, "hf")
    from pyscf import mp

    with pyscf_threads(1):  # reproducible, as the integrals themselves
        solver = mp.MP2(_active_space_rhf(problem))
        solver.kernel()
        rdm1 = np.asarray(solver.make_rdm1())
    occupancies = np.clip(np.diag(rdm1) / 2.0, 0.0, 1.0)
    if not np.isfinite(occupancies).all():
        raise InvalidInput("MP2 occupancies are not finite on this active space; use 'hf'.")
    return occupancies.copy(), occupancies.copy()


def _active_space_rhf(problem: ActiveSpaceProblem) -> Any:
    """A pyscf RHF object standing for the active space (identity overlap, its integrals),
    with the canonical active orbitals as its converged orbitals."""
    from pyscf import ao2mo, gto, scf

    norb, n_occ = problem.norb, problem.nelec[0]
    mol = gto.M(verbose=0)
    mol.nelectron = 2 * n_occ
    mol.incore_anyway = True
    mean_field = scf.RHF(mol)
    mean_field.get_hcore = lambda *args: np.asarray(problem.h1)
    mean_field.get_ovlp = lambda *args: np.eye(norb)
    mean_field._eri = ao2mo.restore(8, np.asarray(problem.h2), norb)
    mean_field.mo_coeff = np.eye(norb)
    mean_field.mo_occ = np.array([2.0] * n_occ + [0.0] * (norb - n_occ))
    mean_field.mo_energy = np.diag(problem.h1).copy()
    mean_field.e_tot = 0.0
    return mean_field


def _ccsd_amplitudes(problem: ActiveSpaceProblem) -> tuple[np.ndarray, np.ndarray]:
    """Restricted CCSD on the active-space integrals, in the active orbital basis."""
    from pyscf import cc

    solver = cc.CCSD(_active_space_rhf(problem))
    solver.kernel()
    if not solver.converged or not (np.isfinite(solver.t1).all() and np.isfinite(solver.t2).all()):
        raise InvalidInput("CCSD did not converge on this active space; use 'uniform' samples.")
    return np.asarray(solver.t1), np.asarray(solver.t2)


def _check_n_samples(n_samples: int) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int):
        raise InvalidInput(f"n_samples must be an integer; got {n_samples!r}.")
    if not 1 <= n_samples <= MAX_SAMPLES:
        raise InvalidInput(
            f"n_samples must be between 1 and {MAX_SAMPLES}; got {n_samples}.",
            details={"n_samples": n_samples},
        )


def distinct_bitstrings(bit_array: BitArray) -> int:
    """Number of distinct bitstrings in ``bit_array`` (diagnostic for sample concentration)."""
    return len(bit_array.get_counts())
