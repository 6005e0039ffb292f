"""Classical references: exact knapsack DP, greedy by value density, brute-force portfolio.

Also the input validation shared by the QAOA drivers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quantum_mesh.errors import InvalidInput

MAX_ITEMS = 300
MAX_KNAPSACK_NUMBER = 10**12
"""Largest knapsack value, weight or capacity: 300 items of 10**12 sum far inside int64."""
MAX_DP_CELLS = 60_000_000
"""Items x (capacity + 1) bound of the DP table (bytes of its keep matrix)."""
MAX_PORTFOLIO_ASSETS = 20
MAX_PORTFOLIO_MAGNITUDE = 1e9
"""Largest |expected return| and |covariance entry| of a portfolio instance."""
MAX_RISK_AVERSION = 1e6
MAX_BRUTE_FORCE_ASSETS = 20

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class KnapsackSolution:
    value: int
    weight: int
    selected: list[int]


@dataclass(frozen=True, slots=True)
class PortfolioSolution:
    objective: float
    selected: list[int]
    #: Every selection whose objective equals the optimum (to 1e-9 relative), ``selected``
    #: first; at most ``MAX_TIES`` of them.
    ties: tuple[tuple[int, ...], ...] = ()


def _int_list(name: str, data: Any, *, minimum: int, maximum: int, max_len: int) -> IntArray:
    if not isinstance(data, Sequence | np.ndarray) or isinstance(data, str | bytes):
        raise InvalidInput(f"{name} must be a list of integers.", details={"field": name})
    if not 1 <= len(data) <= max_len:
        raise InvalidInput(
            f"{name} must list 1 to {max_len} items. Instead, got {len(data)}.",
            details={"field": name, "items": len(data), "max_items": max_len},
        )
    out = []
    for i, item in enumerate(data):
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise InvalidInput(
                f"{name}[{i}] must be an integer. Instead, got {_short(item)}.",
                details={"field": name, "index": i},
            )
        if not minimum <= item <= maximum:
            raise InvalidInput(
                f"{name}[{i}] must be in [{minimum}, {maximum}]. Instead, got {_short(item)}.",
                details={"field": name, "index": i, "minimum": minimum, "maximum": maximum},
            )
        out.append(int(item))
    return np.asarray(out, dtype=np.int64)


def _short(value: Any, limit: int = 40) -> str:
    """``repr`` of a client's value, cut for messages (10**30 has 31 digits)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def validate_knapsack(
    values: Sequence[int], weights: Sequence[int], capacity: int
) -> tuple[IntArray, IntArray, int]:
    """Check a 0/1 knapsack instance and return it as arrays.

    Raises:
        InvalidInput: lengths differ, N outside [1, 300], values or weights that are not
            integers in [1, 10**12], a capacity that is not an integer in [0, 10**12], or a
            DP table larger than ``MAX_DP_CELLS``. ``details.field`` names the parameter.
    """
    vals = _int_list("values", values, minimum=1, maximum=MAX_KNAPSACK_NUMBER, max_len=MAX_ITEMS)
    wts = _int_list("weights", weights, minimum=1, maximum=MAX_KNAPSACK_NUMBER, max_len=MAX_ITEMS)
    if vals.size != wts.size:
        raise InvalidInput(
            f"values and weights must have the same length. Instead, got {vals.size} and "
            f"{wts.size}.",
            details={"field": "weights", "values": int(vals.size), "weights": int(wts.size)},
        )
    if (
        isinstance(capacity, bool)
        or not isinstance(capacity, int | np.integer)
        or not 0 <= capacity <= MAX_KNAPSACK_NUMBER
    ):
        raise InvalidInput(
            f"capacity must be an integer in [0, {MAX_KNAPSACK_NUMBER}]. "
            f"Instead, got {_short(capacity)}.",
            details={"field": "capacity", "capacity": _short(capacity)},
        )
    capacity = int(min(int(capacity), int(wts.sum())))
    if vals.size * (capacity + 1) > MAX_DP_CELLS:
        raise InvalidInput(
            f"items x (capacity + 1) must be <= {MAX_DP_CELLS} for the exact reference. "
            f"Instead, got {vals.size} x {capacity + 1}.",
            details={"field": "capacity", "items": int(vals.size), "capacity": capacity},
        )
    return vals, wts, capacity


