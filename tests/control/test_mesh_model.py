"""The discrete-event mesh model: its simulation, its fit, and its check against real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantum_mesh.control import mesh_model as mm
from quantum_mesh.errors import InvalidInput

REPORT = Path(__file__).resolve().parents[2] / "docs/benchmarks/knapsack-120/report.json"


def test_without_costs_a_node_is_the_centralized_run_and_nodes_divide_rounds() -> None:
    shape = mm.Shape(rounds=(1, 8, 8), unit_s=0.1, classical_s=0.3)
    free = mm.Costs(dispatch_s=0.0, latency_s=0.0)
    assert mm.simulate(shape, free, 1) == pytest.approx(shape.centralized_s())
    # 8 units per round on 4 slots: two waves of 0.1 s per round; the first round has one.
    assert mm.simulate(shape, free, 4) == pytest.approx(0.3 + 0.1 + 2 * 0.2)
    # Past the widest round, more nodes buy nothing.
    assert mm.simulate(shape, free, 8) == pytest.approx(mm.simulate(shape, free, 1000))
    with pytest.raises(InvalidInput):
        mm.simulate(shape, free, 0)


def test_the_coordinator_cost_is_serial_and_caps_the_speedup() -> None:
    shape = mm.Shape(rounds=(64,) * 4, unit_s=0.01, classical_s=0.0)
    costs = mm.Costs(dispatch_s=0.005, latency_s=0.002)
    walls = [mm.simulate(shape, costs, n) for n in (1, 10, 1000)]
    assert walls[0] > walls[1] >= walls[2]
    # However many nodes, the coordinator hands out one unit per dispatch_s.
    assert walls[2] >= shape.units * costs.dispatch_s
    predictions = mm.predict(shape, costs, [1, 10, 1000])
    assert predictions[-1].mesh_share > predictions[0].mesh_share
    assert predictions[-1].speedup <= shape.centralized_s() / (shape.units * costs.dispatch_s)


def test_the_fit_recovers_the_cost_it_was_simulated_with() -> None:
    shape = mm.Shape(rounds=(1, 8, 8, 8), unit_s=0.02, classical_s=0.1)
    truth = mm.Costs(dispatch_s=0.004, latency_s=0.002)
    measured = mm.simulate(shape, truth, 2)
    fitted = mm.fit(shape, measured, nodes=2, latency_s=0.002)
    assert fitted.dispatch_s == pytest.approx(truth.dispatch_s, rel=1e-3)


def test_validate_needs_profiles_and_compares_every_measured_node_count() -> None:
    assert mm.validate([{"mode": "distributed", "nodes": 1, "wall_s": 1.0}]) is None
    profile = {"rounds": [1, 8, 8], "unit_s": 0.05, "classical_s": 0.2}
    shape = mm.Shape(rounds=(1, 8, 8), unit_s=0.05, classical_s=0.2)
    costs = mm.Costs(dispatch_s=0.01)
    rows = [{"mode": "centralized", "nodes": 0, "wall_s": shape.centralized_s()}] + [
        {
            "mode": "distributed",
            "nodes": n,
            "wall_s": mm.simulate(shape, costs, n),
            "profile": profile,
        }
        for n in (1, 2, 3)
    ]
    model = mm.validate(rows, scale=(1, 10))
    assert model is not None and model["within_tolerance"]
    assert [c["nodes"] for c in model["validation"]] == [1, 2, 3]
    assert max(c["relative_error"] for c in model["validation"]) < 1e-3
    assert [p["nodes"] for p in model["predictions"]] == [1, 10]


def test_the_model_reproduces_the_measured_speedups_of_a_real_report() -> None:
    """docs/benchmarks/knapsack-120: a benchmark measured on this machine (3 repetitions of
    centralized and 1-3 mesh nodes). Fitted on its 1-node runs, the model must predict the
    measured 2- and 3-node speedups within the stated tolerance."""
    rows = json.loads(REPORT.read_text())["rows"]
    model = mm.validate(rows)
    assert model is not None
    assert model["within_tolerance"], model["validation"]
    assert [c["nodes"] for c in model["validation"]] == [1, 2, 3]
    assert model["label"] == mm.LABEL and "model" in model["label"]
