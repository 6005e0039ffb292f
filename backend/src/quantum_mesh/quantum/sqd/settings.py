"""Settings of an SQD run, checked up front (``InvalidInput`` with concrete messages)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.sqd.samples import (
    DEFAULT_SAMPLE_SOURCE,
    INITIAL_OCCUPANCIES,
    MAX_SAMPLES,
    SAMPLE_SOURCES,
)

MAX_BATCHES = 64
MAX_ITERATIONS = 20
MAX_SAMPLES_PER_BATCH = 100_000
#: Longest bitstring of user counts (2 x the largest active space, 26 orbitals, with room).
MAX_BITSTRING = 128

#: Named bundles of settings. ``preset`` fills in these values; settings given explicitly
#: next to it override them. ``default`` is the dataclass defaults (the same as no preset).
#: ``accurate`` runs more configuration-recovery iterations: on N2/cc-pVDZ (10e, 14o) the
#: defaults (3 iterations) ended 4.6-8 mHa above CASCI, 6 iterations 0.4-1.5 mHa for seeds
#: 7, 1 and 2, and the loop reports the best iteration, so 8 can only be lower (docs/sqd.md,
#: bench/sqd_accuracy.py).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "accurate": {"max_iterations": 8},
}


@dataclass(frozen=True)
class SQDSettings:
    """Tuning of :func:`quantum_mesh.quantum.sqd.loop.run_sqd`.

    Attributes:
        n_batches: Batches subsampled (and diagonalised, in parallel) per iteration.
        samples_per_batch: Bitstrings per batch.
        max_iterations: Configuration-recovery iterations (fewer if converged).
        n_samples: Bitstrings drawn from the sample source (ignored for ``counts``).
        sample_source: ``uniform`` (default), ``lucj`` or ``counts``.
        symmetrize_spin: Merge alpha and beta CI strings (closed shell only).
        spin_sq: Target <S^2> imposed on each batch solve; ``None`` imposes nothing.
        carryover_threshold: Amplitude above which CI strings carry over to the next
            iteration.
        seed: Seeds the samples and the recovery/subsampling generator.
        energy_tol, occupancies_tol: Convergence of the recovery loop.
        max_dim: Cap on the CI strings per spin sector of a batch (``None``: no cap).
        max_cycle, tol: Davidson options of each batch solve (``None``: pyscf defaults).
        counts: The bitstring counts for ``sample_source="counts"``.
        initial_occupancies: Classical orbital occupancies (``hf`` or ``mp2``) that let
            configuration recovery repair every sample in the first iteration, instead of
            keeping only the samples whose electron counts are already right (``None``).
        preset: The name of the :data:`PRESETS` entry these settings started from
            (recorded only; :meth:`from_dict` applies it).
    """

    n_batches: int = 4
    samples_per_batch: int = 300
    max_iterations: int = 3
    n_samples: int = 20_000
    sample_source: str = DEFAULT_SAMPLE_SOURCE
    symmetrize_spin: bool = True
    spin_sq: float | None = 0.0
    carryover_threshold: float = 1e-4
    seed: int = 0
    energy_tol: float = 1e-8
    occupancies_tol: float = 1e-5
    max_dim: int | None = None
    max_cycle: int | None = None
    tol: float | None = None
    counts: dict[str, int] | None = field(default=None, repr=False, compare=False)
    initial_occupancies: str | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        _check_int("n_batches", self.n_batches, 1, MAX_BATCHES)
        _check_int("samples_per_batch", self.samples_per_batch, 1, MAX_SAMPLES_PER_BATCH)
        _check_int("max_iterations", self.max_iterations, 1, MAX_ITERATIONS)
        _check_int("n_samples", self.n_samples, 1, MAX_SAMPLES)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        if self.sample_source not in SAMPLE_SOURCES:
            raise InvalidInput(
                f"sample_source must be one of {', '.join(SAMPLE_SOURCES)}; "
                f"got {self.sample_source!r}.",
                details={"sample_source": self.sample_source},
            )
        if (self.sample_source == "counts") != (self.counts is not None):
            raise InvalidInput("counts must be given exactly when sample_source is 'counts'.")
        if self.counts is not None:
            _check_counts(self.counts)
        if self.initial_occupancies is not None and (
            not isinstance(self.initial_occupancies, str)
            or self.initial_occupancies not in INITIAL_OCCUPANCIES
        ):
            raise InvalidInput(
                f"initial_occupancies must be one of {', '.join(INITIAL_OCCUPANCIES)} or null; "
                f"got {_short(self.initial_occupancies)}.",
                details={"field": "initial_occupancies"},
            )
        if self.preset is not None and (
            not isinstance(self.preset, str) or self.preset not in PRESETS
        ):
            raise InvalidInput(
                f"preset must be one of {', '.join(PRESETS)}; got {_short(self.preset)}.",
                details={"field": "preset", "presets": list(PRESETS)},
            )
        if not isinstance(self.symmetrize_spin, bool):
            raise InvalidInput(
                f"symmetrize_spin must be true or false; got {self.symmetrize_spin!r}."
            )
        if self.spin_sq is not None:
            _check_number("spin_sq", self.spin_sq, minimum=0.0)
        _check_number("carryover_threshold", self.carryover_threshold, minimum=0.0, maximum=1.0)
        _check_number("energy_tol", self.energy_tol, minimum=0.0)
        _check_number("occupancies_tol", self.occupancies_tol, minimum=0.0)
        if self.max_dim is not None:
            _check_int("max_dim", self.max_dim, 1, 10**7)
        if self.max_cycle is not None:
            _check_int("max_cycle", self.max_cycle, 1, 10_000)
        if self.tol is not None:
            _check_number("tol", self.tol, minimum=1e-16, maximum=1e-2)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings (``counts`` summarised by its number of distinct bitstrings)."""
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "counts"
        }
        data["n_distinct_counts"] = None if self.counts is None else len(self.counts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SQDSettings:
        """Build from workflow params; unknown keys are rejected by name.

        ``preset`` (a :data:`PRESETS` name) supplies values for the settings not given.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidInput(
                f"Unknown SQD settings {unknown}; known: {', '.join(sorted(names))}.",
                details={"unknown": unknown},
            )
        preset = data.get("preset")
        if preset is None:
            return cls(**data)
        if not isinstance(preset, str) or preset not in PRESETS:
            raise InvalidInput(
                f"preset must be one of {', '.join(PRESETS)}; got {_short(preset)}.",
                details={"field": "preset", "presets": list(PRESETS)},
            )
        return cls(**{**PRESETS[preset], **data})


def _check_counts(counts: Any) -> None:
    """Shape of user counts: bitstring -> non-negative integer, at most MAX_SAMPLES shots."""
    if (
        not isinstance(counts, dict)
        or not counts
        or len(counts) > MAX_SAMPLES
        or not all(
            isinstance(k, str)
            and 1 <= len(k) <= MAX_BITSTRING
            and isinstance(v, int)
            and not isinstance(v, bool)
            and v >= 0
            for k, v in counts.items()
        )
        or sum(counts.values()) > MAX_SAMPLES
    ):
        raise InvalidInput(
            f"counts must map bitstrings (1..{MAX_BITSTRING} characters) to non-negative "
            f"integer counts adding up to at most {MAX_SAMPLES}.",
            details={"field": "counts"},
        )


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(
            f"{name} must be an integer between {low} and {high}; got {_short(value)}.",
            details={"field": name},
        )


def _check_number(name: str, value: Any, *, minimum: float, maximum: float = math.inf) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not minimum <= value <= maximum
    ):
        raise InvalidInput(
            f"{name} must be a number between {minimum} and {maximum}; got {_short(value)}.",
            details={"field": name},
        )


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"
