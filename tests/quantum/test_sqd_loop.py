"""The SQD loop against pyscf FCI, sequential vs process-pool batch solves, failed batches."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pyscf")
pytest.importorskip("qiskit_addon_sqd")

from quantum_mesh.errors import ExecutionFailed, InvalidInput
from quantum_mesh.quantum.sqd.local_pool import process_pool_solver, start_process_pool
from quantum_mesh.quantum.sqd.loop import SQDSettings, run_sqd, solve_batches_locally
from quantum_mesh.quantum.sqd.problem import ActiveSpaceProblem, build_from_molecule
from quantum_mesh.quantum.sqd.samples import initial_occupancies
from quantum_mesh.quantum.sqd.settings import PRESETS

pytestmark = pytest.mark.chem

CHEMICAL_ACCURACY_HA = 1.6e-3
# (10e, 10o) N2/6-31G has 63,504 determinants; 100 samples per batch give subspaces of
# roughly a quarter to a half of that, so SQD is a real approximation here, not full CI.
SETTINGS = SQDSettings(
    n_batches=3, samples_per_batch=100, max_iterations=3, n_samples=5000, seed=11
)


@pytest.fixture(scope="module")
def problem() -> ActiveSpaceProblem:
    return build_from_molecule(
        atom="N 0 0 0; N 0 0 1.1", basis="6-31g", active_orbitals=10, active_electrons=10
    )


@pytest.fixture(scope="module")
def sequential(problem: ActiveSpaceProblem) -> dict[str, Any]:
    return run_sqd(problem, settings=SETTINGS, solve_batches=solve_batches_locally)


@pytest.fixture(scope="module")
def small_problem() -> ActiveSpaceProblem:
    return build_from_molecule(atom="N 0 0 0; N 0 0 1.1", basis="sto-3g")


def _fci_energy(problem: ActiveSpaceProblem) -> float:
    """Independent FCI with pyscf's own solver (not via reference.py)."""
    from pyscf import fci

    energy, _ = fci.direct_spin1.FCI().kernel(
        problem.h1, problem.h2, problem.norb, problem.nelec, ecore=problem.core_energy
    )
    return float(energy)


def test_sqd_energy_is_variational_and_chemically_accurate(
    problem: ActiveSpaceProblem, sequential: dict[str, Any]
) -> None:
    exact = _fci_energy(problem)

    assert sequential["reference_energy"] == pytest.approx(exact, abs=1e-9)
    assert sequential["energy"] >= exact - 1e-9
    assert sequential["energy"] - exact <= CHEMICAL_ACCURACY_HA
    assert sequential["error_mha"] == pytest.approx((sequential["energy"] - exact) * 1e3)
    assert sequential["subspace_dim"] < problem.n_determinants
    assert abs(sequential["spin_squared"]) < 1e-3


def test_result_records_every_batch_and_iteration(
    problem: ActiveSpaceProblem, sequential: dict[str, Any]
) -> None:
    iterations = sequential["iterations"]
    batches = sequential["batches"]

    assert 1 <= len(iterations) <= SETTINGS.max_iterations
    assert len(batches) == SETTINGS.n_batches * len(iterations)
    assert {b["node_id"] for b in batches} == {"local"}
    assert all(b["energy"] >= sequential["reference_energy"] - 1e-9 for b in batches)
    assert min(b["energy"] for b in batches) == pytest.approx(sequential["energy"], abs=1e-12)
    assert min(i["energy"] for i in iterations) == pytest.approx(sequential["energy"], abs=1e-12)
    assert sequential["norb"] == 10 and sequential["nelec"] == [5, 5]
    assert sequential["n_batches"] == SETTINGS.n_batches
    assert sequential["settings"]["seed"] == SETTINGS.seed
    json.dumps(sequential, allow_nan=False)  # the result travels as strict JSON