def knapsack_dp(values: Sequence[int], weights: Sequence[int], capacity: int) -> KnapsackSolution:
    """Exact 0/1 knapsack optimum by dynamic programming over capacity (vectorised rows)."""
    vals, wts, cap = validate_knapsack(values, weights, capacity)
    best = np.zeros(cap + 1, dtype=np.int64)
    keep = np.zeros((vals.size, cap + 1), dtype=bool)
    for i, (v, w) in enumerate(zip(vals.tolist(), wts.tolist(), strict=True)):
        if w > cap:
            continue
        candidate = best[: cap + 1 - w] + v
        better = candidate > best[w:]
        keep[i, w:] = better
        best[w:] = np.where(better, candidate, best[w:])
    selected, room = [], cap
    for i in range(vals.size - 1, -1, -1):
        if keep[i, room]:
            selected.append(i)
            room -= int(wts[i])
    selected.reverse()
    return KnapsackSolution(
        value=int(vals[selected].sum()), weight=int(wts[selected].sum()), selected=selected
    )


def density_order(values: IntArray, weights: IntArray) -> IntArray:
    """Item indices by decreasing value/weight (ties: larger value, then smaller index)."""
    density = values / weights
    return np.lexsort((np.arange(values.size), -values, -density)).astype(np.int64)


def knapsack_greedy(
    values: Sequence[int], weights: Sequence[int], capacity: int
) -> KnapsackSolution:
    """Greedy by value density: add each item (best density first) if it still fits."""
    vals, wts, cap = validate_knapsack(values, weights, capacity)
    selected, room = [], cap
    for i in density_order(vals, wts).tolist():
        if wts[i] <= room:
            selected.append(i)
            room -= int(wts[i])
    selected.sort()
    return KnapsackSolution(
        value=int(vals[selected].sum()), weight=int(wts[selected].sum()), selected=selected
    )


#: Improving moves a repair makes at most (each strictly raises the value: it always ends).
MAX_REPAIR_MOVES = 10_000
#: Unselected items (densest first) that 2-swaps draw their pairs from.
PAIR_POOL = 150


def knapsack_swap_repair(
    values: Sequence[int], weights: Sequence[int], capacity: int, selected: Sequence[int]
) -> tuple[KnapsackSolution, list[dict[str, Any]]]:
    """Classical local search from a feasible ``selected``: best-improvement moves until none
    is left — add one item that fits, swap one item out for one in (1-swap), or one out for
    two in (2-swap). Each move strictly raises the value, so it ends; it only ever keeps
    the answer feasible. Returns the improved solution and the moves made (``kind``,
    ``out``, ``in``, ``gain``), so callers can show what the repair, not the search, added.
    """
    vals, wts, cap = validate_knapsack(values, weights, capacity)
    chosen = np.zeros(vals.size, dtype=bool)
    chosen[list(selected)] = True
    if int(wts[chosen].sum()) > cap:
        raise InvalidInput(
            "the selection to repair is over capacity", details={"field": "selected"}
        )
    moves: list[dict[str, Any]] = []
    while len(moves) < MAX_REPAIR_MOVES:
        move = _best_move(vals, wts, cap, chosen)
        if move is None:
            break
        for i in move["out"]:
            chosen[i] = False
        for i in move["in"]:
            chosen[i] = True
        moves.append(move)
    picked = np.flatnonzero(chosen).tolist()
    solution = KnapsackSolution(
        value=int(vals[picked].sum()), weight=int(wts[picked].sum()), selected=picked
    )
    return solution, moves


