"""The active-space Hamiltonian an SQD run diagonalises, built from a molecule or an FCIDUMP.

Conventions (fixed, so that nodes and the coordinator agree without negotiating):

- ``h1`` is the effective one-body matrix of the active space, float64, shape (norb, norb).
- ``h2`` is the full, *unpacked* two-electron tensor in chemists' notation ``(pq|rs)``,
  float64, shape (norb, norb, norb, norb). It is never pyscf's 4- or 8-fold compressed form:
  qiskit-addon-sqd's solver contracts it with the full 2-RDM.
- ``core_energy`` is nuclear repulsion plus the energy of the frozen core; solver energies
  exclude it, totals include it.
- ``content_hash`` is the sha256 of the integrals (shapes, electron counts, the bytes of
  ``h1`` and ``h2`` in little-endian order), so nodes can cache them by hash.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quantum_mesh.arrays import decode_array, encode_array
from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.sqd.threads import pyscf_threads

MAX_ACTIVE_ORBITALS = 26
"""Largest active space accepted: 26 spatial orbitals = 52 qubits."""

MAX_BASIS_FUNCTIONS = 200
"""Largest molecule (basis functions) whose mean-field problem is solved on request."""

MAX_ATOMS = 100
"""Most atoms in a molecule's geometry (each brings at least one basis function)."""

MAX_COORDINATE = 1000.0
"""Largest |x|, |y|, |z| of an atom, in Angstrom."""

MAX_FCIDUMP_HEADER_LINES = 10
"""The header ``&FCI ... &END`` (or ``/``) must close within this many lines (as pyscf reads)."""

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_BASIS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9()*+,\-_ ]{0,63}$")
_HEADER_INT = {
    key: re.compile(rf"(?<![A-Z]){key}\s*=\s*([+-]?\d+)") for key in ("NORB", "NELEC", "MS2")
}


