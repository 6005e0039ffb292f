"""Every workload's params are checked before a job exists: a misspelled setting is refused
by name (422) instead of running silently with its default."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.workflows import WORKFLOWS
from quantum_mesh.errors import InvalidInput
from tests.control.conftest import make_settings

KNAPSACK = {"values": [6, 5, 4], "weights": [3, 2, 2], "capacity": 4}
PORTFOLIO = {
    "assets": ["a", "b", "c"],
    "expected_returns": [0.1, 0.2, 0.15],
    "covariance": [[0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.1]],
    "budget": 2,
}
SEARCH = {"qubo": [[1.0, -2.0], [-2.0, 1.0]]}


@pytest.fixture
def compute() -> Iterator[ComputePools]:
    pools = ComputePools(make_settings())
    yield pools
    pools.shutdown()


@pytest.mark.parametrize(
    ("kind", "params", "typo"),
    [
        ("qaoa_knapsack", KNAPSACK, "sed"),
        ("qaoa_knapsack", KNAPSACK, "beamwidth"),
        ("qaoa_knapsack_batch", {"instances": [KNAPSACK, KNAPSACK]}, "paralel_instances"),
        ("portfolio", PORTFOLIO, "risk_aversoin"),
        ("qaoa_parameter_search", SEARCH, "refine"),
    ],
)
async def test_a_misspelled_parameter_is_refused_by_name(
    compute: ComputePools, kind: str, params: dict[str, Any], typo: str
) -> None:
    assert await WORKFLOWS[kind].validate(dict(params), compute)  # the correct body passes
    with pytest.raises(InvalidInput) as caught:
        await WORKFLOWS[kind].validate({**params, typo: 5}, compute)
    error = caught.value
    assert error.details["field"] == typo and error.details["unknown"] == [typo]
    assert error.message.startswith(f"params.{typo} is not a parameter of {kind}")
    assert set(params) <= set(error.details["valid"])


async def test_knapsack_settings_are_valid_parameters(compute: ComputePools) -> None:
    validated = await WORKFLOWS["qaoa_knapsack"].validate(
        {**KNAPSACK, "seed": 3, "beam_width": 4, "compound_size": 0}, compute
    )
    assert validated["seed"] == 3 and validated["settings"]["beam_width"] == 4