def _best_move(
    vals: IntArray, wts: IntArray, cap: int, chosen: NDArray[np.bool_]
) -> dict[str, Any] | None:
    """The single move with the largest gain (ties: the first found), or None."""
    room = cap - int(wts[chosen].sum())
    ins = np.flatnonzero(~chosen)
    outs = np.flatnonzero(chosen)
    best: dict[str, Any] | None = None

    def consider(kind: str, out: list[int], into: list[int], gain: int) -> None:
        nonlocal best
        if gain > 0 and (best is None or gain > best["gain"]):
            best = {"kind": kind, "out": out, "in": into, "gain": gain}

    if ins.size:
        addable = ins[wts[ins] <= room]
        if addable.size:
            j = int(addable[np.argmax(vals[addable])])
            consider("add", [], [j], int(vals[j]))
    if ins.size and outs.size:
        # 1-swap: gain[o, i] = v_i - v_o where w_i - w_o <= room.
        swap_fits = (wts[ins][None, :] - wts[outs][:, None]) <= room
        gain = np.where(swap_fits, vals[ins][None, :] - vals[outs][:, None], 0)
        o_at, i_at = np.unravel_index(int(np.argmax(gain)), gain.shape)
        consider("swap", [int(outs[o_at])], [int(ins[i_at])], int(gain[o_at, i_at]))
    if ins.size > 1 and outs.size:
        # 2-swap: one out, two in. Pairs of candidates once (the densest unselected items
        # only, so that large instances stay quadratic), then every item out.
        pool = ins[np.argsort(-(vals[ins] / wts[ins]), kind="stable")[:PAIR_POOL]]
        a, b = np.triu_indices(pool.size, k=1)
        pair_w = wts[pool][a] + wts[pool][b]
        pair_v = vals[pool][a] + vals[pool][b]
        for out in outs.tolist():
            pair_fits = pair_w <= room + int(wts[out])
            if pair_fits.any():
                k = int(np.argmax(np.where(pair_fits, pair_v, -1)))
                into = [int(pool[a[k]]), int(pool[b[k]])]
                consider("swap2", [out], into, int(pair_v[k] - vals[out]))
    return best


def validate_portfolio(
    expected_returns: Sequence[float],
    covariance: Sequence[Sequence[float]],
    budget: int,
    risk_aversion: float,
) -> tuple[FloatArray, FloatArray, int, float]:
    """Check a budget-constrained mean-variance instance and return arrays.

    Raises:
        InvalidInput: N outside [2, 20], non-square or asymmetric covariance, entries that are
            not finite numbers within ``MAX_PORTFOLIO_MAGNITUDE``, budget outside [1, N], risk
            aversion outside [0, ``MAX_RISK_AVERSION``]. ``details.field`` names the parameter.
    """
    mu = _float_array("expected_returns", expected_returns)
    sigma = _float_array("covariance", covariance)
    n = mu.size
    if mu.ndim != 1 or not 2 <= n <= MAX_PORTFOLIO_ASSETS:
        raise InvalidInput(
            f"expected_returns must list 2..{MAX_PORTFOLIO_ASSETS} assets. Instead, got {n}.",
            details={"field": "expected_returns", "assets": int(n)},
        )
    if sigma.shape != (n, n):
        raise InvalidInput(
            f"covariance must be {n}x{n}. Instead, got shape {list(sigma.shape)}.",
            details={"field": "covariance", "shape": list(sigma.shape)},
        )
    if not np.allclose(sigma, sigma.T, atol=1e-9):
        raise InvalidInput("covariance must be symmetric.", details={"field": "covariance"})
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or not 1 <= budget <= n:
        raise InvalidInput(
            f"budget must be an integer in [1, {n}]. Instead, got {_short(budget)}.",
            details={"field": "budget", "budget": _short(budget)},
        )
    q = _finite_float(risk_aversion, MAX_RISK_AVERSION)
    if q is None or q < 0:
        raise InvalidInput(
            f"risk_aversion must be a number in [0, {MAX_RISK_AVERSION:g}]. "
            f"Instead, got {_short(risk_aversion)}.",
            details={"field": "risk_aversion"},
        )
    return mu, sigma, int(budget), q