@dataclass(frozen=True)
class ActiveSpaceProblem:
    """Integrals of an active space; see the module docstring for the conventions."""

    norb: int
    nelec: tuple[int, int]
    h1: NDArray[np.float64]
    h2: NDArray[np.float64]
    core_energy: float
    description: str
    content_hash: str = field(init=False)

    def __post_init__(self) -> None:
        norb, (n_alpha, n_beta) = self.norb, self.nelec
        if not 1 <= norb <= MAX_ACTIVE_ORBITALS:
            raise InvalidInput(
                f"The active space must have 1 to {MAX_ACTIVE_ORBITALS} orbitals; got {norb}.",
                details={"norb": norb, "max_orbitals": MAX_ACTIVE_ORBITALS},
            )
        if not (0 <= n_beta <= n_alpha <= norb) or n_alpha + n_beta == 0:
            raise InvalidInput(
                f"The active space holds {n_alpha} alpha and {n_beta} beta electrons in {norb} "
                "orbitals; each count must be between 0 and norb, alpha >= beta, total > 0.",
                details={"norb": norb, "nelec": [n_alpha, n_beta]},
            )
        h1 = np.ascontiguousarray(self.h1, dtype=np.float64)
        h2 = np.ascontiguousarray(self.h2, dtype=np.float64)
        if h1.shape != (norb, norb) or h2.shape != (norb,) * 4:
            raise InvalidInput(
                f"Integrals must have shapes ({norb}, {norb}) and ({norb},)*4; "
                f"got {h1.shape} and {h2.shape}.",
                details={"h1_shape": list(h1.shape), "h2_shape": list(h2.shape)},
            )
        if not (np.isfinite(h1).all() and np.isfinite(h2).all()):
            raise InvalidInput("The integrals contain non-finite values.")
        if not math.isfinite(self.core_energy):
            raise InvalidInput(f"The core energy must be finite; got {self.core_energy}.")
        h1.setflags(write=False)
        h2.setflags(write=False)
        object.__setattr__(self, "h1", h1)
        object.__setattr__(self, "h2", h2)
        object.__setattr__(self, "nelec", (int(n_alpha), int(n_beta)))
        object.__setattr__(self, "core_energy", float(self.core_energy))
        object.__setattr__(self, "content_hash", integrals_hash(h1=h1, h2=h2, nelec=self.nelec))

    @property
    def n_determinants(self) -> int:
        """Dimension of the full CI space of the active space."""
        return math.comb(self.norb, self.nelec[0]) * math.comb(self.norb, self.nelec[1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the wire (arrays base64-encoded, see ``quantum.encoding``)."""
        return {
            "norb": self.norb,
            "nelec": list(self.nelec),
            "h1": encode_array(self.h1),
            "h2": encode_array(self.h2),
            "core_energy": self.core_energy,
            "description": self.description,
            "content_hash": self.content_hash,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ActiveSpaceProblem:
        """Inverse of :meth:`to_dict`; rejects a payload whose hash does not match."""
        try:
            problem = cls(
                norb=int(payload["norb"]),
                nelec=(int(payload["nelec"][0]), int(payload["nelec"][1])),
                h1=decode_array(payload["h1"]),
                h2=decode_array(payload["h2"]),
                core_energy=float(payload["core_energy"]),
                description=str(payload.get("description", "")),
            )
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise InvalidInput(f"Malformed active-space problem payload: {error}") from error
        expected = payload.get("content_hash")
        if expected is not None and expected != problem.content_hash:
            raise InvalidInput(
                "The active-space problem payload does not match its content_hash.",
                details={"expected": expected, "actual": problem.content_hash},
            )
        return problem


def integrals_hash(
    *, h1: NDArray[np.float64], h2: NDArray[np.float64], nelec: tuple[int, int]
) -> str:
    """sha256 over electron counts, shapes and little-endian bytes of ``h1`` and ``h2``."""
    digest = hashlib.sha256()
    digest.update(f"sqd-v1 nelec={nelec[0]},{nelec[1]} shape={h1.shape[0]};".encode())
    for array in (h1, h2):
        digest.update(np.ascontiguousarray(array, dtype="<f8").tobytes())
    return digest.hexdigest()


def build_from_molecule(
    *,
    atom: str,
    basis: str,
    charge: int = 0,
    spin: int = 0,
    active_orbitals: int | None = None,
    active_electrons: int | None = None,
) -> ActiveSpaceProblem:
    """Mean field (RHF, or ROHF when ``spin`` > 0) then pyscf CASCI integrals.

    Args:
        atom: Cartesian geometry in Angstrom, ``"N 0 0 0; N 0 0 1.1"`` (entries separated by
            ``;`` or newlines, each ``symbol x y z``).
        basis: A basis set name pyscf knows (``sto-3g``, ``6-31g``, ``cc-pvdz``...).
        charge: Total charge.
        spin: 2S = number of alpha minus beta electrons.
        active_orbitals: Active orbitals; default = every orbital above the frozen core.
        active_electrons: Active electrons; default = every electron outside the frozen
            core (chemical core, pyscf's ``chemcore``).

    Raises:
        InvalidInput: bad geometry, unknown basis, inconsistent charge/spin, or an active
            space that does not fit the molecule or exceeds ``MAX_ACTIVE_ORBITALS``.
    """
    from pyscf import ao2mo, gto, mcscf, scf
    from pyscf.data import elements
    from pyscf.lib.exceptions import BasisNotFoundError

    symbols = _parse_atoms(atom)
    if not isinstance(basis, str) or not basis.strip():
        raise InvalidInput(
            "The basis must be a non-empty basis-set name such as 'sto-3g'.",
            details={"field": "basis"},
        )
    if not _BASIS_NAME.match(basis):
        # pyscf would read a path (any file on this machine) or inline basis text; only
        # names of the basis sets it ships are accepted.
        raise InvalidInput(
            f"The basis must be a basis-set name such as 'sto-3g' or '6-31g*' (letters, digits, "
            f"()*+,-_ and spaces, at most 64); got {_cut(basis)}.",
            details={"field": "basis"},
        )
    n_electrons = sum(int(elements.charge(symbol)) for symbol in symbols) - charge
    if n_electrons <= 0:
        raise InvalidInput(
            f"The molecule has {n_electrons} electrons with charge {charge}; it needs at least 1.",
            details={"charge": charge},
        )
    if spin < 0 or spin > n_electrons or (n_electrons - spin) % 2:
        raise InvalidInput(
            f"{n_electrons} electrons cannot have spin (2S = N_alpha - N_beta) {spin}: "
            "the electron count and spin must have the same parity and spin <= electrons.",
            details={"electrons": n_electrons, "spin": spin},
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mol = gto.M(
                atom=atom, basis=basis, charge=charge, spin=spin, unit="Angstrom", verbose=0
            )
    except BasisNotFoundError as error:
        raise InvalidInput(
            f"Unknown basis {basis!r} for this molecule: {error}.", details={"basis": basis}
        ) from error
    except (RuntimeError, ValueError, KeyError, IndexError) as error:
        raise InvalidInput(
            f"pyscf rejected the molecule: {error}", details={"atom": atom}
        ) from error
    if mol.nao > MAX_BASIS_FUNCTIONS:
        raise InvalidInput(
            f"The molecule has {mol.nao} basis functions; at most {MAX_BASIS_FUNCTIONS} "
            "are accepted.",
            details={"basis_functions": mol.nao},
        )
    if mol.nelectron > 2 * mol.nao:
        raise InvalidInput(
            f"The molecule has {mol.nelectron} electrons (charge {charge}) but only {mol.nao} "
            f"orbitals in basis {basis!r} to hold them.",
            details={"field": "charge", "electrons": mol.nelectron, "orbitals": mol.nao},
        )
    ncas, nelecas = _choose_active_space(
        n_mo=mol.nao,
        n_electrons=mol.nelectron,
        n_core_default=int(elements.chemcore(mol)),
        spin=spin,
        active_orbitals=active_orbitals,
        active_electrons=active_electrons,
    )
    # One thread: multithreaded reductions perturb degenerate orbitals (N2's pi pairs) at
    # 1e-16, which rotates them and changes the integrals (and SQD's result) from run to run.
    with pyscf_threads(1):
        mean_field = scf.RHF(mol)
        mean_field.kernel()
        cas = mcscf.CASCI(mean_field, ncas, nelecas)
        h1, core_energy = cas.get_h1eff()
        h2 = ao2mo.restore(1, cas.get_h2eff(), ncas)
    n_alpha, n_beta = (int(n) for n in cas.nelecas)
    converged = "" if mean_field.converged else " (mean field NOT converged)"
    return ActiveSpaceProblem(
        norb=ncas,
        nelec=(n_alpha, n_beta),
        h1=np.asarray(h1, dtype=np.float64),
        h2=np.asarray(h2, dtype=np.float64),
        core_energy=float(core_energy),
        description=(
            f"{_formula(symbols)} / {basis}, charge {charge}, "
            f"spin {spin}: ({n_alpha + n_beta}e, {ncas}o) active space, "
            f"{cas.ncore} frozen core orbitals, E(mean field) = {mean_field.e_tot:.8f}{converged}"
        ),
    )


def build_from_fcidump(text: str) -> ActiveSpaceProblem:
    """Read an FCIDUMP (Molpro format, as ``pyscf.tools.fcidump`` writes it).

    ``ECORE`` becomes ``core_energy``; ``NELEC`` and ``MS2`` give the alpha/beta split.

    Raises:
        InvalidInput: the text is not a readable FCIDUMP or describes an impossible space.
    """
    from pyscf import ao2mo
    from pyscf.tools import fcidump

    if not isinstance(text, str) or "&FCI" not in text.upper():
        raise InvalidInput("An FCIDUMP must start with a '&FCI ... &END' header.")
    check_fcidump_text(text)
    path = ""
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".fcidump", delete=False) as handle:
            handle.write(text)
            path = handle.name
        data = fcidump.read(path, verbose=False)
        norb, n_electrons, ms2 = int(data["NORB"]), int(data["NELEC"]), int(data.get("MS2", 0))
    except (RuntimeError, ValueError, KeyError, IndexError) as error:
        raise InvalidInput(f"Unreadable FCIDUMP: {error}") from error
    finally:
        if path:
            os.unlink(path)
    if not 1 <= norb <= MAX_ACTIVE_ORBITALS:
        raise InvalidInput(
            f"The FCIDUMP has NORB={norb}; 1 to {MAX_ACTIVE_ORBITALS} orbitals are accepted.",
            details={"norb": norb},
        )
    if ms2 < 0 or (n_electrons - ms2) % 2 or n_electrons - ms2 < 0:
        raise InvalidInput(
            f"NELEC={n_electrons} and MS2={ms2} are inconsistent (need same parity, MS2 >= 0).",
            details={"nelec": n_electrons, "ms2": ms2},
        )
    h2 = ao2mo.restore(1, np.asarray(data["H2"], dtype=np.float64), norb)
    return ActiveSpaceProblem(
        norb=norb,
        nelec=((n_electrons + ms2) // 2, (n_electrons - ms2) // 2),
        h1=np.asarray(data["H1"], dtype=np.float64),
        h2=np.asarray(h2, dtype=np.float64),
        core_energy=float(data.get("ECORE", 0.0)),
        description=f"FCIDUMP: ({n_electrons}e, {norb}o), MS2={ms2}",
    )


def _cut(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def _fcidump_error(message: str, **details: Any) -> InvalidInput:
    return InvalidInput(message, details={"field": "fcidump", **details})


def check_fcidump_text(text: str) -> tuple[int, int, int]:
    """Sanity of an FCIDUMP before pyscf allocates anything; returns (NORB, NELEC, MS2).

    The header must close within 10 lines and give NORB in [1, MAX_ACTIVE_ORBITALS], NELEC
    in [1, 2 NORB] and MS2 in [0, NELEC]; every integral line (up to the first blank one,
    where pyscf stops) must be ``value i j k l`` with a finite value and indices in
    [0, NORB] (all four >= 1 for a two-electron integral, i and j for a one-electron one);
    and there may be no more lines than a full set of NORB integrals has.

    Raises:
        InvalidInput: with ``details.field = "fcidump"`` and the offending header key or line.
    """
    lines = text.splitlines()
    end = next(
        (
            i
            for i, line in enumerate(lines[:MAX_FCIDUMP_HEADER_LINES])
            if "&END" in line.upper() or "/" in line
        ),
        None,
    )
    if end is None:
        raise _fcidump_error(
            f"The FCIDUMP header must close with '&END' (or '/') within its first "
            f"{MAX_FCIDUMP_HEADER_LINES} lines."
        )
    header = " ".join(lines[: end + 1]).upper()
    values: dict[str, int] = {}
    for key, pattern in _HEADER_INT.items():
        match = pattern.search(header)
        if match is None:
            if key == "MS2":
                values[key] = 0
                continue
            raise _fcidump_error(f"The FCIDUMP header has no {key}=<integer>.", key=key)
        digits = match.group(1)
        if len(digits.lstrip("+-")) > 6:
            raise _fcidump_error(
                f"The FCIDUMP has {key}={digits[:12]}…, far beyond what is accepted.", key=key
            )
        values[key] = int(digits)
    norb, nelec, ms2 = values["NORB"], values["NELEC"], values["MS2"]
    if not 1 <= norb <= MAX_ACTIVE_ORBITALS:
        raise _fcidump_error(
            f"The FCIDUMP has NORB={norb}; 1 to {MAX_ACTIVE_ORBITALS} orbitals are accepted.",
            norb=norb,
        )
    if not 1 <= nelec <= 2 * norb:
        raise _fcidump_error(
            f"The FCIDUMP has NELEC={nelec}; NORB={norb} orbitals hold 1 to {2 * norb}.",
            nelec=nelec,
        )
    if not 0 <= ms2 <= nelec:
        raise _fcidump_error(f"The FCIDUMP has MS2={ms2}; it must be in [0, NELEC].", ms2=ms2)
    max_lines = norb**4 + norb**2 + norb + 1
    for count, line in enumerate(lines[end + 1 :], start=1):
        number = end + 1 + count
        tokens = line.split()
        if not tokens:
            break
        if count > max_lines:
            raise _fcidump_error(
                f"The FCIDUMP has more than {max_lines} integral lines, more than NORB={norb} "
                "orbitals have.",
                max_lines=max_lines,
            )
        if len(tokens) < 5:
            raise _fcidump_error(
                f"FCIDUMP line {number} is not 'value i j k l': {_cut(line)}.", line=number
            )
        try:
            value = float(tokens[0])
            i, j, k, m = (int(t) for t in tokens[1:5])
        except ValueError:
            raise _fcidump_error(
                f"FCIDUMP line {number} is not 'value i j k l' (a number and four integer "
                f"indices): {_cut(line)}.",
                line=number,
            ) from None
        if not math.isfinite(value):
            raise _fcidump_error(f"FCIDUMP line {number} has a non-finite value.", line=number)
        if k:  # two-electron integral (ij|kl)
            ok = all(1 <= x <= norb for x in (i, j, k, m))
        elif j:  # one-electron integral h_ij
            ok = 1 <= i <= norb and 1 <= j <= norb and m == 0
        else:  # core energy (pyscf also reads an orbital energy line 'e i 0 0 0' as one)
            ok = 0 <= i <= norb and m == 0
        if not ok:
            raise _fcidump_error(
                f"FCIDUMP line {number} has an orbital index outside 1..NORB={norb} "
                f"(or misplaced zeros): {_cut(line)}.",
                line=number,
            )
    return norb, nelec, ms2


def _parse_atoms(atom: str) -> list[str]:
    """Validate a Cartesian geometry and return its element symbols."""
    from pyscf.data import elements

    if not isinstance(atom, str) or not atom.strip():
        raise InvalidInput("The atom string is empty; expected e.g. 'N 0 0 0; N 0 0 1.1'.")
    symbols: list[str] = []
    entries = [entry.strip() for entry in re.split(r"[;\n]", atom) if entry.strip()]
    if len(entries) > MAX_ATOMS:
        raise InvalidInput(
            f"The geometry has {len(entries)} atoms; at most {MAX_ATOMS} atoms are accepted.",
            details={"field": "atom", "atoms": len(entries)},
        )
    for index, entry in enumerate(entries):
        tokens = entry.replace(",", " ").split()
        if len(tokens) != 4 or not all(_NUMBER.match(token) for token in tokens[1:]):
            raise InvalidInput(
                f"Atom entry {index + 1} {entry!r} is not 'symbol x y z' (Cartesian, Angstrom).",
                details={"entry": entry, "index": index},
            )
        symbol = tokens[0]
        try:
            known = symbol.isalpha() and int(elements.charge(symbol)) > 0
        except KeyError:
            known = False
        if not known:
            raise InvalidInput(
                f"Atom entry {index + 1} has unknown element symbol {symbol!r}.",
                details={"entry": entry, "index": index},
            )
        symbols.append(symbol)
    coords = np.array([[float(t) for t in e.replace(",", " ").split()[1:]] for e in entries])
    if not np.all(np.isfinite(coords)) or np.any(np.abs(coords) > MAX_COORDINATE):
        raise InvalidInput(
            f"Every atom coordinate must be a finite number of at most {MAX_COORDINATE:g} "
            "Angstrom in absolute value.",
            details={"field": "atom"},
        )
    distances = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1)
    np.fill_diagonal(distances, np.inf)
    if distances.min() < 0.1:
        raise InvalidInput(
            "Two atoms are closer than 0.1 Angstrom; check the geometry (units are Angstrom).",
            details={"min_distance": float(distances.min())},
        )
    return symbols


def _formula(symbols: list[str]) -> str:
    """Hill-ordered-ish formula from element symbols ("N2", "OH2")."""
    counts: dict[str, int] = {}
    for symbol in symbols:
        key = symbol.capitalize()
        counts[key] = counts.get(key, 0) + 1
    return "".join(f"{key}{count if count > 1 else ''}" for key, count in counts.items())


def _choose_active_space(
    *,
    n_mo: int,
    n_electrons: int,
    n_core_default: int,
    spin: int,
    active_orbitals: int | None,
    active_electrons: int | None,
) -> tuple[int, int]:
    """Return (ncas, nelecas) around the Fermi level, validated against the molecule."""
    if active_electrons is None:
        n_core = min(n_core_default, (n_electrons - spin) // 2)
        active_electrons = n_electrons - 2 * n_core
    if not 0 < active_electrons <= n_electrons or (n_electrons - active_electrons) % 2:
        raise InvalidInput(
            f"active_electrons={active_electrons} must be between 1 and the molecule's "
            f"{n_electrons} electrons and differ from it by an even number (frozen core pairs).",
            details={"active_electrons": active_electrons, "electrons": n_electrons},
        )
    n_core = (n_electrons - active_electrons) // 2
    if active_orbitals is None:
        active_orbitals = n_mo - n_core
    n_alpha = (active_electrons + spin) // 2
    if active_electrons < spin or active_orbitals < n_alpha:
        raise InvalidInput(
            f"{active_electrons} active electrons with spin {spin} need at least "
            f"{max(n_alpha, 1)} active orbitals; got {active_orbitals}.",
            details={"active_orbitals": active_orbitals, "active_electrons": active_electrons},
        )
    if n_core + active_orbitals > n_mo:
        raise InvalidInput(
            f"The active space ({active_electrons}e, {active_orbitals}o) with {n_core} frozen "
            f"core orbitals is larger than the molecule's {n_mo} orbitals in this basis.",
            details={"active_orbitals": active_orbitals, "molecular_orbitals": n_mo},
        )
    if active_orbitals > MAX_ACTIVE_ORBITALS:
        raise InvalidInput(
            f"The active space has {active_orbitals} orbitals; at most {MAX_ACTIVE_ORBITALS} "
            "are accepted. Pass active_orbitals (and active_electrons) to choose a smaller one.",
            details={"active_orbitals": active_orbitals, "max_orbitals": MAX_ACTIVE_ORBITALS},
        )
    return active_orbitals, active_electrons
