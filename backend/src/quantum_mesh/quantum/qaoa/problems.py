"""Diagonal cost energies of QAOA problems: knapsack blocks with context, portfolio, QUBO.

All energies are computed classically for every basis state of the block (2**n values,
vectorised) and handed to the diagonal engine. Because the cost is only ever used through
its diagonal, a capacity constraint needs no slack qubits: any function of ``w . x`` can be
written down directly, e.g. a penalty on the overshoot ``max(0, w . x - C)``.

Energies are minimised; qubit ``j`` is item ``j`` of the block (qubit 0 = least significant
bit of the basis index, as in Qiskit).

Knapsack block energy (``C`` = remaining capacity in the context)::

    E(x) = -(v . x) - F(C - w . x)                       if w . x <= C
    E(x) = -(v . x) + P * (o + o**2 / w_max)             if o = w . x - C > 0

``F(c)`` is the fractional (LP) knapsack value of the items *after* this block with capacity
``c`` (``context["future"]``, a concave piecewise-linear profile; absent = 0). It tells the
block what the capacity it leaves unused is worth to later blocks, which keeps the local
choice from being myopic. ``P`` (``context["penalty"]``, default twice the best value
density) makes every overweight selection worse than dropping items to fit.

Portfolio: maximise ``mu^T x - q x^T Sigma x`` with exactly ``budget`` assets. Two
encodings are provided: the XY-mixer encoding (energy ``-objective``, start from the Dicke
state, ring XY mixer: the budget holds exactly and no penalty distorts the landscape) and
the penalty encoding (``+ A (sum x - budget)**2`` with the transverse-field mixer). The XY
encoding is the default: on 10-asset instances it puts far more probability on the optimum
(see the module tests and the report).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.qaoa.engine import MAX_QUBITS

FloatArray = NDArray[np.float64]


def subset_sums(coefficients: Sequence[float] | FloatArray) -> FloatArray:
    """``sum_j c_j x_j`` for every basis state ``x`` (bit ``j`` of the index = ``x_j``)."""
    sums = np.zeros(1, dtype=np.float64)
    for c in np.asarray(coefficients, dtype=np.float64).tolist():
        sums = np.concatenate([sums, sums + c])
    return sums


def quadratic_form(matrix: FloatArray) -> FloatArray:
    """``x^T M x`` for every basis state, by doubling: O(2**n) work, no bit table.

    Setting bit ``q`` on a state over qubits ``0..q-1`` adds ``M_qq`` plus
    ``sum_{j<q} (M_qj + M_jq) x_j``, itself a :func:`subset_sums` over the lower bits.
    """
    m = np.asarray(matrix, dtype=np.float64)
    pair = m + m.T
    out = np.zeros(1, dtype=np.float64)
    for q in range(m.shape[0]):
        out = np.concatenate([out, out + (m[q, q] + subset_sums(pair[q, :q]))])
    return out


def future_profile(values: Sequence[int], weights: Sequence[int]) -> dict[str, list[float]]:
    """Breakpoints of the LP (fractional) knapsack value of ``values``/``weights``.

    Returns ``{"weights": [0, W1, ...], "values": [0, V1, ...]}``: cumulative weight and
    value of the items taken in decreasing density; the LP value at capacity ``c`` is the
    linear interpolation, flat beyond the last breakpoint.
    """
    vals = np.asarray(values, dtype=np.float64)
    wts = np.asarray(weights, dtype=np.float64)
    order = np.lexsort((np.arange(vals.size), -vals, -(vals / np.maximum(wts, 1e-300))))
    return {
        "weights": [0.0, *np.cumsum(wts[order]).tolist()],
        "values": [0.0, *np.cumsum(vals[order]).tolist()],
    }


def lp_value(capacity: FloatArray | float, profile: Mapping[str, Sequence[float]] | None) -> Any:
    """The LP value of a :func:`future_profile` at the given capacity (array or scalar)."""
    if not profile or len(profile.get("weights", [])) < 2:
        return np.zeros_like(np.asarray(capacity, dtype=np.float64))
    return np.interp(np.maximum(capacity, 0.0), profile["weights"], profile["values"], left=0.0)


def lp_curve(profile: Mapping[str, Sequence[float]] | None) -> Callable[[float], float]:
    """:func:`lp_value` at a scalar capacity for one profile, its breakpoints converted to
    arrays once: the beam scores every candidate of a block against the same profile, and
    converting the lists on each call was most of the cost."""
    if not profile or len(profile.get("weights", [])) < 2:
        return lambda capacity: 0.0
    xp = np.asarray(profile["weights"], dtype=np.float64)
    fp = np.asarray(profile["values"], dtype=np.float64)

    def value(capacity: float) -> float:
        return float(np.interp(max(capacity, 0.0), xp, fp, left=0.0))

    return value


def default_penalty(values: FloatArray, weights: FloatArray) -> float:
    """Twice the best value density of the block: overweight never pays."""
    return float(2.0 * np.max(values / weights))


def knapsack_block_energies(
    values: Sequence[float], weights: Sequence[float], *, context: Mapping[str, Any]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Energies of every selection of a block, plus its total values and weights.

    Args:
        values: item values of the block (positive).
        weights: item weights of the block (positive).
        context: ``remaining_capacity`` (required), ``penalty`` (optional, see module doc),
            ``future`` (optional :func:`future_profile` of the items after this block).

    Returns:
        ``(energies, block_values, block_weights)``, each of length ``2**len(values)``.

    Raises:
        InvalidInput: bad lengths, more than ``MAX_QUBITS`` items, missing capacity.
    """
    vals = np.asarray(values, dtype=np.float64)
    wts = np.asarray(weights, dtype=np.float64)
    if vals.ndim != 1 or vals.shape != wts.shape or not 1 <= vals.size <= MAX_QUBITS:
        raise InvalidInput(
            f"A block needs 1..{MAX_QUBITS} items with one weight each. Instead, got "
            f"{vals.size} values and {wts.size} weights.",
            details={"values": int(vals.size), "weights": int(wts.size)},
        )
    if np.any(vals <= 0) or np.any(wts <= 0):
        raise InvalidInput("Block values and weights must be positive.")
    if "remaining_capacity" not in context:
        raise InvalidInput("Knapsack block context needs 'remaining_capacity'.")
    capacity = float(context["remaining_capacity"])
    penalty = context.get("penalty")
    pen = default_penalty(vals, wts) if penalty is None else float(penalty)
    total_v = subset_sums(vals)
    total_w = subset_sums(wts)
    slack = capacity - total_w
    over = np.maximum(-slack, 0.0)
    future = lp_value(np.maximum(slack, 0.0), context.get("future"))
    energies = np.where(
        over > 0, -total_v + pen * (over + over**2 / float(wts.max())), -total_v - future
    )
    return np.asarray(energies, dtype=np.float64), total_v, total_w


