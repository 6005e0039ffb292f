"""The SQD loop: qiskit-addon-sqd's ``diagonalize_fermionic_hamiltonian`` with its batch
diagonalisations handed to a caller-supplied, synchronous ``solve_batches``.

The addon does everything except the diagonalisations: configuration recovery, subsampling
into batches, spin symmetrisation, carry-over and the iteration/convergence logic. Its
``sci_solver`` hook receives every batch of an iteration in one call; ours turns them into
``sqd_batch`` jobs (the params of :func:`quantum_mesh.quantum.sqd.worker.solve_batch`),
calls ``solve_batches(jobs)`` once (the coordinator dispatches them over the mesh in
parallel and blocks until all return, adding ``node_id`` to each result), and rebuilds the
addon's ``SCIResult`` objects from the answers. A batch whose energy is non-finite, or
whose result carries an ``error``, is discarded (the addon accepts fewer results than
batches); if every batch of an iteration is discarded the run fails.

**Checkpoints and resuming.** The addon's loop has no way to start at iteration *k*, but it
is deterministic: the same samples, seed and batch answers give the same subspaces. So after
each iteration ``checkpoint`` receives every batch answer so far, reduced to what the loop
reads from it (energy, occupancies, and the carry-over CI strings, chosen by the addon's own
``StandardPolicy.select_carryover`` from the full state while it is at hand); a resumed run
replays the loop with those answers for the finished iterations, sending nothing to the
nodes, and dispatches from the first unfinished one. Same seed, same answer as a run that was
never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from quantum_mesh.arrays import decode_array
from quantum_mesh.errors import ExecutionFailed, InvalidInput
from quantum_mesh.quantum.sqd.problem import ActiveSpaceProblem
from quantum_mesh.quantum.sqd.reference import exact_energy
from quantum_mesh.quantum.sqd.samples import (
    distinct_bitstrings,
    initial_occupancies,
    make_samples,
)
from quantum_mesh.quantum.sqd.settings import SQDSettings
from quantum_mesh.quantum.sqd.worker import solve_batch_with_threads

if TYPE_CHECKING:
    from qiskit_addon_sqd.fermion import SCIResult

__all__ = [
    "SQD_BATCH_METHOD",
    "SQDSettings",
    "SolveBatches",
    "check_compatible",
    "run_sqd",
    "solve_batches_locally",
]

SQD_BATCH_METHOD = "sqd_batch"
"""Node method that solves one job built here (``quantum.sqd.worker:solve_batch``)."""

SolveBatches = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def run_sqd(
    problem: ActiveSpaceProblem,
    *,
    settings: SQDSettings,
    solve_batches: SolveBatches,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    compute_reference: bool = True,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run SQD on ``problem``; every batch diagonalisation goes through ``solve_batches``.

    Args:
        problem: The active space.
        settings: Tuning and seed.
        solve_batches: Synchronous ``jobs -> results`` (same order and length). Each job is
            the params dict of the ``sqd_batch`` node method; each result is what that
            method returns, plus ``node_id``; a failed batch may be reported as a dict
            with ``error`` (it is discarded like a non-finite energy).
        on_progress: Called after each iteration with ``{"iteration", "max_iterations",
            "energy", "best_energy", "batches_done"}``; an exception raised there aborts
            the run (a cancellation hook).
        compute_reference: Compute the exact energy when affordable (``reference.py``).
        checkpoint: Receives, after each iteration, a JSON-safe snapshot of every batch
            answer so far (see the module docstring); returns once it is stored.
        resume: The last snapshot of an interrupted run: its iterations are replayed
            without dispatching and the run goes on from the next one. A snapshot of
            another problem, seed or settings is ignored.

    Returns:
        ``energy`` (total, core energy included), ``core_energy``, ``reference_energy``,
        ``error_mha``, ``spin_squared``, ``subspace_dim``, ``orbital_occupancies``,
        ``best_batch``, ``iterations``, ``batches`` (batch energies are totals too),
        ``n_batches``, ``norb``, ``nelec``, ``settings``, ``problem``, ``samples``,
        ``timing``.

    Raises:
        InvalidInput: settings that do not fit the problem (spin, electron counts).
        ExecutionFailed: every batch of an iteration failed or was non-finite, or
            ``solve_batches`` returned the wrong number of results.
    """
    check_compatible(problem, settings)
    started = time.perf_counter()
    sample_seed, loop_seed = (
        int(s) for s in np.random.SeedSequence(settings.seed).generate_state(2, dtype=np.uint32)
    )
    bit_array = make_samples(
        problem,
        source=settings.sample_source,
        n_samples=settings.n_samples,
        seed=sample_seed,
        counts=settings.counts,
    )
    start_occupancies = (
        None
        if settings.initial_occupancies is None
        else initial_occupancies(problem, settings.initial_occupancies)
    )
    sampled = time.perf_counter()

    from qiskit_addon_sqd.fermion import diagonalize_fermionic_hamiltonian

    dispatcher = _BatchDispatcher(
        problem=problem,
        settings=settings,
        solve_batches=solve_batches,
        on_progress=on_progress,
        checkpoint=checkpoint,
        resume=resume,
    )
    best = diagonalize_fermionic_hamiltonian(
        np.asarray(problem.h1),
        np.asarray(problem.h2),
        bit_array,
        settings.samples_per_batch,
        problem.norb,
        problem.nelec,
        num_batches=settings.n_batches,
        energy_tol=settings.energy_tol,
        occupancies_tol=settings.occupancies_tol,
        max_iterations=settings.max_iterations,
        sci_solver=dispatcher,
        symmetrize_spin=settings.symmetrize_spin,
        max_dim=settings.max_dim,
        initial_occupancies=start_occupancies,
        carryover_threshold=settings.carryover_threshold,
        callback=dispatcher.end_iteration,
        seed=loop_seed,
    )
    solved = time.perf_counter()

    reference = exact_energy(problem, spin_sq=settings.spin_sq) if compute_reference else None
    energy = float(best.energy) + problem.core_energy
    best_record = dispatcher.record_of(best)
    occ_a, occ_b = best.orbital_occupancies
    return {
        "energy": energy,
        "core_energy": problem.core_energy,
        "reference_energy": reference,
        "error_mha": None if reference is None else (energy - reference) * 1000.0,
        "spin_squared": best_record["spin_squared"],
        "subspace_dim": best_record["subspace_dim"],
        "orbital_occupancies": {
            "alpha": [float(x) for x in occ_a],
            "beta": [float(x) for x in occ_b],
        },
        "best_batch": {k: best_record[k] for k in ("iteration", "batch", "node_id")},
        "iterations": dispatcher.iterations,
        "resumed_iterations": dispatcher.replayed,
        "batches": dispatcher.batches,
        "n_batches": settings.n_batches,
        "norb": problem.norb,
        "nelec": list(problem.nelec),
        "settings": settings.to_dict(),
        "problem": {"description": problem.description, "content_hash": problem.content_hash},
        "samples": {
            "source": settings.sample_source,
            "shots": int(bit_array.num_shots),
            "distinct": distinct_bitstrings(bit_array),
        },
        "timing": {
            "sampling_s": sampled - started,
            "sqd_loop_s": solved - sampled,
            "batch_seconds_sum": sum(b["seconds"] or 0.0 for b in dispatcher.batches),
            "batch_cpu_seconds_sum": sum(b.get("cpu_seconds") or 0.0 for b in dispatcher.batches),
            "reference_s": time.perf_counter() - solved,
            "total_s": time.perf_counter() - started,
        },
    }