def _finite_float(value: Any, bound: float) -> float | None:
    """``value`` as a float if it is a real number (not a bool) with ``|value| <= bound``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    if isinstance(value, int) and abs(value) > bound:  # float(10**400) overflows
        return None
    number = float(value)
    return number if np.isfinite(number) and abs(number) <= bound else None


def _float_array(name: str, data: Any) -> FloatArray:
    """``data`` as float64, every entry finite with ``|x| <= MAX_PORTFOLIO_MAGNITUDE``."""
    if isinstance(data, str | bytes):
        raise InvalidInput(f"{name} must hold numbers.", details={"field": name})
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as error:
        raise InvalidInput(
            f"{name} must hold numbers: {_short(str(error), 80)}", details={"field": name}
        ) from error
    if not np.all(np.isfinite(array)) or np.any(np.abs(array) > MAX_PORTFOLIO_MAGNITUDE):
        raise InvalidInput(
            f"{name} must be finite numbers with |x| <= {MAX_PORTFOLIO_MAGNITUDE:g}.",
            details={"field": name, "bound": MAX_PORTFOLIO_MAGNITUDE},
        )
    return array


def portfolio_objective(
    expected_returns: FloatArray,
    covariance: FloatArray,
    selected: Sequence[int],
    risk_aversion: float,
) -> float:
    """``mu^T x - q x^T Sigma x`` for the 0/1 vector with ones at ``selected``."""
    idx = np.asarray(list(selected), dtype=np.int64)
    return float(expected_returns[idx].sum() - risk_aversion * covariance[np.ix_(idx, idx)].sum())


def portfolio_brute_force(
    expected_returns: Sequence[float],
    covariance: Sequence[Sequence[float]],
    budget: int,
    risk_aversion: float,
) -> PortfolioSolution:
    """Exact optimum over all ``C(N, budget)`` selections (N <= 20), vectorised in chunks."""
    mu, sigma, k, q = validate_portfolio(expected_returns, covariance, budget, risk_aversion)
    if mu.size > MAX_BRUTE_FORCE_ASSETS:
        raise InvalidInput(f"Brute force needs N <= {MAX_BRUTE_FORCE_ASSETS}.")
    best_value, best_sel = -np.inf, np.zeros(k, dtype=np.int64)
    ties: list[tuple[int, ...]] = []
    combos = combinations(range(mu.size), k)
    while True:
        chunk = np.array([c for _, c in zip(range(50_000), combos, strict=False)], dtype=np.int64)
        if chunk.size == 0:
            break
        chunk = chunk.reshape(-1, k)
        ret = mu[chunk].sum(axis=1)
        risk = sigma[chunk[:, :, None], chunk[:, None, :]].sum(axis=(1, 2))
        objective = ret - q * risk
        top = int(np.argmax(objective))
        if objective[top] > best_value + 1e-12:
            if not _tied(float(objective[top]), best_value):
                ties = []
            best_value, best_sel = float(objective[top]), chunk[top]
        near = np.flatnonzero(
            np.abs(objective - best_value) <= _TIE_TOLERANCE * max(1.0, abs(best_value))
        )
        for row in near[: MAX_TIES - len(ties)]:
            ties.append(tuple(int(i) for i in chunk[row]))
    selected = tuple(int(i) for i in best_sel)
    ordered = [selected, *(t for t in dict.fromkeys(ties) if t != selected)][:MAX_TIES]
    return PortfolioSolution(
        objective=best_value,
        selected=list(selected),
        ties=tuple(ordered) if len(ordered) > 1 else (),
    )


#: Relative difference under which two objectives are the same optimum.
_TIE_TOLERANCE = 1e-9
MAX_TIES = 16


def _tied(a: float, b: float) -> bool:
    return bool(np.isfinite(b)) and abs(a - b) <= _TIE_TOLERANCE * max(1.0, abs(a))