def portfolio_energies(
    expected_returns: FloatArray,
    covariance: FloatArray,
    *,
    risk_aversion: float,
    budget_penalty: float | None = None,
    budget: int | None = None,
) -> FloatArray:
    """``-(mu^T x - q x^T Sigma x)``, plus ``A (sum x - budget)**2`` if a penalty is given."""
    energies = -(subset_sums(expected_returns) - risk_aversion * quadratic_form(covariance))
    if budget_penalty is not None:
        if budget is None:
            raise InvalidInput("A budget penalty needs the budget.")
        counts = subset_sums(np.ones(expected_returns.size))
        energies = energies + budget_penalty * (counts - budget) ** 2
    return np.asarray(energies, dtype=np.float64)


def qubo_energies(
    matrix: Sequence[Sequence[float]] | FloatArray, *, offset: float = 0.0
) -> FloatArray:
    """``x^T Q x + offset`` for every basis state of a QUBO (``Q`` square, <= MAX_QUBITS)."""
    q = np.asarray(matrix, dtype=np.float64)
    if q.ndim != 2 or q.shape[0] != q.shape[1] or not 1 <= q.shape[0] <= MAX_QUBITS:
        raise InvalidInput(
            f"A QUBO matrix must be square with 1..{MAX_QUBITS} rows. Instead, got shape "
            f"{list(q.shape)}.",
            details={"shape": list(q.shape)},
        )
    if not np.all(np.isfinite(q)):
        raise InvalidInput("QUBO entries must be finite.")
    return quadratic_form(q) + float(offset)
