"""The QAOA worker functions behind the node methods qaoa_block and qaoa_schedules."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from quantum_mesh.quantum.qaoa import worker
from quantum_mesh.quantum.qaoa.blocks import BlockJob

#: The peer id a node stamps on its results (its noise level defaults to ideal).
PEER = "n0"


def _job(**changes: Any) -> dict[str, Any]:
    rng = np.random.default_rng(4)
    weights = rng.integers(5, 40, 10).astype(float).tolist()
    values = rng.integers(5, 60, 10).astype(float).tolist()
    job = BlockJob(
        job_id="j",
        block_index=0,
        item_indices=list(range(10)),
        values=values,
        weights=weights,
        context={"remaining_capacity": 60},
        qaoa={"p": 1, "shots": 256},
        random_seed=11,
        top_k=5,
    ).to_dict()
    job.update(changes)
    return job


def _strip_time(result: dict[str, Any]) -> dict[str, Any]:
    return {
        **result,
        "diagnostics": {k: v for k, v in result["diagnostics"].items() if k != "seconds"},
    }


def test_solve_block_feasible_sorted_and_deterministic() -> None:
    job = _job()
    first = worker.solve_block(job, peer_id=PEER)
    assert _strip_time(first) == _strip_time(worker.solve_block(job, peer_id=PEER))
    assert 1 <= len(first["candidates"]) <= 5
    costs = [c["cost"] for c in first["candidates"]]
    assert costs == sorted(costs)
    for cand in first["candidates"]:
        weight = sum(b * w for b, w in zip(cand["bits"], job["weights"], strict=True))
        value = sum(b * v for b, v in zip(cand["bits"], job["values"], strict=True))
        assert cand["weight"] == weight <= 60
        assert cand["value"] == value
    assert first["diagnostics"]["peer_id"] == "n0"
    assert first["diagnostics"]["evaluations"] == 64


def test_tight_capacity_repairs_to_feasible() -> None:
    result = worker.solve_block(_job(context={"remaining_capacity": 6}), peer_id=PEER)
    for cand in result["candidates"]:
        assert cand["weight"] <= 6


def test_compound_job_matches_single_jobs() -> None:
    jobs = [_job(job_id="a"), _job(job_id="b", random_seed=12)]
    compound = worker.solve_block({"jobs": jobs}, peer_id=PEER)
    singles = [worker.solve_block(j, peer_id=PEER) for j in jobs]
    assert [_strip_time(r) for r in compound["results"]] == [_strip_time(r) for r in singles]


def test_noise_lowers_quality() -> None:
    clean = worker.solve_block(_job(qaoa={"gammas": [1.2], "betas": [-0.6]}), peer_id=PEER)
    noisy = worker.solve_block(
        _job(qaoa={"gammas": [1.2], "betas": [-0.6]}),
        peer_id="n9",
        noise_level=0.05,
    )
    assert noisy["diagnostics"]["energy"] > clean["diagnostics"]["energy"]
    assert (
        noisy["diagnostics"]["ground_state_probability"]
        < clean["diagnostics"]["ground_state_probability"]
    )


def test_evaluate_schedules_zero_angles_give_uniform_mean() -> None:
    job = _job()
    out = worker.evaluate_schedules({**job, "schedules": [[0.0, 0.0], [1.2, -0.6]]}, peer_id=PEER)
    from quantum_mesh.quantum.qaoa.problems import knapsack_block_energies

    energies, _, _ = knapsack_block_energies(job["values"], job["weights"], context=job["context"])
    assert out["energies"][0] == pytest.approx(float(energies.mean()), abs=1e-9)
    assert out["best_index"] == 1 and out["energies"][1] < out["energies"][0]


@pytest.mark.parametrize(
    "params",
    [
        {"job_id": "x"},
        {"jobs": []},
        _job(values=[1.0]),
        _job(qaoa={"p": 0}),
        _job(qaoa={"optimizer": "adam"}),
        _job(context={}),
    ],
)
def test_bad_params_raise_value_error(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        worker.solve_block(params, peer_id=PEER)


def test_bad_schedules_raise_value_error() -> None:
    with pytest.raises(ValueError):
        worker.evaluate_schedules({**_job(), "schedules": [[0.1, 0.2, 0.3]]}, peer_id=PEER)
    with pytest.raises(ValueError):
        worker.evaluate_schedules(
            {"qubo": {"matrix": [[1.0, 2.0]]}, "schedules": [[0, 0]]}, peer_id=PEER
        )
