"""Active-space problems: built from molecules and FCIDUMPs, checked against pyscf directly."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

pytest.importorskip("pyscf")
pytest.importorskip("qiskit_addon_sqd")

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.sqd.params import parse_sqd_params
from quantum_mesh.quantum.sqd.problem import (
    ActiveSpaceProblem,
    build_from_fcidump,
    build_from_molecule,
)
from quantum_mesh.quantum.sqd.reference import exact_energy

pytestmark = pytest.mark.chem

WATER = "O 0 0 0; H 0 0.757 0.587; H 0 -0.757 0.587"
N2 = "N 0 0 0; N 0 0 1.1"


def _pyscf_casci_energy(atom: str, basis: str, ncas: int, nelecas: int) -> float:
    """CASCI energy computed by pyscf on its own, as the independent yardstick."""
    from pyscf import gto, mcscf, scf

    mol = gto.M(atom=atom, basis=basis, verbose=0)
    mean_field = scf.RHF(mol).run()
    return float(mcscf.CASCI(mean_field, ncas, nelecas).run().e_tot)


def test_water_default_active_space_freezes_the_core_and_matches_pyscf_casci() -> None:
    problem = build_from_molecule(atom=WATER, basis="sto-3g")

    assert problem.norb == 6 and problem.nelec == (4, 4)
    assert problem.h2.shape == (6, 6, 6, 6)
    assert np.allclose(problem.h2, problem.h2.transpose(1, 0, 2, 3))
    assert np.allclose(problem.h2, problem.h2.transpose(2, 3, 0, 1))
    energy = exact_energy(problem)
    assert energy is not None
    assert energy == pytest.approx(_pyscf_casci_energy(WATER, "sto-3g", 6, 8), abs=1e-8)


def test_explicit_active_space_matches_pyscf_casci() -> None:
    problem = build_from_molecule(atom=N2, basis="sto-3g", active_orbitals=6, active_electrons=6)

    assert problem.norb == 6 and problem.nelec == (3, 3)
    energy = exact_energy(problem)
    assert energy == pytest.approx(_pyscf_casci_energy(N2, "sto-3g", 6, 6), abs=1e-8)


def test_the_content_hash_is_reproducible_and_survives_the_wire() -> None:
    first = build_from_molecule(atom=N2, basis="sto-3g")
    second = build_from_molecule(atom=N2, basis="sto-3g")
    restored = ActiveSpaceProblem.from_dict(first.to_dict())

    assert first.content_hash == second.content_hash == restored.content_hash
    assert np.array_equal(restored.h2, first.h2) and restored.core_energy == first.core_energy

    tampered = first.to_dict()
    tampered["content_hash"] = "0" * 64
    with pytest.raises(InvalidInput, match="does not match its content_hash"):
        ActiveSpaceProblem.from_dict(tampered)


def test_fcidump_round_trip_gives_the_same_problem_and_energy() -> None:
    from pyscf.tools import fcidump

    problem = build_from_molecule(atom=WATER, basis="sto-3g")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "water.fcidump")
        fcidump.from_integrals(
            path, problem.h1, problem.h2, problem.norb, problem.nelec, nuc=problem.core_energy
        )
        with open(path, encoding="utf-8") as handle:
            text = handle.read()

    restored = build_from_fcidump(text)

    assert restored.norb == problem.norb and restored.nelec == problem.nelec
    assert np.allclose(restored.h1, problem.h1, atol=1e-14)
    assert np.allclose(restored.h2, problem.h2, atol=1e-14)
    assert restored.core_energy == pytest.approx(problem.core_energy, abs=1e-12)
    assert exact_energy(restored) == pytest.approx(exact_energy(problem), abs=1e-10)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not an fcidump", "&FCI"),
        ("&FCI NORB=40,NELEC=2,MS2=0,\n&END\n", "NORB=40"),
        ("&FCI NORB=2,NELEC=3,MS2=0,\n&END\n 1.0 1 1 0 0\n", "inconsistent"),
    ],
)
def test_invalid_fcidump_is_rejected(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        build_from_fcidump(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"atom": N2, "basis": "no-such-basis"}, "Unknown basis 'no-such-basis'"),
        ({"atom": "N 0 0", "basis": "sto-3g"}, "is not 'symbol x y z'"),
        ({"atom": "Qq 0 0 0", "basis": "sto-3g"}, "unknown element symbol 'Qq'"),
        ({"atom": "", "basis": "sto-3g"}, "atom string is empty"),
        ({"atom": "H 0 0 0; H 0 0 0.01", "basis": "sto-3g"}, "closer than 0.1"),
        ({"atom": N2, "basis": "sto-3g", "spin": 1}, "cannot have spin"),
        ({"atom": "H 0 0 0", "basis": "sto-3g"}, "cannot have spin"),
        ({"atom": N2, "basis": "sto-3g", "charge": 14}, "needs at least 1"),
        (
            {"atom": N2, "basis": "sto-3g", "active_orbitals": 12, "active_electrons": 10},
            "larger than the molecule's 10 orbitals",
        ),
        ({"atom": N2, "basis": "sto-3g", "active_electrons": 9}, "differ from it by an even"),
        (
            {"atom": N2, "basis": "sto-3g", "active_orbitals": 3, "active_electrons": 10},
            "need at least 5 active orbitals",
        ),
        ({"atom": N2, "basis": "cc-pvtz"}, "at most 26 are accepted"),
    ],
)
def test_invalid_molecules_raise_invalid_input_with_a_clear_message(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        build_from_molecule(**kwargs)  # type: ignore[arg-type]


def test_workflow_params_parse_into_problem_and_settings() -> None:
    problem, settings = parse_sqd_params(
        {"molecule": {"atom": WATER, "basis": "sto-3g"}, "n_batches": 2, "seed": 3}
    )
    assert problem.norb == 6 and settings.n_batches == 2 and settings.seed == 3

    with pytest.raises(InvalidInput, match="exactly one of 'molecule' or 'fcidump'"):
        parse_sqd_params({"n_batches": 2})
    with pytest.raises(InvalidInput, match="Unknown SQD settings"):
        parse_sqd_params({"molecule": {"atom": WATER, "basis": "sto-3g"}, "batches": 2})
    with pytest.raises(InvalidInput, match="n_batches must be an integer between 1 and 64"):
        parse_sqd_params({"molecule": {"atom": WATER, "basis": "sto-3g"}, "n_batches": 0})
