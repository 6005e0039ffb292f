"""QAOA node methods (``qaoa_block`` and ``qaoa_schedules``), run in a node's worker process
(adapted to the node's context in ``node/handlers.py``): JSON in, JSON out, deterministic for
a given seed. Bad params raise ``ValueError`` (the invoke protocol's ``bad_request``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.qaoa import kernel
from quantum_mesh.quantum.qaoa.blocks import BlockJob
from quantum_mesh.quantum.qaoa.solver import (
    BlockProblem,
    build_problem,
    evaluate_schedule_batch,
    qubo_problem,
    run_block,
)

MAX_COMPOUND_JOBS = 64
MAX_SCHEDULES = 4096
_SCHEDULE_KEYS = ("schedules", "batch_id")


def solve_block(
    params: dict[str, Any], *, peer_id: str, noise_level: float = 0.0, threads: int = 1
) -> dict[str, Any]:
    """``qaoa_block``: solve one :class:`BlockJob` (its ``to_dict()``) or a compound job.

    A compound job ``{"jobs": [job, ...]}`` (at most 64, solved in order) returns
    ``{"results": [result, ...]}``; a single job returns ``BlockResult.to_dict()`` with
    ``diagnostics["peer_id"]`` set to ``peer_id`` (the node that ran it). ``noise_level`` is
    that node's depolarising noise (0 = ideal); ``threads`` its compute threads per worker,
    over which each energy evaluation of 18 qubits or more is split (``kernel.set_threads``).
    """
    kernel.set_threads(threads)
    try:
        if "jobs" in params:
            jobs = params["jobs"]
            if not isinstance(jobs, list) or not 1 <= len(jobs) <= MAX_COMPOUND_JOBS:
                raise InvalidInput(f"'jobs' must be a list of 1..{MAX_COMPOUND_JOBS} block jobs.")
            return {
                "results": [
                    _solve_one(job, peer_id=peer_id, noise_level=noise_level) for job in jobs
                ]
            }
        return _solve_one(params, peer_id=peer_id, noise_level=noise_level)
    except InvalidInput as error:
        raise ValueError(error.message) from error


def _solve_one(params: Mapping[str, Any], *, peer_id: str, noise_level: float) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise InvalidInput("A block job must be an object.")
    job = BlockJob.from_dict(params)
    result = run_block(job, noise_level=noise_level).to_dict()
    result["diagnostics"]["peer_id"] = peer_id
    return result


def evaluate_schedules(
    params: dict[str, Any], *, peer_id: str, noise_level: float = 0.0, threads: int = 1
) -> dict[str, Any]:
    """``qaoa_schedules``: energy expectation of each schedule on one problem, under the
    executing node's depolarising ``noise_level``.

    ``params``: ``schedules: [[gamma_1..gamma_p, beta_1..beta_p], ...]`` plus either the
    fields of a :class:`BlockJob` (angles act on its normalised cost, as in ``qaoa_block``) or
    ``qubo: {"matrix": [[...]], "offset"?: float}`` (angles act on the QUBO normalised to
    zero mean and unit variance). Returns ``energies`` (problem units), ``best_index``,
    ``best_schedule``, ``best_energy``, ``evaluations``, ``seconds``, ``normalisation``,
    ``peer_id`` (as given) and ``batch_id`` (echoed from params, optional). ``threads``: as
    in :func:`solve_block`.
    """
    started = time.perf_counter()
    kernel.set_threads(threads)
    try:
        schedules = params.get("schedules")
        if not isinstance(schedules, list) or not 1 <= len(schedules) <= MAX_SCHEDULES:
            raise InvalidInput(f"'schedules' must be a list of 1..{MAX_SCHEDULES} schedules.")
        problem = _schedule_problem(params)
        energies = evaluate_schedule_batch(problem, schedules, noise_level=noise_level)
    except InvalidInput as error:
        raise ValueError(error.message) from error
    except (TypeError, ValueError) as error:
        raise ValueError(f"Bad schedules request: {error}") from error
    best = int(np.argmin(energies))
    return {
        "energies": energies,
        "best_index": best,
        "best_schedule": [float(x) for x in schedules[best]],
        "best_energy": energies[best],
        "evaluations": len(energies),
        "seconds": time.perf_counter() - started,
        "normalisation": {"shift": problem.shift, "scale": problem.scale},
        "peer_id": peer_id,
        "batch_id": params.get("batch_id"),
    }


def _schedule_problem(params: Mapping[str, Any]) -> BlockProblem:
    if "qubo" in params:
        qubo = params["qubo"]
        if not isinstance(qubo, Mapping) or "matrix" not in qubo:
            raise InvalidInput("'qubo' must be an object with a 'matrix'.")
        return qubo_problem(qubo["matrix"], offset=float(qubo.get("offset", 0.0)))
    job = BlockJob.from_dict({k: v for k, v in params.items() if k not in _SCHEDULE_KEYS})
    return build_problem(job)