@pytest.fixture(scope="module")
def pool_solver() -> Iterator[Any]:
    pool = start_process_pool(workers=2, threads_per_worker=1)
    try:
        yield process_pool_solver(pool, threads_per_worker=1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_process_pool_batches_give_the_sequential_result(
    problem: ActiveSpaceProblem, sequential: dict[str, Any], pool_solver: Any
) -> None:
    parallel = run_sqd(
        problem, settings=SETTINGS, solve_batches=pool_solver, compute_reference=False
    )

    assert parallel["energy"] == pytest.approx(sequential["energy"], abs=1e-10)
    assert len(parallel["batches"]) == len(sequential["batches"])
    for mine, theirs in zip(parallel["batches"], sequential["batches"], strict=True):
        assert (mine["iteration"], mine["batch"]) == (theirs["iteration"], theirs["batch"])
        assert mine["energy"] == pytest.approx(theirs["energy"], abs=1e-10)
        assert mine["subspace_dim"] == theirs["subspace_dim"]
    assert all(b["node_id"].startswith("process-pool:") for b in parallel["batches"])


def test_non_finite_batch_energies_are_discarded(small_problem: ActiveSpaceProblem) -> None:
    settings = SQDSettings(n_batches=3, samples_per_batch=30, n_samples=2000, seed=5)

    def failing_first_two(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = solve_batches_locally(jobs)
        results[0]["energy"] = math.nan  # a node whose Davidson blew up
        results[1] = {"error": "node lost", "node_id": "gone"}  # a node that never answered
        return results

    result = run_sqd(small_problem, settings=settings, solve_batches=failing_first_two)

    discarded = [b for b in result["batches"] if b["discarded"]]
    kept = [b for b in result["batches"] if not b["discarded"]]
    assert {b["batch"] for b in discarded} == {0, 1}
    assert len(discarded) == 2 * len(result["iterations"])
    assert all(b["energy"] is None and b["error"] for b in discarded)
    assert {b["batch"] for b in kept} == {2}
    assert result["energy"] == pytest.approx(min(b["energy"] for b in kept), abs=1e-12)
    assert result["energy"] >= _fci_energy(small_problem) - 1e-9
    assert all(i["batches_kept"] == 1 for i in result["iterations"])


def test_all_batches_non_finite_raises(small_problem: ActiveSpaceProblem) -> None:
    def all_fail(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "energy": None} for r in solve_batches_locally(jobs)]

    with pytest.raises(ExecutionFailed, match="All 2 batches of iteration 0"):
        run_sqd(
            small_problem,
            settings=SQDSettings(n_batches=2, samples_per_batch=20, n_samples=500),
            solve_batches=all_fail,
        )


def test_progress_is_reported_once_per_iteration(small_problem: ActiveSpaceProblem) -> None:
    events: list[dict[str, Any]] = []
    result = run_sqd(
        small_problem,
        settings=SQDSettings(n_batches=2, samples_per_batch=20, n_samples=1000, max_iterations=2),
        solve_batches=solve_batches_locally,
        on_progress=events.append,
    )

    assert [e["iteration"] for e in events] == [i["iteration"] for i in result["iterations"]]
    assert events[-1]["best_energy"] == pytest.approx(result["energy"], abs=1e-12)


def test_settings_that_do_not_fit_the_problem_are_rejected() -> None:
    radical = build_from_molecule(atom="O 0 0 0; H 0 0 0.97", basis="sto-3g", spin=1)

    with pytest.raises(InvalidInput, match="symmetrize_spin needs equal alpha and beta"):
        run_sqd(radical, settings=SQDSettings(), solve_batches=solve_batches_locally)
    with pytest.raises(InvalidInput, match=r"spin_sq=0.0 is impossible"):
        run_sqd(
            radical,
            settings=SQDSettings(symmetrize_spin=False),
            solve_batches=solve_batches_locally,
        )


def test_open_shell_sqd_reaches_the_doublet_fci_energy() -> None:
    radical = build_from_molecule(atom="O 0 0 0; H 0 0 0.97", basis="sto-3g", spin=1)
    settings = SQDSettings(symmetrize_spin=False, spin_sq=0.75, n_samples=2000, seed=2)

    result = run_sqd(radical, settings=settings, solve_batches=solve_batches_locally)

    assert result["energy"] == pytest.approx(_fci_energy(radical), abs=1e-6)
    assert result["spin_squared"] == pytest.approx(0.75, abs=1e-4)


def test_counts_samples_run_and_counts_without_valid_bitstrings_are_rejected(
    small_problem: ActiveSpaceProblem,
) -> None:
    n = small_problem.norb
    hartree_fock = ("0" * (n - 5) + "1" * 5) * 2
    excited = ("0" * (n - 6) + "1" + "0" + "1" * 4) * 2
    settings = SQDSettings(sample_source="counts", counts={hartree_fock: 90, excited: 10})

    result = run_sqd(small_problem, settings=settings, solve_batches=solve_batches_locally)

    assert result["samples"] == {"source": "counts", "shots": 100, "distinct": 2}
    assert result["energy"] >= _fci_energy(small_problem) - 1e-9

    wrong = SQDSettings(sample_source="counts", counts={"1" * (2 * n): 5})
    with pytest.raises(InvalidInput, match="No bitstring in counts has 5 alpha electrons"):
        run_sqd(small_problem, settings=wrong, solve_batches=solve_batches_locally)


def test_a_resumed_run_replays_finished_iterations_and_ends_with_the_same_energy(
    problem: ActiveSpaceProblem,
) -> None:
    """A checkpoint after each iteration; resuming from the first one sends only the later
    iterations to the solver and ends exactly where the uninterrupted run ended."""
    settings = SQDSettings(
        n_batches=2, samples_per_batch=60, max_iterations=3, n_samples=3000, seed=21,
        energy_tol=1e-14, occupancies_tol=1e-14,
    )  # fmt: skip
    snapshots: list[dict[str, Any]] = []
    full = run_sqd(
        problem, settings=settings, solve_batches=solve_batches_locally,
        checkpoint=snapshots.append, compute_reference=False,
    )  # fmt: skip
    assert len(full["iterations"]) == 3 and len(snapshots) == 3
    assert [len(s["iterations"]) for s in snapshots] == [1, 2, 3]
    stored = json.loads(json.dumps(snapshots[0]))  # what the database keeps
    sent: list[int] = []

    def counting(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sent.extend(job["iteration"] for job in jobs)
        return solve_batches_locally(jobs)

    resumed = run_sqd(
        problem, settings=settings, solve_batches=counting, resume=stored,
        compute_reference=False,
    )  # fmt: skip
    assert sorted(set(sent)) == [1, 2]  # iteration 0 came from the checkpoint
    assert resumed["resumed_iterations"] == 1
    assert resumed["energy"] == pytest.approx(full["energy"], abs=1e-10)
    assert [i["energy"] for i in resumed["iterations"]] == pytest.approx(
        [i["energy"] for i in full["iterations"]], abs=1e-10
    )
    assert resumed["best_batch"] == full["best_batch"]
    # A snapshot of another run (another seed) is ignored: everything is solved again.
    sent.clear()
    other = dataclasses.replace(settings, seed=22)
    run_sqd(problem, settings=other, solve_batches=counting, resume=stored, compute_reference=False)
    assert 0 in sent


def test_the_accurate_preset_runs_and_reports_its_settings(
    small_problem: ActiveSpaceProblem,
) -> None:
    settings = SQDSettings.from_dict({"preset": "accurate", "n_samples": 2000, "seed": 4})
    assert settings.max_iterations == PRESETS["accurate"]["max_iterations"] > 3

    result = run_sqd(small_problem, settings=settings, solve_batches=solve_batches_locally)

    assert result["settings"]["preset"] == "accurate"
    assert result["settings"]["max_iterations"] == settings.max_iterations
    assert 1 <= len(result["iterations"]) <= settings.max_iterations
    exact = _fci_energy(small_problem)
    assert exact - 1e-9 <= result["energy"] <= exact + CHEMICAL_ACCURACY_HA


def test_mp2_initial_occupancies_repair_every_sample_from_the_first_iteration(
    problem: ActiveSpaceProblem,
) -> None:
    """Without a guess, iteration 0 keeps only the few uniform samples whose electron counts
    are right; with MP2 occupancies it repairs all of them, and starts far lower."""
    base = SQDSettings(n_batches=2, samples_per_batch=40, max_iterations=1, n_samples=2000)
    plain, hinted = (
        run_sqd(
            problem,
            settings=dataclasses.replace(base, initial_occupancies=guess),
            solve_batches=solve_batches_locally,
            compute_reference=False,
        )
        for guess in (None, "mp2")
    )
    assert hinted["settings"]["initial_occupancies"] == "mp2"
    assert hinted["energy"] < plain["energy"]


def test_classical_initial_occupancies(small_problem: ActiveSpaceProblem) -> None:
    n_alpha, n_beta = small_problem.nelec
    hf_a, hf_b = initial_occupancies(small_problem, "hf")
    assert hf_a.tolist() == [1.0] * n_alpha + [0.0] * (small_problem.norb - n_alpha)
    assert hf_b.sum() == n_beta
    mp2_a, mp2_b = initial_occupancies(small_problem, "mp2")
    assert np.array_equal(mp2_a, mp2_b)
    assert mp2_a.sum() == pytest.approx(n_alpha, abs=1e-8)
    assert np.all((mp2_a >= 0) & (mp2_a <= 1))
    # Correlation moves a little occupation from the occupied to the virtual orbitals.
    assert 0.9 < mp2_a[:n_alpha].min() < 1.0 and 0.0 < mp2_a[n_alpha:].max() < 0.1
    radical = build_from_molecule(atom="O 0 0 0; H 0 0 0.97", basis="sto-3g", spin=1)
    with pytest.raises(InvalidInput, match="closed-shell"):
        initial_occupancies(radical, "mp2")
    assert initial_occupancies(radical, "hf")[0].sum() == radical.nelec[0]
