"""QAOA workloads over the live mesh: knapsack blocks spread over nodes, portfolio via /finance."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from tests.support.live import LiveCoordinator, wait_until

from quantum_mesh.quantum.qaoa.classical import knapsack_dp, knapsack_greedy


def _instance(n: int, seed: int) -> tuple[list[int], list[int], int]:
    rng = np.random.default_rng(seed)
    values = rng.integers(10, 100, size=n).tolist()
    weights = rng.integers(5, 60, size=n).tolist()
    return values, weights, int(sum(weights) * 0.4)


def test_knapsack_60_items_across_nodes(coord: LiveCoordinator) -> None:
    values, weights, capacity = _instance(60, seed=7)
    r = coord.http.post(
        "/workflows/runs",
        json={
            "kind": "qaoa_knapsack",
            "params": {"values": values, "weights": weights, "capacity": capacity, "seed": 3},
        },
    )
    assert r.status_code == 202, r.text
    run = coord.wait_job(r.json()["run_id"], timeout=300, path="/workflows/runs/")
    assert run["status"] == "COMPLETED", (run, coord.log_tail())
    res = run["result"]
    assert sum(weights[i] for i in res["selected"]) == res["total_weight"] <= capacity
    assert sum(values[i] for i in res["selected"]) == res["total_value"]
    assert res["optimum_value"] == knapsack_dp(values, weights, capacity).value
    assert res["greedy_value"] == knapsack_greedy(values, weights, capacity).value
    assert res["total_value"] >= res["greedy_value"]
    assert res["total_value"] >= 0.97 * res["optimum_value"]
    assert len({b["node_id"] for b in res["blocks"]}) >= 2
    assert run["progress"]["done"] == run["progress"]["total"]


def _knapsack_run(coord: LiveCoordinator, n: int, seed: int) -> str:
    values, weights, capacity = _instance(n, seed=seed)
    r = coord.http.post(
        "/workflows/runs",
        json={
            "kind": "qaoa_knapsack",
            "params": {"values": values, "weights": weights, "capacity": capacity, "seed": seed},
        },
    )
    assert r.status_code == 202, r.text
    return str(r.json()["run_id"])


def test_eight_concurrent_knapsack_runs_all_complete(coord: LiveCoordinator) -> None:
    """More block work than the nodes have slots: the runs queue, none fails as busy."""
    run_ids = [_knapsack_run(coord, 36, seed=20 + i) for i in range(8)]
    runs = [coord.wait_job(rid, timeout=600, path="/workflows/runs/") for rid in run_ids]
    assert [r["status"] for r in runs] == ["COMPLETED"] * 8, [r["error"] for r in runs]
    for run in runs:
        res = run["result"]
        assert res["total_weight"] <= res["capacity"]
        assert res["total_value"] >= res["greedy_value"]


def test_knapsack_shows_reserving_and_provenance_lists_every_block(
    coord: LiveCoordinator,
) -> None:
    run_id = _knapsack_run(coord, 24, seed=5)
    run = coord.wait_job(run_id, timeout=300, path="/workflows/runs/")
    assert run["status"] == "COMPLETED", run["error"]
    events = coord.http.get(f"/jobs/{run_id}/events").json()["items"]
    statuses = [e["payload"]["status"] for e in events if e["event_type"] == "status"]
    assert statuses == ["QUEUED", "COMPILING", "RESERVING", "EXECUTING", "COMPLETED"]
    units = [e for e in events if e["event_type"] == "unit_completed"]
    started = [e for e in events if e["event_type"] == "attempt_started"]
    blocks = run["result"]["blocks"]
    assert len(units) >= len({b["block_index"] for b in blocks})
    assert {b["node_id"] for b in blocks} <= {u["node_id"] for u in units}
    assert len({u["fragment_id"] for u in units}) == len(units)
    reservations = {u["payload"]["reservation_id"] for u in units}
    assert len(reservations) == len(units)
    assert reservations <= {s["payload"]["reservation_id"] for s in started}
    for u in units:
        assert u["payload"]["method"] in {"qaoa_block", "qaoa_schedules"}
        assert u["payload"]["attempts"] >= 1 and u["payload"]["seconds"] >= 0

    def bundle() -> dict | None:
        r = coord.http.get(f"/jobs/{run_id}/provenance")
        return r.json() if r.status_code == 200 else None

    listed = wait_until(bundle, timeout=60, what="provenance bundle")["events"]
    assert {e["fragment_id"] for e in listed if e["event_type"] == "unit_completed"} == {
        u["fragment_id"] for u in units
    }


def test_knapsack_with_distributed_angle_search(coord: LiveCoordinator) -> None:
    values, weights, capacity = _instance(60, seed=8)
    r = coord.http.post(
        "/workflows/runs",
        json={
            "kind": "qaoa_knapsack",
            "params": {
                "values": values,
                "weights": weights,
                "capacity": capacity,
                "seed": 1,
                "optimizer": "distributed",
            },
        },
    )
    run = coord.wait_job(r.json()["run_id"], timeout=300, path="/workflows/runs/")
    assert run["status"] == "COMPLETED", run["error"]
    res = run["result"]
    assert res["settings"]["optimizer"] == "distributed"
    assert res["total_weight"] <= capacity and res["total_value"] >= res["greedy_value"]
    assert res["total_value"] >= 0.97 * res["optimum_value"]


def test_portfolio_10_assets_reaches_brute_force_optimum(coord: LiveCoordinator) -> None:
    rng = np.random.default_rng(5)
    n = 10
    a = rng.normal(size=(n, n))
    cov = (a @ a.T / n * 0.1).tolist()
    body = {
        "assets": [f"A{i}" for i in range(n)],
        "expected_returns": rng.uniform(0.01, 0.2, n).tolist(),
        "covariance": cov,
        "budget": 4,
        "risk_aversion": 0.5,
        "seed": 1,
    }
    r = coord.http.post("/finance/submit", json=body)
    assert r.status_code == 202, r.text
    job = coord.wait_job(r.json()["job_id"], timeout=300, path="/finance/")
    assert job["status"] == "COMPLETED", job
    assert len(job["result"]["selected"]) == 4
    cmp = coord.http.get(f"/finance/{job['job_id']}/comparison").json()
    assert cmp["is_optimal"] and cmp["ratio"] == pytest.approx(1.0)
    assert sorted(cmp["qaoa"]["selected"]) == sorted(cmp["exact"]["selected"])
    listing = coord.http.get("/finance").json()
    assert any(item["job_id"] == job["job_id"] for item in listing["items"])


def test_bad_workflow_params_are_422(coord: LiveCoordinator) -> None:
    r = coord.http.post(
        "/workflows/runs",
        json={"kind": "qaoa_knapsack", "params": {"values": [1, 2], "weights": [1], "capacity": 3}},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    r = coord.http.post("/workflows/runs", json={"kind": "nope", "params": {}})
    assert r.status_code == 422 and "available" in r.json()["error"]["details"]
    r = coord.http.post(
        "/finance/submit",
        json={
            "assets": ["a", "b"],
            "expected_returns": [0.1],
            "covariance": [[1, 0], [0, 1]],
            "budget": 1,
        },
    )
    assert r.status_code == 422


def _qaoa_block_invocations(coord: LiveCoordinator) -> float:
    text = coord.http.get(f"{coord.base_url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("qmesh_mesh_invokes_total{") and 'method="qaoa_block"' in line
    )


def test_cancelling_a_running_workflow_stops_its_mesh_work(coord: LiveCoordinator) -> None:
    beam_width = 8
    values, weights, capacity = _instance(200, seed=11)
    baseline = _qaoa_block_invocations(coord)
    # 16-qubit blocks take a noticeable time each, so the cancel lands mid-run.
    r = coord.http.post(
        "/workflows/runs",
        json={
            "kind": "qaoa_knapsack",
            "params": {
                "values": values,
                "weights": weights,
                "capacity": capacity,
                "seed": 5,
                "block_size": 16,
                "beam_width": beam_width,
            },
        },
    )
    run_id = r.json()["run_id"]
    wait_until(
        lambda: _qaoa_block_invocations(coord) > baseline,
        timeout=120,
        interval=0.02,
        what="first block job sent",
    )
    cancelled = coord.http.post(f"/jobs/{run_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    at_cancel = _qaoa_block_invocations(coord) - baseline
    blocks = -(-200 // 16)
    full_run = 1 + (blocks - 1) * beam_width  # block jobs a complete run sends
    time.sleep(10)  # long enough for an uncancelled run to send most of its block jobs
    sent = _qaoa_block_invocations(coord) - baseline
    # Only the dispatch round under way when the cancel arrived may still finish.
    assert sent <= at_cancel + beam_width, (at_cancel, sent, full_run)
    assert sent < full_run / 2
    run = coord.http.get(f"/workflows/runs/{run_id}").json()
    assert run["status"] == "CANCELLED" and run["error"]["code"] == "cancelled"
    assert coord.http.post(f"/jobs/{run_id}/cancel").status_code == 409


def test_a_batch_of_20_instances_returns_20_feasible_answers_with_references(
    coord: LiveCoordinator,
) -> None:
    instances = [_instance(14 + (i % 5), seed=100 + i) for i in range(20)]
    body = [{"values": v, "weights": w, "capacity": c} for v, w, c in instances]
    r = coord.http.post(
        "/workflows/runs",
        json={"kind": "qaoa_knapsack_batch", "params": {"instances": body, "seed": 5}},
    )
    assert r.status_code == 202, r.text
    run = coord.wait_job(r.json()["run_id"], timeout=600, path="/workflows/runs/")
    assert run["status"] == "COMPLETED", (run, coord.log_tail())
    res = run["result"]
    assert [e["index"] for e in res["instances"]] == list(range(20))  # input order
    for (values, weights, capacity), entry in zip(instances, res["instances"], strict=True):
        assert entry["feasible"] is True
        assert sum(weights[i] for i in entry["selected"]) == entry["total_weight"] <= capacity
        assert sum(values[i] for i in entry["selected"]) == entry["total_value"]
        assert entry["optimum_value"] == knapsack_dp(values, weights, capacity).value
        assert entry["greedy_value"] == knapsack_greedy(values, weights, capacity).value
        assert entry["total_value"] <= entry["optimum_value"]
    summary = res["summary"]
    assert summary["instances"] == summary["feasible"] == 20
    assert summary["optimum_value"] == sum(e["optimum_value"] for e in res["instances"])
    assert run["progress"]["done"] == run["progress"]["total"] == 20
    # The block jobs of many instances were spread over the mesh, each with its provenance.
    events = coord.http.get(f"/jobs/{run['run_id']}/events").json()["items"]
    nodes = {e["node_id"] for e in events if e["event_type"] == "unit_completed"}
    assert len(nodes) >= 2, nodes


def test_a_bad_instance_in_a_batch_is_named(coord: LiveCoordinator) -> None:
    good = {"values": [3, 4], "weights": [1, 2], "capacity": 2}
    for instances, field, words in [
        ([], "instances", "list of 1 to"),
        ([good, {"values": [1], "weights": [1]}], "instances[1]", "missing: capacity"),
        ([good, {**good, "colour": 1}], "instances[1]", "unknown: colour"),
        ([good, good, {**good, "capacity": -1}], "instances[2]", "instances[2]"),
    ]:
        r = coord.http.post(
            "/workflows/runs",
            json={"kind": "qaoa_knapsack_batch", "params": {"instances": instances}},
        )
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["details"]["field"] == field and words in error["message"], error


def _correlated(n: int, seed: int) -> tuple[list[int], list[int], int]:
    weights = np.random.default_rng(seed).integers(10, 101, size=n)
    return (weights + 10).tolist(), weights.tolist(), int(weights.sum() * 0.3)


def _completed_knapsack(coord: LiveCoordinator, params: dict[str, Any]) -> dict[str, Any]:
    """Run a knapsack workflow to completion; its result."""
    r = coord.http.post("/workflows/runs", json={"kind": "qaoa_knapsack", "params": params})
    assert r.status_code == 202, r.text
    run = coord.wait_job(r.json()["run_id"], timeout=600, path="/workflows/runs/")
    assert run["status"] == "COMPLETED", (run, coord.log_tail())
    return dict(run["result"])


@pytest.mark.parametrize(("n", "seed", "branches"), [(60, 4, 4), (120, 1, 2)])
def test_branches_reach_the_optimum_on_strongly_correlated_instances(
    coord: LiveCoordinator, n: int, seed: int, branches: int
) -> None:
    values, weights, capacity = _correlated(n, seed)
    params = {
        "values": values, "weights": weights, "capacity": capacity,
        "seed": seed, "branches": branches,
    }  # fmt: skip
    res = _completed_knapsack(coord, params)
    optimum = knapsack_dp(values, weights, capacity).value
    greedy = knapsack_greedy(values, weights, capacity).value
    assert res["optimum_value"] == optimum and greedy < optimum
    assert res["total_value"] >= 0.99 * optimum and res["total_value"] > greedy
    assert sum(weights[i] for i in res["selected"]) == res["total_weight"] <= capacity
    assert len(res["branches"]) == branches and not res["used_greedy_fallback"]
    assert len({b["node_id"] for b in res["blocks"]}) >= 2


def test_adaptive_beam_and_repair_over_the_mesh(coord: LiveCoordinator) -> None:
    values, weights, capacity = _correlated(48, 3)
    params = {
        "values": values, "weights": weights, "capacity": capacity, "seed": 3,
        "beam_adaptive": True, "repair": "swap",
    }  # fmt: skip
    res = _completed_knapsack(coord, params)
    assert res["value_before_repair"] == res["qaoa_value"] <= res["value_after_repair"]
    assert res["total_value"] == res["value_after_repair"]
    assert sum(weights[i] for i in res["selected"]) == res["total_weight"] <= capacity
    assert len(res["beam_widths"]) == len(res["block_items"])
    assert isinstance(res["backtracks"], list)
    assert res["settings"]["repair"] == "swap" and res["settings"]["beam_adaptive"] is True
    bad = {**params, "repair": "greedy"}
    r = coord.http.post("/workflows/runs", json={"kind": "qaoa_knapsack", "params": bad})
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "repair"
