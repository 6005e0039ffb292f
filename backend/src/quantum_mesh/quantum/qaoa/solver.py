"""Solving one block job with QAOA: energies, angle search, sampling, repair, candidates.

Pure and deterministic for a given job (its ``random_seed`` drives the sampling). A node's
``noise_level`` is applied as global depolarising noise on the final state,
``probs -> (1 - eps) probs + eps / 2**n`` with ``eps = min(1, noise_level * n * p)``, both in
the energies the angle search sees and in the samples, so a noisy node really returns worse
candidates.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.qaoa import engine
from quantum_mesh.quantum.qaoa.angles import AngleSearch, normalise, search_angles, split_schedule
from quantum_mesh.quantum.qaoa.blocks import BlockJob, BlockResult
from quantum_mesh.quantum.qaoa.classical import validate_portfolio
from quantum_mesh.quantum.qaoa.problems import (
    knapsack_block_energies,
    portfolio_energies,
    quadratic_form,
    qubo_energies,
    subset_sums,
)

MAX_BLOCK_QUBITS = 22
MAX_SHOTS = 1 << 16
DEFAULT_SHOTS = 1024
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class BlockProblem:
    """A block's diagonal cost and how to start and mix it."""

    energies: FloatArray
    normalised: engine.DiagonalCost
    shift: float
    scale: float
    initial_state: engine.ComplexArray | None
    mixer: engine.Mixer
    totals: FloatArray
    """Value (knapsack) or objective (portfolio) of every basis state."""
    sizes: FloatArray
    """Weight (knapsack) or number of assets (portfolio) of every basis state."""
    feasible: NDArray[np.bool_]


def build_problem(job: BlockJob) -> BlockProblem:
    """Energies, normalised cost, start state and mixer of a block job."""
    n = len(job.item_indices)
    if n > MAX_BLOCK_QUBITS:
        raise InvalidInput(f"A block may have at most {MAX_BLOCK_QUBITS} items. Got {n}.")
    if job.problem == "knapsack":
        energies, totals, sizes = knapsack_block_energies(
            job.values, job.weights, context=job.context
        )
        feasible = sizes <= float(job.context["remaining_capacity"]) + 1e-9
        initial, mixer = None, "x"
    else:
        mu, sigma, budget, q = validate_portfolio(
            job.values,
            job.context.get("covariance", []),
            job.context.get("budget", 0),
            job.context.get("risk_aversion", 0.0),
        )
        objective = subset_sums(mu) - q * quadratic_form(sigma)
        sizes = subset_sums(np.ones(n))
        feasible = sizes == budget
        encoding = job.context.get("encoding", "xy")
        if encoding == "xy":
            energies = -objective
            initial, mixer = engine.dicke_state(n, budget), "xy_ring"
        elif encoding == "penalty":
            scale = float(np.abs(mu).max() + q * np.abs(sigma).sum(axis=1).max())
            energies = portfolio_energies(
                mu, sigma, risk_aversion=q, budget_penalty=2.0 * scale, budget=budget
            )
            initial, mixer = None, "x"
        else:
            raise InvalidInput(f"Unknown portfolio encoding {encoding!r}; use xy or penalty.")
        totals = objective
    mask = feasible if mixer == "xy_ring" else None
    scaled, shift, scale = normalise(energies, mask=mask)
    return BlockProblem(
        energies=energies,
        normalised=engine.DiagonalCost.from_energies(scaled),
        shift=shift,
        scale=scale,
        initial_state=initial,
        mixer=mixer,  # type: ignore[arg-type]
        totals=totals,
        sizes=sizes,
        feasible=feasible,
    )


def noisy_probabilities(
    problem: BlockProblem, gammas: Sequence[float], betas: Sequence[float], noise_level: float
) -> FloatArray:
    """Final-state probabilities with the node's depolarising noise (see module doc)."""
    state = engine.evolve(
        problem.normalised,
        gammas=gammas,
        betas=betas,
        initial_state=problem.initial_state,
        mixer=problem.mixer,
    )
    probs = engine.probabilities(state)
    eps = _depolarised_share(problem, gammas, noise_level)
    if eps > 0:
        probs = (1.0 - eps) * probs + eps / probs.size
    return probs


def _depolarised_share(problem: BlockProblem, gammas: Sequence[float], noise_level: float) -> float:
    """The share of the uniform distribution in the node's noisy result (module doc)."""
    return min(1.0, max(0.0, noise_level) * problem.normalised.num_qubits * len(gammas))


def noisy_energy(
    problem: BlockProblem, gammas: Sequence[float], betas: Sequence[float], noise_level: float
) -> float:
    """Energy expectation (problem units) under the node's depolarising noise: that of
    :func:`noisy_probabilities`, without building the state where it need not be built.

    From ``|+>^n`` with the X mixer the fused kernel sums the energy in its last walk over
    the state (no state stored, no probabilities): at n = 20 about a third of the work. The
    noise mixes the ideal distribution with the uniform one, so its energy is the same mix
    of the ideal energy and the mean energy."""
    if problem.initial_state is not None or problem.mixer != "x":
        probs = noisy_probabilities(problem, gammas, betas, noise_level)
        return float(probs @ problem.energies)
    normalised = engine.qaoa_expectation(problem.normalised, gammas=gammas, betas=betas)
    ideal = normalised * problem.scale + problem.shift  # the normalisation is affine
    eps = _depolarised_share(problem, gammas, noise_level)
    if eps > 0:
        return (1.0 - eps) * ideal + eps * float(problem.energies.mean())
    return ideal


