"""Workflow params of kind ``sqd`` (see CONTRACT.md) -> problem and settings."""

from __future__ import annotations

from typing import Any

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.sqd.problem import (
    MAX_ACTIVE_ORBITALS,
    ActiveSpaceProblem,
    build_from_fcidump,
    build_from_molecule,
)
from quantum_mesh.quantum.sqd.settings import SQDSettings

MOLECULE_KEYS = ("atom", "basis", "charge", "spin", "active_orbitals", "active_electrons")
MAX_CHARGE = 200
MAX_SPIN = 200
MAX_ATOM_CHARS = 20_000
#: Inclusive ranges of the molecule's integer fields.
MOLECULE_RANGES = {
    "charge": (-MAX_CHARGE, MAX_CHARGE),
    "spin": (0, MAX_SPIN),
    "active_orbitals": (1, MAX_ACTIVE_ORBITALS),
    "active_electrons": (1, 2 * MAX_ACTIVE_ORBITALS),
}


def parse_sqd_params(params: dict[str, Any]) -> tuple[ActiveSpaceProblem, SQDSettings]:
    """``{"molecule": {...}} | {"fcidump": "..."}`` plus settings -> problem, settings.

    Every other key is an :class:`SQDSettings` field (``n_batches``, ``seed``, ...). Building a
    problem from a molecule runs a mean-field calculation: call this off the event loop.

    Raises:
        InvalidInput: neither or both problem sources, unknown keys, invalid values.
    """
    if not isinstance(params, dict):
        raise InvalidInput("SQD params must be a JSON object.")
    tuning = {k: v for k, v in params.items() if k not in ("molecule", "fcidump")}
    settings = SQDSettings.from_dict(tuning)
    has_molecule, has_fcidump = "molecule" in params, "fcidump" in params
    if has_molecule == has_fcidump:
        raise InvalidInput("SQD params need exactly one of 'molecule' or 'fcidump'.")
    if has_fcidump:
        fcidump = params["fcidump"]
        if not isinstance(fcidump, str):
            raise InvalidInput("'fcidump' must be the text of an FCIDUMP file.")
        return _compatible(build_from_fcidump(fcidump), settings)
    molecule = params["molecule"]
    if not isinstance(molecule, dict):
        raise InvalidInput("'molecule' must be an object with at least 'atom' and 'basis'.")
    unknown = sorted(set(molecule) - set(MOLECULE_KEYS))
    missing = [k for k in ("atom", "basis") if k not in molecule]
    if unknown or missing:
        raise InvalidInput(
            f"'molecule' has unknown keys {unknown} or misses {missing}; "
            f"allowed: {', '.join(MOLECULE_KEYS)}.",
            details={"unknown": unknown, "missing": missing},
        )
    for key, (low, high) in MOLECULE_RANGES.items():
        value = molecule.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
        ):
            shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}…"
            raise InvalidInput(
                f"molecule.{key} must be an integer in [{low}, {high}]; got {shown}.",
                details={"field": f"molecule.{key}", "minimum": low, "maximum": high},
            )
    for key in ("atom", "basis"):
        if not isinstance(molecule[key], str) or len(molecule[key]) > MAX_ATOM_CHARS:
            raise InvalidInput(
                f"molecule.{key} must be a string of at most {MAX_ATOM_CHARS} characters.",
                details={"field": f"molecule.{key}"},
            )
    problem = build_from_molecule(
        atom=molecule["atom"],
        basis=molecule["basis"],
        charge=molecule.get("charge") or 0,
        spin=molecule.get("spin") or 0,
        active_orbitals=molecule.get("active_orbitals"),
        active_electrons=molecule.get("active_electrons"),
    )
    return _compatible(problem, settings)


def _compatible(
    problem: ActiveSpaceProblem, settings: SQDSettings
) -> tuple[ActiveSpaceProblem, SQDSettings]:
    """Settings that cannot work on this problem (open shell with ``symmetrize_spin`` or
    ``mp2`` occupancies, an impossible ``spin_sq``, counts of the wrong width) are refused
    here, while the workflow validates, rather than failing the run later."""
    from quantum_mesh.quantum.sqd.loop import check_compatible

    check_compatible(problem, settings)
    return problem, settings
