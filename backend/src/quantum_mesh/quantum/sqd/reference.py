"""Exact (full CI) energy of an active space, when affordable: the yardstick for SQD."""

from __future__ import annotations

from quantum_mesh.quantum.sqd.problem import ActiveSpaceProblem

MAX_FCI_DETERMINANTS = 1_000_000
"""Above this many determinants the reference is skipped (N2 (10e, 12o): 627k, ~3-5 s)."""


def exact_energy(
    problem: ActiveSpaceProblem,
    *,
    spin_sq: float | None = None,
    max_determinants: int = MAX_FCI_DETERMINANTS,
) -> float | None:
    """Total FCI ground-state energy (core energy included), or ``None`` when too large.

    Args:
        problem: The active space.
        spin_sq: When given, the lowest state with this <S^2> (pyscf ``fix_spin_``), so the
            reference targets the same spin state as an SQD run with the same ``spin_sq``.
        max_determinants: Skip (return ``None``) above this CI dimension.
    """
    if problem.n_determinants > max_determinants:
        return None
    from pyscf import fci

    solver = fci.direct_spin1.FCI()
    solver.verbose = 0
    if spin_sq is not None:
        solver = fci.addons.fix_spin_(solver, ss=spin_sq)
    energy, _ = solver.kernel(
        problem.h1, problem.h2, problem.norb, problem.nelec, ecore=problem.core_energy
    )
    return float(energy)
