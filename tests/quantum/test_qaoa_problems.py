"""Block energies, decomposition and job (de)serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantum_mesh.errors import InvalidInput
from quantum_mesh.quantum.qaoa import blocks, problems


def test_knapsack_block_energies_by_hand() -> None:
    values, weights = [5, 4, 3], [4, 3, 2]
    future = problems.future_profile([6], [3])  # density 2 for up to 3 units
    energies, tv, tw = problems.knapsack_block_energies(
        values, weights, context={"remaining_capacity": 6, "penalty": 10.0, "future": future}
    )
    for index in range(8):
        bits = [(index >> q) & 1 for q in range(3)]  # qubit 0 = item 0 = least significant bit
        v = sum(b * x for b, x in zip(bits, values, strict=True))
        w = sum(b * x for b, x in zip(bits, weights, strict=True))
        assert (tv[index], tw[index]) == (v, w)
        if w <= 6:
            expected = -v - 2.0 * min(6 - w, 3)
        else:
            over = w - 6
            expected = -v + 10.0 * (over + over**2 / 4)
        assert energies[index] == pytest.approx(expected)


def test_qubo_energies_and_lp_value() -> None:
    q = np.array([[1.0, 2.0], [0.0, -3.0]])
    np.testing.assert_allclose(problems.qubo_energies(q, offset=0.5), [0.5, 1.5, -2.5, 0.5])
    profile = problems.future_profile([10, 3], [5, 3])
    assert problems.lp_value(np.array([0.0, 2.5, 5.0, 6.5, 100.0]), profile).tolist() == [
        0.0,
        5.0,
        10.0,
        11.5,
        13.0,
    ]
    with pytest.raises(InvalidInput):
        problems.qubo_energies([[1.0, 2.0]])


def test_lp_curve_is_lp_value_at_a_scalar() -> None:
    profile = problems.future_profile([10, 3, 7, 1], [5, 3, 4, 2])
    curve = problems.lp_curve(profile)
    for capacity in (-4.0, 0.0, 1.3, 2.5, 5.0, 6.5, 9.0, 13.9, 14.0, 100.0):
        assert curve(capacity) == float(problems.lp_value(capacity, profile))
    assert problems.lp_curve(None)(7.0) == 0.0
    assert problems.lp_curve({"weights": [0.0], "values": [0.0]})(7.0) == 0.0


def test_decompose_orders_and_sizes() -> None:
    values, weights = [1, 9, 5, 7, 2], [1, 1, 1, 1, 1]
    assert blocks.decompose(values, weights, block_size=2) == [[1, 3], [2, 4], [0]]
    assert blocks.decompose(values, weights, block_size=3, order="index") == [[0, 1, 2], [3, 4]]
    with pytest.raises(InvalidInput):
        blocks.decompose(values, weights, block_size=0)


def test_block_job_and_result_round_trip() -> None:
    job = blocks.BlockJob(
        job_id="j1",
        block_index=2,
        item_indices=[4, 7],
        values=[3.0, 5.0],
        weights=[1.0, 2.0],
        context={"remaining_capacity": 3, "future": None},
        qaoa={"p": 1},
        random_seed=9,
        job_version=2,
        top_k=3,
        beam_entry=1,
    )
    assert blocks.BlockJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    # A payload is a copy: changing it leaves the (frozen) job as it was.
    payload = job.to_dict()
    payload["item_indices"].append(9)
    payload["context"]["remaining_capacity"] = 0
    assert job.item_indices == [4, 7] and job.context["remaining_capacity"] == 3
    result = blocks.BlockResult(
        job_id="j1",
        block_index=2,
        job_version=2,
        candidates=[{"bits": [1, 0], "value": 3, "weight": 1, "cost": -3.0}],
        diagnostics={"p": 1},
        beam_entry=1,
    )
    assert blocks.BlockResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    with pytest.raises(InvalidInput):
        blocks.BlockJob.from_dict({**job.to_dict(), "values": [1.0]})
    with pytest.raises(InvalidInput):
        blocks.BlockJob.from_dict({**job.to_dict(), "surprise": 1})
