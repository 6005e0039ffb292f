"""Block jobs and results exchanged between the master (beam driver) and nodes, and the
decomposition of a knapsack into blocks.

Both dataclasses round-trip through JSON: ``BlockJob.from_dict(json.loads(json.dumps(
job.to_dict()))) == job``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.qaoa.classical import density_order

Order = Literal["density", "index", "weight", "value", "shuffle"]
ORDERS = ("density", "index", "weight", "value", "shuffle")


@dataclass(frozen=True)
class BlockJob:
    """One QAOA block: its items, the context of the beam entry it extends, and settings.

    ``problem`` is ``"knapsack"`` (context: ``remaining_capacity``, ``chosen_value``,
    ``chosen_weight``, ``penalty``, ``future``) or ``"portfolio"`` (``values`` are expected
    returns; context: ``covariance``, ``budget``, ``risk_aversion``, ``encoding``).
    ``qaoa``: ``p``, and either fixed ``gammas``/``betas`` or ``optimizer`` (``"grid"`` or
    ``"cobyla"``) with ``grid_size``/``maxiter``; ``shots``.
    """

    job_id: str
    block_index: int
    item_indices: list[int]
    values: list[float]
    weights: list[float]
    context: dict[str, Any]
    qaoa: dict[str, Any]
    random_seed: int
    job_version: int = 1
    top_k: int = 8
    beam_entry: int = 0
    problem: str = "knapsack"

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockJob:
        """Parse and check a job dict.

        Raises:
            InvalidInput: missing or extra fields, mismatched lengths, bad numbers.
        """
        names = set(cls.__dataclass_fields__)
        required = {
            "job_id",
            "block_index",
            "item_indices",
            "values",
            "weights",
            "context",
            "qaoa",
            "random_seed",
        }
        missing = sorted(required - set(data))
        extra = sorted(set(data) - names)
        if missing or extra:
            raise InvalidInput(
                f"Bad block job: missing {missing}, unknown {extra}.",
                details={"missing": missing, "unknown": extra},
            )
        try:
            job = cls(
                job_id=str(data["job_id"]),
                block_index=int(data["block_index"]),
                item_indices=[int(i) for i in data["item_indices"]],
                values=[float(v) for v in data["values"]],
                weights=[float(w) for w in data["weights"]],
                context=dict(data["context"]),
                qaoa=dict(data["qaoa"]),
                random_seed=int(data["random_seed"]),
                job_version=int(data.get("job_version", 1)),
                top_k=int(data.get("top_k", 8)),
                beam_entry=int(data.get("beam_entry", 0)),
                problem=str(data.get("problem", "knapsack")),
            )
        except (TypeError, ValueError) as error:
            raise InvalidInput(f"Bad block job field: {error}") from error
        n = len(job.item_indices)
        if len(job.values) != n or len(job.weights) != n or n == 0:
            raise InvalidInput(
                f"item_indices, values and weights must have the same non-zero length. "
                f"Instead, got {n}, {len(job.values)} and {len(job.weights)}.",
            )
        if job.top_k < 1:
            raise InvalidInput(f"top_k must be >= 1. Instead, got {job.top_k}.")
        if job.problem not in ("knapsack", "portfolio"):
            raise InvalidInput(f"Unknown problem {job.problem!r}; use knapsack or portfolio.")
        return job


@dataclass(frozen=True)
class BlockResult:
    """What a node returns for a :class:`BlockJob`.

    ``candidates``: feasible selections of the block, best (lowest cost) first, each
    ``{"bits": [0/1 per item], "value", "weight", "cost"}``. ``diagnostics``: ``energy``
    (expectation of the final QAOA state), ``p``, ``gammas``, ``betas``, ``evaluations``,
    ``seconds`` and more.
    """

    job_id: str
    block_index: int
    job_version: int
    candidates: list[dict[str, Any]]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    beam_entry: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockResult:
        try:
            return cls(
                job_id=str(data["job_id"]),
                block_index=int(data["block_index"]),
                job_version=int(data["job_version"]),
                candidates=[dict(c) for c in data["candidates"]],
                diagnostics=dict(data.get("diagnostics", {})),
                beam_entry=int(data.get("beam_entry", 0)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInput(f"Bad block result: {error!r}") from error


def decompose(
    values: Sequence[int],
    weights: Sequence[int],
    *,
    block_size: int = 14,
    order: Order = "density",
    shuffle_seed: int = 0,
) -> list[list[int]]:
    """Split item indices into consecutive blocks of at most ``block_size`` items.

    ``order="density"`` sorts items by decreasing value/weight first (the blocks then go from
    "surely in" to "surely out", and the hard decisions gather around the LP break item);
    ``"index"`` keeps the input order; ``"weight"`` and ``"value"`` sort by decreasing weight
    or value (on strongly correlated instances, where every density is alike, heavy items
    first is what leaves room to fill the capacity exactly); ``"shuffle"`` is a permutation
    drawn from ``shuffle_seed``. Block sizes differ by at most one.
    """
    if not 1 <= block_size <= 24:
        raise InvalidInput(f"block_size must be in [1, 24]. Instead, got {block_size}.")
    if order not in ORDERS:
        raise InvalidInput(f"order must be one of {ORDERS}. Instead, got {order!r}.")
    if len(values) != len(weights) or not values:
        raise InvalidInput("values and weights must be non-empty and of the same length.")
    vals = np.asarray(values, dtype=np.int64)
    wts = np.asarray(weights, dtype=np.int64)
    if order == "density":
        idx = density_order(vals, wts)
    elif order == "weight":
        idx = np.argsort(-wts, kind="stable")
    elif order == "value":
        idx = np.argsort(-vals, kind="stable")
    elif order == "shuffle":
        idx = np.random.default_rng(shuffle_seed).permutation(vals.size)
    else:
        idx = np.arange(vals.size)
    parts = -(-vals.size // block_size)
    return [chunk.tolist() for chunk in np.array_split(idx, parts)]


def _fields_dict(obj: BlockJob | BlockResult) -> dict[str, Any]:
    """A job's or result's fields, top-level lists and dicts copied. Not ``asdict``: its
    recursive deep copy of a job's future profile (hundreds of floats, the same for every
    job of a block) was a third of the beam driver's time per round. Nothing that receives
    the dict changes nested values in place."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = (
            list(value)
            if isinstance(value, list)
            else dict(value)
            if isinstance(value, dict)
            else value
        )
    return out
