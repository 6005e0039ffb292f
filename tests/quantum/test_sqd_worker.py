"""The ``sqd_batch`` worker function and the sample sources."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pyscf")
pytest.importorskip("qiskit_addon_sqd")

from quantum_mesh.arrays import decode_array, encode_array, json_default
from quantum_mesh.errors import InvalidInput
from quantum_mesh.mesh import packing
from quantum_mesh.quantum.sqd.problem import ActiveSpaceProblem, build_from_molecule
from quantum_mesh.quantum.sqd.reference import exact_energy
from quantum_mesh.quantum.sqd.samples import counts_samples, lucj_samples, make_samples
from quantum_mesh.quantum.sqd.worker import MISSING_INTEGRALS, clear_cache, solve_batch

pytestmark = pytest.mark.chem

#: What a node passes: its BLAS/OpenMP thread count.
THREADS = 1


@pytest.fixture(scope="module")
def water() -> ActiveSpaceProblem:
    return build_from_molecule(atom="O 0 0 0; H 0 0.757 0.587; H 0 -0.757 0.587", basis="sto-3g")


def _all_strings(norb: int, n_electrons: int) -> np.ndarray:
    return np.array(
        [sum(1 << i for i in occ) for occ in itertools.combinations(range(norb), n_electrons)],
        dtype=np.int64,
    )


def _job(problem: ActiveSpaceProblem, strs: np.ndarray, **extra: Any) -> dict[str, Any]:
    job = {
        "problem_hash": problem.content_hash,
        "integrals": {"h1": encode_array(problem.h1), "h2": encode_array(problem.h2)},
        "norb": problem.norb,
        "nelec": list(problem.nelec),
        "ci_strs_a": encode_array(strs),
        "ci_strs_b": encode_array(strs),
        "solver": {"spin_sq": 0.0},
        "seed": 1,
        "iteration": 0,
        "batch": 3,
    }
    job.update(extra)
    return job


def test_full_space_batch_reproduces_fci_without_the_core_energy(
    water: ActiveSpaceProblem,
) -> None:
    strs = _all_strings(water.norb, water.nelec[0])

    result = solve_batch(_job(water, strs), threads=THREADS)

    assert result["energy"] + water.core_energy == pytest.approx(exact_energy(water), abs=1e-8)
    assert result["subspace_dim"] == len(strs) ** 2 == water.n_determinants
    assert result["spin_squared"] == pytest.approx(0.0, abs=1e-6)
    occ_a = decode_array(result["orbital_occupancies"]["alpha"])
    assert occ_a.sum() == pytest.approx(water.nelec[0])
    amplitudes = decode_array(result["amplitudes"])
    assert amplitudes.shape == (len(strs), len(strs))
    assert np.linalg.norm(amplitudes) == pytest.approx(1.0)
    assert (result["iteration"], result["batch"], result["seed"]) == (0, 3, 1)
    # One thread solving: its CPU time is the solve's, at most its wall time (plus clock slack).
    assert 0 < result["cpu_seconds"] <= result["seconds"] * 1.05 + 0.01
    # It travels as msgpack with raw arrays (protocol 2) or as strict JSON (protocol 1).
    assert packing.unpack(packing.pack(result))["subspace_dim"] == result["subspace_dim"]
    json.dumps(result, allow_nan=False, default=json_default)


def test_integrals_are_cached_by_hash_per_process(water: ActiveSpaceProblem) -> None:
    strs = _all_strings(water.norb, water.nelec[0])[:5]
    clear_cache()
    without = _job(water, strs)
    del without["integrals"]

    with pytest.raises(ValueError, match=MISSING_INTEGRALS):
        solve_batch(without, threads=THREADS)
    first = solve_batch(_job(water, strs), threads=THREADS)
    second = solve_batch(without, threads=THREADS)

    assert second["energy"] == first["energy"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"problem_hash": "f" * 64}, "do not match problem_hash"),
        ({"ci_strs_a": encode_array(np.array([0b111], dtype=np.int64))}, "exactly 4 set bits"),
        ({"ci_strs_a": encode_array(np.array([1 << 7 | 0b111], dtype=np.int64))}, "outside"),
        ({"nelec": [9, 4]}, "nelec must be"),
        ({"solver": {"spin_sq": 0.0, "bogus": 1}}, "Unknown solver options"),
        ({"seed": "x"}, "seed must be an integer"),
    ],
)
def test_bad_params_raise_value_error(
    water: ActiveSpaceProblem, change: dict[str, Any], message: str
) -> None:
    job = _job(water, _all_strings(water.norb, water.nelec[0])[:4])
    job.update(change)

    with pytest.raises(ValueError, match=message):
        solve_batch(job, threads=THREADS)


def test_uniform_samples_are_seeded(water: ActiveSpaceProblem) -> None:
    first = make_samples(water, source="uniform", n_samples=500, seed=4)
    again = make_samples(water, source="uniform", n_samples=500, seed=4)
    other = make_samples(water, source="uniform", n_samples=500, seed=5)

    assert first.num_bits == 2 * water.norb and first.num_shots == 500
    assert first.get_counts() == again.get_counts() != other.get_counts()


def test_counts_become_a_bit_array_and_bad_counts_are_rejected() -> None:
    bits = counts_samples({"000111000111": 3, "001011000111": 1, "111000111000": 0}, norb=6)

    assert bits.get_counts() == {"000111000111": 3, "001011000111": 1}
    with pytest.raises(InvalidInput, match="12 characters of 0/1"):
        counts_samples({"0101": 3}, norb=6)
    with pytest.raises(InvalidInput, match="non-negative integers"):
        counts_samples({"000111000111": -1}, norb=6)


def test_lucj_samples_have_the_right_electron_counts(water: ActiveSpaceProblem) -> None:
    bits = lucj_samples(water, n_samples=300, seed=3)
    again = lucj_samples(water, n_samples=300, seed=3)

    counts = bits.get_counts()
    assert counts == again.get_counts()
    n = water.norb
    for bitstring in counts:
        assert bitstring[n:].count("1") == water.nelec[0]  # alpha: right half
        assert bitstring[:n].count("1") == water.nelec[1]
    # The Hartree-Fock determinant (lowest orbitals filled) dominates an LUCJ state.
    hartree_fock = ("0" * (n - 4) + "1" * 4) * 2
    assert max(counts, key=counts.__getitem__) == hartree_fock
