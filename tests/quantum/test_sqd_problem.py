"""Active-space problems: built from molecules and FCIDUMPs, checked against pyscf directly."""

from __future__ import annotations

import os
import tempfile
import time

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
from quantum_mesh.quantum.sqd.settings import PRESETS, SQDSettings

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
        ("&FCI NORB=99999999,NELEC=2,MS2=0,\n&END\n 1.0 1 1 1 1\n", "NORB=99999999"),
        ("&FCI NORB=-3,NELEC=2,MS2=0,\n&END\n", "NORB=-3"),
        ("&FCI NELEC=2,MS2=0,\n&END\n", "no NORB"),
        ("&FCI NORB=2,NELEC=99999999999999,MS2=0,\n&END\n", "NELEC=99999999999"),
        ("&FCI NORB=2,NELEC=5,MS2=1,\n&END\n", "NELEC=5"),
        ("&FCI NORB=2,NELEC=2,MS2=4,\n&END\n", "MS2=4"),
        ("&FCI NORB=2,NELEC=2,MS2=0,\n&END\n 1.0 3 1 0 0\n", "line 3 has an orbital index"),
        ("&FCI NORB=2,NELEC=2,MS2=0,\n&END\n 1.0 -1 1 0 0\n", "orbital index"),
        ("&FCI NORB=2,NELEC=2,MS2=0,\n&END\n 1.0 0 1 0 0\n", "orbital index"),
        ("&FCI NORB=2,NELEC=2,MS2=0,\n&END\n 1.0 1 1 2 0\n", "orbital index"),
        ("&FCI NORB=2,NELEC=2,MS2=0,\n&END\n nan 1 1 0 0\n", "non-finite"),
        ("&FCI NORB=2,NELEC=2,MS2=0,\n&END\n 1.0 1 1\n", "line 3 is not"),
        ("&FCI NORB=2,NELEC=2,MS2=0,\n&END\n x 1 1 0 0\n", "line 3 is not"),
        ("&FCI NORB=2,NELEC=2,MS2=0,\n&END\n" + " 1.0 1 1 1 1\n" * 24, "more than 23"),
        ("&FCI NORB=2,\n" + "\n" * 12 + "&END\n", "header must close"),
    ],
)
def test_invalid_fcidump_is_rejected(text: str, message: str) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=message):
        build_from_fcidump(text)
    assert time.monotonic() - started < 5.0


def test_a_blank_line_ends_the_integrals_as_pyscf_reads_them() -> None:
    text = "&FCI NORB=1,NELEC=2,MS2=0,\n&END\n 0.5 1 1 1 1\n -1.0 1 1 0 0\n 0.1 0 0 0 0\n"
    problem = build_from_fcidump(text + "\n junk that pyscf never reads\n")
    assert problem.norb == 1 and problem.core_energy == pytest.approx(0.1)


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
        ({"atom": N2, "basis": "/etc/passwd"}, "basis-set name"),
        ({"atom": N2, "basis": "sto-3g@1s@2s"}, "basis-set name"),
        ({"atom": N2, "basis": "H S\n 1.0 1.0\n"}, "basis-set name"),
        ({"atom": "N 0 0 0; N 0 0 1e999", "basis": "sto-3g"}, "coordinate"),
        ({"atom": "N 0 0 0; N 0 0 5000", "basis": "sto-3g"}, "coordinate"),
        ({"atom": "; ".join(f"H 0 0 {i}" for i in range(101)), "basis": "sto-3g"}, "101 atoms"),
        ({"atom": "H 0 0 0; H 0 0 0.74", "basis": "sto-3g", "charge": -10}, "only 2 orbitals"),
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


