"""Knapsack DP / greedy, portfolio brute force and input validation, on tiny instances."""

from __future__ import annotations

from itertools import combinations, product

import numpy as np
import pytest

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.qaoa import classical


def _enumerate_knapsack(values: list[int], weights: list[int], capacity: int) -> int:
    best = 0
    for bits in product((0, 1), repeat=len(values)):
        w = sum(b * x for b, x in zip(bits, weights, strict=True))
        if w <= capacity:
            best = max(best, sum(b * v for b, v in zip(bits, values, strict=True)))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_dp_matches_enumeration(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 30, 10).tolist()
    weights = rng.integers(1, 20, 10).tolist()
    capacity = int(sum(weights) * 0.4)
    sol = classical.knapsack_dp(values, weights, capacity)
    assert sol.value == _enumerate_knapsack(values, weights, capacity)
    assert sol.weight == sum(weights[i] for i in sol.selected) <= capacity
    assert sol.value == sum(values[i] for i in sol.selected)


def test_greedy_by_density_hand_example() -> None:
    # densities 3, 2, 1.5, 1: take 0 (w 2), 1 (w 3), skip 2 (w 4 > 1 left), take 3 (w 1)
    sol = classical.knapsack_greedy([6, 6, 6, 1], [2, 3, 4, 1], 6)
    assert sol.selected == [0, 1, 3]
    assert (sol.value, sol.weight) == (13, 6)
    assert classical.knapsack_dp([6, 6, 6, 1], [2, 3, 4, 1], 6).value == 13


def test_zero_capacity() -> None:
    assert classical.knapsack_dp([3, 4], [1, 2], 0).selected == []
    assert classical.knapsack_greedy([3, 4], [1, 2], 0).value == 0


@pytest.mark.parametrize(
    ("values", "weights", "capacity"),
    [
        ([1, 2], [1], 3),
        ([1, 0], [1, 1], 3),
        ([1, 2], [1, -1], 3),
        ([1.5, 2], [1, 1], 3),
        ([True, 2], [1, 1], 3),
        ([1, 2], [1, 1], -1),
        ([], [], 3),
        ([1] * 301, [1] * 301, 3),
    ],
)
def test_knapsack_validation(values: list, weights: list, capacity: int) -> None:
    with pytest.raises(InvalidInput):
        classical.validate_knapsack(values, weights, capacity)


@pytest.mark.parametrize(
    ("values", "weights", "capacity", "field"),
    [
        ([10**30, 2], [1, 1], 3, "values"),
        ([1, 2], [1, 10**13], 3, "weights"),
        ([1, 2], [1, 1], 10**30, "capacity"),
        ([1, 2], [1, 1], 2.0, "capacity"),
        ("ab", [1, 1], 3, "values"),
        ([1] * 10**5, [1] * 10**5, 3, "values"),
    ],
)
def test_knapsack_numbers_are_bounded_and_name_the_field(
    values: object, weights: list, capacity: object, field: str
) -> None:
    with pytest.raises(InvalidInput, match=field) as info:
        classical.validate_knapsack(values, weights, capacity)  # type: ignore[arg-type]
    assert info.value.details["field"] == field


def test_knapsack_bounds_are_inclusive() -> None:
    top = classical.MAX_KNAPSACK_NUMBER
    vals, wts, cap = classical.validate_knapsack([top, 1], [top, 1], 5)
    assert int(vals.sum()) == top + 1 and int(wts.max()) == top and cap == 5
    assert classical.knapsack_dp([top, 1], [top, 1], 5).value == 1


def test_portfolio_numbers_are_bounded_and_name_the_field() -> None:
    ok = ([0.1, 0.2], [[1.0, 0.0], [0.0, 1.0]], 1, 0.5)
    for index, bad, field in [
        (0, [1e300, 0.1], "expected_returns"),
        (0, [10**400, 0.1], "expected_returns"),
        (0, ["x", 0.1], "expected_returns"),
        (1, [[1e300, 0.0], [0.0, 1.0]], "covariance"),
        (2, 10**30, "budget"),
        (3, 1e300, "risk_aversion"),
        (3, "abc", "risk_aversion"),
        (3, float("nan"), "risk_aversion"),
    ]:
        args = list(ok)
        args[index] = bad
        with pytest.raises(InvalidInput, match=field) as info:
            classical.validate_portfolio(*args)  # type: ignore[arg-type]
        assert info.value.details["field"] == field


def test_portfolio_brute_force_matches_enumeration() -> None:
    rng = np.random.default_rng(7)
    n, k, q = 7, 3, 0.8
    mu = rng.uniform(0, 1, n)
    a = rng.normal(size=(n, n))
    sigma = a @ a.T / n
    best = max(
        (float(mu[list(c)].sum() - q * sigma[np.ix_(c, c)].sum()), list(c))
        for c in combinations(range(n), k)
    )
    sol = classical.portfolio_brute_force(mu.tolist(), sigma.tolist(), k, q)
    assert sol.selected == best[1]
    assert abs(sol.objective - best[0]) < 1e-12


def test_portfolio_validation() -> None:
    with pytest.raises(InvalidInput):
        classical.validate_portfolio([0.1, 0.2], [[1.0, 0.5], [0.4, 1.0]], 1, 0.5)
    with pytest.raises(InvalidInput):
        classical.validate_portfolio([0.1, 0.2], [[1.0, 0.0], [0.0, 1.0]], 3, 0.5)
    with pytest.raises(InvalidInput):
        classical.validate_portfolio([0.1, 0.2], [[1.0, 0.0]], 1, 0.5)


def test_portfolio_optimum_names_every_tied_selection() -> None:
    # Assets 0 and 1 are the same asset under two names: two selections share the optimum.
    mu = [0.1, 0.1, 0.05, 0.02]
    cov = [[0.01 if i == j else 0.0 for j in range(4)] for i in range(4)]
    sol = classical.portfolio_brute_force(mu, cov, 1, 0.5)
    assert sol.selected == [0] and set(sol.ties) == {(0,), (1,)} and sol.ties[0] == (0,)
    distinct = classical.portfolio_brute_force([0.3, 0.1, 0.05, 0.02], cov, 2, 0.5)
    assert distinct.ties == ()
