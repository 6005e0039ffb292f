"""Choosing QAOA angles for a diagonal cost: coarse grid, linear-ramp schedules, COBYLA.

Angles act on the *normalised* cost ``(E - shift) / scale`` (see :func:`normalise`), so one
grid range fits every block whatever its value scale. A schedule is the flat list
``[gamma_1 .. gamma_p, beta_1 .. beta_p]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.qaoa.engine import ComplexArray, DiagonalCost, Mixer, qaoa_expectation

Optimizer = Literal["grid", "cobyla"]
OPTIMIZERS = ("grid", "cobyla")
MAX_P = 8
GAMMA_RANGE = (0.1, 3.0)
"""Cost angles for a unit-variance cost: the p=1 optimum of knapsack blocks lies in here."""
BETA_RANGE = (-np.pi / 2, np.pi / 2)
"""One period of the expectation in beta (the mixer ``RX(2 beta)`` has period pi)."""


@dataclass(frozen=True, slots=True)
class AngleSearch:
    gammas: list[float]
    betas: list[float]
    energy: float
    evaluations: int


def normalise(
    energies: NDArray[np.float64], *, mask: NDArray[np.bool_] | None = None
) -> tuple[NDArray[np.float64], float, float]:
    """``((E - shift) / scale, shift, scale)`` with the mean and std of ``E`` (over ``mask``)."""
    ref = energies if mask is None else energies[mask]
    shift = float(ref.mean())
    scale = float(ref.std())
    if not scale > 1e-12:
        scale = 1.0
    return (energies - shift) / scale, shift, scale


def ramp(gamma: float, beta: float, p: int) -> tuple[list[float], list[float]]:
    """Linear-ramp schedule: gammas grow to ``gamma``, betas shrink from ``beta``."""
    gammas = [gamma * (k + 1) / p for k in range(p)]
    betas = [beta * (p - k) / p for k in range(p)]
    return gammas, betas


def split_schedule(schedule: Sequence[float]) -> tuple[list[float], list[float]]:
    """``[g_1..g_p, b_1..b_p]`` -> ``(gammas, betas)``."""
    if len(schedule) < 2 or len(schedule) % 2 or len(schedule) // 2 > MAX_P:
        raise InvalidInput(
            f"A schedule is [gammas..., betas...] with 1..{MAX_P} layers. Instead, got "
            f"{len(schedule)} numbers.",
        )
    p = len(schedule) // 2
    return [float(g) for g in schedule[:p]], [float(b) for b in schedule[p:]]


def search_angles(
    cost: DiagonalCost,
    *,
    p: int,
    optimizer: Optimizer = "grid",
    grid_size: int = 8,
    maxiter: int = 60,
    initial_state: ComplexArray | None = None,
    mixer: Mixer = "x",
) -> AngleSearch:
    """Minimise the energy expectation over the angles.

    ``"grid"``: ``grid_size**2`` linear-ramp schedules (for p=1, the plain (gamma, beta)
    grid). ``"cobyla"``: the grid's best, then COBYLA over all ``2p`` angles
    (``maxiter`` evaluations at most).

    Raises:
        InvalidInput: p outside [1, MAX_P], unknown optimizer, grid_size outside [2, 32].
    """
    if not 1 <= p <= MAX_P:
        raise InvalidInput(f"p must be in [1, {MAX_P}]. Instead, got {p}.")
    if optimizer not in OPTIMIZERS:
        raise InvalidInput(f"optimizer must be one of {OPTIMIZERS}. Instead, got {optimizer!r}.")
    if not 2 <= grid_size <= 32:
        raise InvalidInput(f"grid_size must be in [2, 32]. Instead, got {grid_size}.")
    if not 1 <= maxiter <= 2000:
        raise InvalidInput(f"maxiter must be in [1, 2000]. Instead, got {maxiter}.")

    def energy(gammas: Sequence[float], betas: Sequence[float]) -> float:
        return qaoa_expectation(
            cost, gammas=gammas, betas=betas, initial_state=initial_state, mixer=mixer
        )

    best = (np.inf, [0.0] * p, [0.0] * p)
    evaluations = 0
    for gamma in np.linspace(*GAMMA_RANGE, grid_size):
        for beta in np.linspace(*BETA_RANGE, grid_size, endpoint=False):
            gammas, betas = ramp(float(gamma), float(beta), p)
            value = energy(gammas, betas)
            evaluations += 1
            if value < best[0] - 1e-12:
                best = (value, gammas, betas)
    if optimizer == "cobyla":
        counter = [0]

        def objective(x: NDArray[np.float64]) -> float:
            counter[0] += 1
            return energy(x[:p].tolist(), x[p:].tolist())

        start = np.array([*best[1], *best[2]])
        fit = minimize(
            objective, start, method="COBYLA", options={"maxiter": maxiter, "rhobeg": 0.2}
        )
        evaluations += counter[0]
        if float(fit.fun) < best[0]:
            best = (float(fit.fun), fit.x[:p].tolist(), fit.x[p:].tolist())
    return AngleSearch(
        gammas=[float(g) for g in best[1]],
        betas=[float(b) for b in best[2]],
        energy=float(best[0]),
        evaluations=evaluations,
    )
