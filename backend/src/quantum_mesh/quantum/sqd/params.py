"""Workflow params of kind ``sqd`` (see CONTRACT.md) -> problem and settings."""

from __future__ import annotations

from typing import Any

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.sqd.problem import (
    ActiveSpaceProblem,
    build_from_fcidump,
    build_from_molecule,
)
from quantum_mesh.quantum.sqd.settings import SQDSettings

MOLECULE_KEYS = ("atom", "basis", "charge", "spin", "active_orbitals", "active_electrons")


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
        return build_from_fcidump(fcidump), settings
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
    for key in ("charge", "spin", "active_orbitals", "active_electrons"):
        value = molecule.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidInput(f"molecule.{key} must be an integer; got {value!r}.")
    problem = build_from_molecule(
        atom=molecule["atom"],
        basis=molecule["basis"],
        charge=molecule.get("charge") or 0,
        spin=molecule.get("spin") or 0,
        active_orbitals=molecule.get("active_orbitals"),
        active_electrons=molecule.get("active_electrons"),
    )
    return problem, settings