def choose_angles(
    problem: BlockProblem, qaoa: Mapping[str, Any], noise_level: float
) -> AngleSearch:
    """Fixed angles from ``qaoa["gammas"/"betas"]`` or a search (``optimizer``)."""
    if "gammas" in qaoa or "betas" in qaoa:
        gammas, betas = split_schedule([*qaoa.get("gammas", []), *qaoa.get("betas", [])])
        probs = noisy_probabilities(problem, gammas, betas, noise_level)
        return AngleSearch(gammas, betas, float(probs @ problem.normalised.energies), 1)
    found = search_angles(
        problem.normalised,
        p=int(qaoa.get("p", 1)),
        optimizer=qaoa.get("optimizer", "grid"),
        grid_size=int(qaoa.get("grid_size", 8)),
        maxiter=int(qaoa.get("maxiter", 60)),
        initial_state=problem.initial_state,
        mixer=problem.mixer,
    )
    return found


def run_block(job: BlockJob, *, noise_level: float = 0.0) -> BlockResult:
    """QAOA on one block: best ``top_k`` distinct feasible selections among the samples.

    Infeasible samples are repaired (knapsack: drop the lowest-density chosen items until
    the block fits; portfolio: add or drop assets by best marginal objective until the
    budget holds) before ranking by cost (the block energy).
    """
    started = time.perf_counter()
    problem = build_problem(job)
    shots = int(job.qaoa.get("shots", DEFAULT_SHOTS))
    if not 1 <= shots <= MAX_SHOTS:
        raise InvalidInput(f"shots must be in [1, {MAX_SHOTS}]. Instead, got {shots}.")
    found = choose_angles(problem, job.qaoa, noise_level)
    probs = noisy_probabilities(problem, found.gammas, found.betas, noise_level)
    samples = np.unique(engine.sample_indices(probs, shots=shots, seed=job.random_seed))
    repaired = np.unique(np.array([_repair(job, problem, int(i)) for i in samples]))
    best = engine.best_distinct(repaired, problem.energies, k=job.top_k)
    n = len(job.item_indices)
    cost_of = problem.energies if job.problem == "knapsack" else -problem.totals
    candidates = [
        {
            "bits": engine.index_to_bits(int(i), n),
            "value": _number(problem.totals[i]),
            "weight": _number(problem.sizes[i]),
            "cost": float(cost_of[i]),
        }
        for i in best
    ]
    ground = int(np.argmin(np.where(problem.feasible, problem.energies, np.inf)))
    diagnostics = {
        "energy": float(probs @ problem.energies),
        "best_energy": float(problem.energies[ground]),
        "ground_state_probability": float(probs[ground]),
        "feasible_probability": float(probs[problem.feasible].sum()),
        "p": len(found.gammas),
        "gammas": found.gammas,
        "betas": found.betas,
        "normalisation": {"shift": problem.shift, "scale": problem.scale},
        "optimizer": "fixed" if "gammas" in job.qaoa else job.qaoa.get("optimizer", "grid"),
        "evaluations": found.evaluations,
        "shots": shots,
        "distinct_samples": int(samples.size),
        "qubits": n,
        "mixer": problem.mixer,
        "noise_level": noise_level,
        "seconds": time.perf_counter() - started,
    }
    return BlockResult(
        job_id=job.job_id,
        block_index=job.block_index,
        job_version=job.job_version,
        candidates=candidates,
        diagnostics=diagnostics,
        beam_entry=job.beam_entry,
    )


def _number(x: float) -> float | int:
    return round(x) if float(x).is_integer() else float(x)


def _repair(job: BlockJob, problem: BlockProblem, index: int) -> int:
    if problem.feasible[index]:
        return index
    n = len(job.item_indices)
    if job.problem == "knapsack":
        capacity = float(job.context["remaining_capacity"])
        density = np.asarray(job.values) / np.asarray(job.weights)
        chosen = sorted((q for q in range(n) if (index >> q) & 1), key=lambda q: (density[q], -q))
        for q in chosen:
            index &= ~(1 << q)
            if problem.sizes[index] <= capacity + 1e-9:
                break
        return index
    budget = int(job.context["budget"])
    for _ in range(n):
        count = int(problem.sizes[index])
        if count == budget:
            break
        moves = [index ^ (1 << q) for q in range(n) if ((index >> q) & 1) == (count > budget)]
        index = max(moves, key=lambda m: (problem.totals[m], -m))
    return index


def evaluate_schedule_batch(
    problem: BlockProblem, schedules: Sequence[Sequence[float]], *, noise_level: float = 0.0
) -> list[float]:
    """Energy expectation (in the problem's own units) of each ``[gammas..., betas...]``."""
    out = []
    for schedule in schedules:
        gammas, betas = split_schedule(schedule)
        out.append(noisy_energy(problem, gammas, betas, noise_level))
    return out


def qubo_problem(
    matrix: Sequence[Sequence[float]] | FloatArray, *, offset: float = 0.0
) -> BlockProblem:
    """A QUBO as a block problem (transverse-field mixer, ``|+>^n`` start)."""
    energies = qubo_energies(matrix, offset=offset)
    if energies.size > 1 << MAX_BLOCK_QUBITS:
        raise InvalidInput(f"A QUBO may have at most {MAX_BLOCK_QUBITS} variables.")
    scaled, shift, scale = normalise(energies)
    everything = np.ones(energies.size, dtype=bool)
    return BlockProblem(
        energies=energies,
        normalised=engine.DiagonalCost.from_energies(scaled),
        shift=shift,
        scale=scale,
        initial_state=None,
        mixer="x",
        totals=-energies,
        sizes=subset_sums(np.ones(int(energies.size).bit_length() - 1)),
        feasible=everything,
    )