@pytest.mark.parametrize(
    ("molecule", "message"),
    [
        ({"charge": -(10**30)}, "molecule.charge must be an integer in"),
        ({"spin": 10**30}, "molecule.spin must be an integer in"),
        ({"spin": -1}, "molecule.spin"),
        ({"active_orbitals": 10**30}, "molecule.active_orbitals must be an integer in"),
        ({"active_electrons": 0}, "molecule.active_electrons"),
        ({"active_electrons": True}, "molecule.active_electrons"),
        ({"atom": 5}, "molecule.atom must be a string"),
        ({"basis": "x" * 30_000}, "molecule.basis must be a string"),
    ],
)
def test_molecule_fields_are_bounded(molecule: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        parse_sqd_params({"molecule": {"atom": WATER, "basis": "sto-3g", **molecule}})
    assert str(info.value.details["field"]).startswith("molecule.")


@pytest.mark.parametrize(
    "counts", [{"01": -1}, {"01": True}, {"01": 10**30}, {5: 1}, {"": 1}, ["01"], {}]
)
def test_user_counts_are_checked_up_front(counts: object) -> None:
    with pytest.raises(InvalidInput, match="counts must"):
        parse_sqd_params(
            {
                "molecule": {"atom": WATER, "basis": "sto-3g"},
                "sample_source": "counts",
                "counts": counts,
            }
        )


def test_a_preset_fills_in_the_settings_not_given_and_explicit_values_win() -> None:
    molecule = {"atom": WATER, "basis": "sto-3g"}
    _, accurate = parse_sqd_params({"molecule": molecule, "preset": "accurate", "seed": 3})
    assert accurate.preset == "accurate" and accurate.seed == 3
    assert PRESETS["accurate"]
    for key, value in PRESETS["accurate"].items():
        assert getattr(accurate, key) == value
    assert accurate.to_dict()["preset"] == "accurate"  # reported with the result

    _, overridden = parse_sqd_params(
        {"molecule": molecule, "preset": "accurate", "max_iterations": 2}
    )
    assert overridden.max_iterations == 2
    # No preset and the "default" preset are the dataclass defaults: defaults are unchanged.
    _, plain = parse_sqd_params({"molecule": molecule})
    _, default = parse_sqd_params({"molecule": molecule, "preset": "default"})
    assert plain == SQDSettings() and plain.preset is None
    assert default == SQDSettings(preset="default")
    assert (plain.n_samples, plain.samples_per_batch, plain.max_iterations) == (20_000, 300, 3)
    assert plain.initial_occupancies is None


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"preset": "fastest"}, "preset"),
        ({"preset": 5}, "preset"),
        ({"preset": ["accurate"]}, "preset"),
        ({"initial_occupancies": "ccsd"}, "initial_occupancies"),
        ({"initial_occupancies": 1}, "initial_occupancies"),
        ({"preset": "accurate", "max_iterations": 0}, "max_iterations"),
        ({"preset": "accurate", "samples_per_batch": 10**9}, "samples_per_batch"),
    ],
)
def test_bad_presets_and_occupancy_guesses_are_refused_by_name(
    extra: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput, match=field) as info:
        parse_sqd_params({"molecule": {"atom": WATER, "basis": "sto-3g"}, **extra})
    assert info.value.details["field"] == field


def test_settings_that_cannot_fit_the_molecule_are_refused_while_parsing() -> None:
    """Checked with the molecule, so the workflow answers 422 instead of failing the run."""
    radical = {"atom": "O 0 0 0; H 0 0 0.97", "basis": "sto-3g", "spin": 1}
    open_shell = {"molecule": radical, "symmetrize_spin": False, "spin_sq": 0.75}
    with pytest.raises(InvalidInput, match="initial_occupancies 'mp2' needs equal") as info:
        parse_sqd_params({**open_shell, "initial_occupancies": "mp2"})
    assert info.value.details["field"] == "initial_occupancies"
    with pytest.raises(InvalidInput, match="symmetrize_spin needs equal alpha and beta"):
        parse_sqd_params({"molecule": radical})
    _, settings = parse_sqd_params({**open_shell, "initial_occupancies": "hf"})
    assert settings.initial_occupancies == "hf"