def solve_batches_locally(
    jobs: list[dict[str, Any]], *, threads: int | None = None
) -> list[dict[str, Any]]:
    """Solve ``jobs`` one after another in this process (``node_id`` ``"local"``).

    ``threads`` sets pyscf's OpenMP threads for the solves (``None``: leave as is).
    """
    return [{**solve_batch_with_threads(job, threads=threads), "node_id": "local"} for job in jobs]


class _BatchDispatcher:
    """The ``sci_solver`` hook: batches -> jobs -> ``solve_batches`` -> ``SCIResult``s."""

    def __init__(
        self,
        *,
        problem: ActiveSpaceProblem,
        settings: SQDSettings,
        solve_batches: SolveBatches,
        on_progress: Callable[[dict[str, Any]], None] | None,
        checkpoint: Callable[[dict[str, Any]], None] | None = None,
        resume: Mapping[str, Any] | None = None,
    ) -> None:
        from qiskit_addon_sqd.fermion import StandardPolicy

        self._problem = problem
        self._settings = settings
        self._solve_batches = solve_batches
        self._on_progress = on_progress
        self._checkpoint = checkpoint
        # The policy the addon's loop uses, asked for carry-over strings while the state is here.
        self._policy = StandardPolicy(carryover_threshold=settings.carryover_threshold)
        self._tag = _run_tag(problem, settings)
        self._saved: list[list[dict[str, Any]]] = []
        self._replay: list[list[dict[str, Any]]] = []
        if resume is not None and resume.get("tag") == self._tag:
            self._replay = [list(answers) for answers in resume.get("iterations", [])]
        #: Iterations taken from a checkpoint instead of the nodes.
        self.replayed = 0
        # Arrays travel as raw bytes on the mesh (and as themselves to a local pool).
        self._integrals = {"h1": problem.h1, "h2": problem.h2}
        self._produced: list[tuple[SCIResult, dict[str, Any]]] = []
        self._iteration = 0
        self._best = math.inf
        self.batches: list[dict[str, Any]] = []
        self.iterations: list[dict[str, Any]] = []

    def __call__(
        self,
        ci_strings: list[tuple[np.ndarray, np.ndarray]],
        one_body_tensor: np.ndarray,
        two_body_tensor: np.ndarray,
        norb: int,
        nelec: tuple[int, int],
    ) -> list[SCIResult]:
        jobs = [
            self._job(index, strs_a, strs_b) for index, (strs_a, strs_b) in enumerate(ci_strings)
        ]
        replaying = self._iteration < len(self._replay)
        answers = self._replay[self._iteration] if replaying else self._solve_batches(jobs)
        if len(answers) != len(jobs):
            raise ExecutionFailed(
                f"solve_batches returned {len(answers)} results for {len(jobs)} batches.",
                details={"iteration": self._iteration},
            )
        kept: list[SCIResult] = []
        saved: list[dict[str, Any]] = []
        for job, answer in zip(jobs, answers, strict=True):
            record, result = self._read(job, answer, norb=norb, nelec=nelec, replayed=replaying)
            self.batches.append(record)
            if result is not None and not replaying:
                answer = self._replayable(answer, result)
                result = _sci_result_replayed(answer, energy=result.energy)
            saved.append(_saved_answer(answer, record))
            if result is not None:
                self._produced.append((result, record))
                kept.append(result)
        self._saved.append(saved)
        if not kept:
            raise ExecutionFailed(
                f"All {len(jobs)} batches of iteration {self._iteration} failed or returned a "
                "non-finite energy.",
                details={"iteration": self._iteration, "batches": self.batches[-len(jobs) :]},
            )
        return kept

    def _replayable(self, answer: dict[str, Any], result: SCIResult) -> dict[str, Any]:
        """The answer with the carry-over the addon would choose from its full state."""
        strs_a, strs_b = self._policy.select_carryover(
            result, symmetrize_spin=self._settings.symmetrize_spin
        )
        return {**answer, "carryover": [np.asarray(strs_a), np.asarray(strs_b)]}

    def end_iteration(self, results: list[SCIResult]) -> None:
        """The addon's callback: close the iteration's bookkeeping and report progress."""
        replayed = self._iteration < len(self._replay)
        if replayed:
            self.replayed += 1
        elif self._checkpoint is not None:
            self._checkpoint({"tag": self._tag, "iterations": [list(i) for i in self._saved]})
        energy = min(float(r.energy) for r in results) + self._problem.core_energy
        self._best = min(self._best, energy)
        self.iterations.append(
            {"iteration": self._iteration, "energy": energy, "batches_kept": len(results)}
        )
        if self._on_progress is not None:
            self._on_progress(
                {
                    "iteration": self._iteration,
                    "max_iterations": self._settings.max_iterations,
                    "energy": energy,
                    "best_energy": self._best,
                    "batches_done": len(self.batches),
                }
            )
        self._iteration += 1

    def record_of(self, result: SCIResult) -> dict[str, Any]:
        """The batch record of a result this hook produced."""
        return next(record for produced, record in self._produced if produced is result)

    def _job(self, index: int, strs_a: np.ndarray, strs_b: np.ndarray) -> dict[str, Any]:
        settings = self._settings
        seed = int(
            np.random.SeedSequence([settings.seed, self._iteration, index]).generate_state(
                1, dtype=np.uint32
            )[0]
        )
        solver: dict[str, Any] = {"spin_sq": settings.spin_sq}
        if settings.max_cycle is not None:
            solver["max_cycle"] = settings.max_cycle
        if settings.tol is not None:
            solver["tol"] = settings.tol
        return {
            "problem_hash": self._problem.content_hash,
            "integrals": self._integrals,
            "norb": self._problem.norb,
            "nelec": list(self._problem.nelec),
            "ci_strs_a": np.asarray(strs_a, dtype=np.int64),
            "ci_strs_b": np.asarray(strs_b, dtype=np.int64),
            "solver": solver,
            "seed": seed,
            "iteration": self._iteration,
            "batch": index,
        }

    def _read(
        self,
        job: dict[str, Any],
        answer: dict[str, Any],
        *,
        norb: int,
        nelec: tuple[int, int],
        replayed: bool = False,
    ) -> tuple[dict[str, Any], SCIResult | None]:
        record: dict[str, Any] = {
            "iteration": job["iteration"],
            "batch": job["batch"],
            "node_id": answer.get("node_id"),
            "attempts": answer.get("attempts", 1),
            "energy": None,
            "subspace_dim": answer.get("subspace_dim"),
            "seconds": answer.get("seconds"),
            "cpu_seconds": answer.get("cpu_seconds"),
            "spin_squared": answer.get("spin_squared"),
            "discarded": True,
        }
        if answer.get("error") is not None:
            record["error"] = answer["error"]
            return record, None
        energy = answer.get("energy")
        if not isinstance(energy, int | float) or not math.isfinite(energy):
            record["error"] = f"non-finite batch energy {energy!r}"
            return record, None
        try:
            result = (
                _sci_result_replayed(answer, energy=float(energy))
                if replayed
                else _sci_result(answer, energy=float(energy), norb=norb, nelec=nelec)
            )
        except (KeyError, TypeError, ValueError) as error:
            record["error"] = f"malformed batch result: {error}"
            return record, None
        record["energy"] = float(energy) + self._problem.core_energy
        record["discarded"] = False
        return record, result


