"""A degraded node's bookkeeping (node/degrade.py): exact refusal share, bounds, expiry."""

from __future__ import annotations

import pytest

from quantum_mesh.node.degrade import MAX_TTL_S, Degradation


def test_refuses_exactly_the_share_asked_for() -> None:
    degradation = Degradation.from_params({"refuse_share": 0.5, "slowdown": 3}, now=0.0)
    refused = [degradation.refuse_next() for _ in range(10)]
    assert refused == [False, True] * 5
    assert degradation.report(now=1.0)["reservations_refused"] == 5
    third = Degradation.from_params({"refuse_share": 1 / 3}, now=0.0)
    assert sum(third.refuse_next() for _ in range(9)) == 3


def test_lapses_by_itself_and_refuses_bad_settings() -> None:
    degradation = Degradation.from_params({"ttl_s": 10 * MAX_TTL_S}, now=100.0)
    assert degradation.active(100.0 + MAX_TTL_S - 1)
    assert not degradation.active(100.0 + MAX_TTL_S)
    assert degradation.noise_level is None and degradation.slowdown == 1.0
    for bad in (
        {"refuse_share": 1.5},
        {"slowdown": 0.5},
        {"noise_level": -0.1},
        {"ttl_s": 0},
        {"slowdown": True},
        {"refuse_share": float("nan")},
    ):
        with pytest.raises(ValueError):
            Degradation.from_params(bad, now=0.0)