#: Settings added after checkpoints existed: left out of the tag while unset, so a run
#: checkpointed before they existed still resumes.
_LATER_SETTINGS = ("initial_occupancies", "preset")


def _run_tag(problem: ActiveSpaceProblem, settings: SQDSettings) -> str:
    """Names the run a checkpoint belongs to: the integrals and every setting (seed too)."""
    tagged = {
        key: value
        for key, value in settings.to_dict().items()
        if not (key in _LATER_SETTINGS and value is None)
    }
    text = json.dumps([problem.content_hash, tagged], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: What a checkpoint keeps of a batch answer: everything but the CI vector.
_SAVED_KEYS = (
    "node_id",
    "attempts",
    "energy",
    "subspace_dim",
    "seconds",
    "cpu_seconds",
    "spin_squared",
    "orbital_occupancies",
    "carryover",
    "error",
)


def _saved_answer(answer: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe: arrays as lists (occupancies are floats, carry-over strings integers)."""
    saved: dict[str, Any] = {}
    for key in _SAVED_KEYS:
        if key not in answer:
            continue
        value = answer[key]
        if key == "orbital_occupancies" and isinstance(value, dict):
            value = {k: _floats(v).tolist() for k, v in value.items()}
        elif key == "carryover":
            value = [np.asarray(v, dtype=np.int64).tolist() for v in value]
        saved[key] = value
    if record.get("error") is not None:
        saved["error"] = record["error"]
    return saved


def _floats(value: Any) -> np.ndarray:
    """Occupancies from a node (an array, or its JSON form) or from a checkpoint (a list)."""
    if isinstance(value, list):
        return np.asarray(value, dtype=np.float64)
    return np.asarray(decode_array(value), dtype=np.float64)


def _sci_result_replayed(answer: dict[str, Any], *, energy: float) -> SCIResult:
    """A batch's result as the loop needs it again: no CI vector, its carry-over given."""
    from qiskit_addon_sqd.fermion import SCIResult

    occupancies = answer["orbital_occupancies"]
    strs_a, strs_b = answer["carryover"]
    return SCIResult(
        energy=energy,
        sci_state=None,
        orbital_occupancies=(_floats(occupancies["alpha"]), _floats(occupancies["beta"])),
        carryover=(np.asarray(strs_a, dtype=np.int64), np.asarray(strs_b, dtype=np.int64)),
    )


def _sci_result(
    answer: dict[str, Any], *, energy: float, norb: int, nelec: tuple[int, int]
) -> SCIResult:
    from qiskit_addon_sqd.fermion import SCIResult, SCIState

    state = SCIState(
        amplitudes=decode_array(answer["amplitudes"]),
        ci_strs_a=decode_array(answer["ci_strs_a"]),
        ci_strs_b=decode_array(answer["ci_strs_b"]),
        norb=norb,
        nelec=nelec,
    )
    occupancies = answer["orbital_occupancies"]
    return SCIResult(
        energy=energy,
        sci_state=state,
        orbital_occupancies=(
            decode_array(occupancies["alpha"]),
            decode_array(occupancies["beta"]),
        ),
    )


def check_compatible(problem: ActiveSpaceProblem, settings: SQDSettings) -> None:
    """Settings that cannot work on this problem raise ``InvalidInput`` (the workflow checks
    this while validating, so such a run is a 422 and never a job)."""
    n_alpha, n_beta = problem.nelec
    if settings.symmetrize_spin and n_alpha != n_beta:
        raise InvalidInput(
            f"symmetrize_spin needs equal alpha and beta electrons; got {n_alpha} and {n_beta}. "
            "Set symmetrize_spin to false for open-shell systems.",
            details={"nelec": [n_alpha, n_beta]},
        )
    if settings.initial_occupancies == "mp2" and n_alpha != n_beta:
        raise InvalidInput(
            "initial_occupancies 'mp2' needs equal alpha and beta electrons; got "
            f"{n_alpha} and {n_beta}. Use 'hf' or null for open-shell systems.",
            details={"field": "initial_occupancies", "nelec": [n_alpha, n_beta]},
        )
    s_z = (n_alpha - n_beta) / 2
    if settings.spin_sq is not None and settings.spin_sq < s_z * (s_z + 1) - 1e-9:
        raise InvalidInput(
            f"spin_sq={settings.spin_sq} is impossible with {n_alpha} alpha and {n_beta} beta "
            f"electrons (<S^2> >= {s_z * (s_z + 1)}); use S(S+1) of the target state or null.",
            details={"spin_sq": settings.spin_sq, "nelec": [n_alpha, n_beta]},
        )
    if settings.sample_source == "counts" and settings.counts is not None:
        lengths = {len(k) for k in settings.counts}
        if lengths != {2 * problem.norb}:
            raise InvalidInput(
                f"Counts bitstrings must have {2 * problem.norb} bits (2 x {problem.norb} "
                f"active orbitals); got lengths {sorted(lengths)}.",
            )
        norb = problem.norb
        if not any(
            k[norb:].count("1") == n_alpha and k[:norb].count("1") == n_beta
            for k, count in settings.counts.items()
            if count
        ):
            raise InvalidInput(
                f"No bitstring in counts has {n_alpha} alpha electrons (right half) and "
                f"{n_beta} beta electrons (left half); SQD needs at least one to start from.",
                details={"nelec": [n_alpha, n_beta]},
            )
