"""SQD over the live mesh: batches solved in parallel on different nodes, same energy as the
sequential run, robust to a node killed mid-run."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.live import LiveCoordinator, LiveNode, wait_until

from quantum_mesh.quantum.sqd.loop import run_sqd, solve_batches_locally
from quantum_mesh.quantum.sqd.params import parse_sqd_params
from quantum_mesh.quantum.sqd.settings import PRESETS

pytestmark = pytest.mark.chem

# Small but non-trivial: N2 in 6-31G with a (10e, 8o) active space, fast on 2 cores.
PARAMS = {
    "molecule": {
        "atom": "N 0 0 0; N 0 0 1.1",
        "basis": "6-31g",
        "active_orbitals": 8,
        "active_electrons": 10,
    },
    "n_batches": 4,
    "samples_per_batch": 60,
    "max_iterations": 2,
    "n_samples": 4000,
    "seed": 42,
}


def _run(coord: LiveCoordinator, params: dict) -> dict:
    r = coord.http.post("/workflows/runs", json={"kind": "sqd", "params": params})
    assert r.status_code == 202, r.text
    run = coord.wait_job(r.json()["run_id"], timeout=400, path="/workflows/runs/")
    assert run["status"] == "COMPLETED", (run["error"], coord.log_tail())
    return run


def _provenance(coord: LiveCoordinator, job_id: str) -> dict | None:
    r = coord.http.get(f"/jobs/{job_id}/provenance")
    return r.json() if r.status_code == 200 else None


def test_sqd_over_mesh_matches_sequential_and_exact(coord: LiveCoordinator) -> None:
    run = _run(coord, PARAMS)
    res = run["result"]
    ref = res["reference_energy"]
    assert ref is not None
    assert res["energy"] >= ref - 1e-9  # variational: never below the exact energy
    assert res["energy"] - ref <= 1.6e-3
    assert res["error_mha"] == pytest.approx((res["energy"] - ref) * 1000, abs=1e-6)
    nodes = {b["node_id"] for b in res["batches"]}
    assert len(nodes) >= 2
    for b in res["batches"]:
        assert b["subspace_dim"] > 0 and b["seconds"] >= 0 and b["cpu_seconds"] > 0
    # Progress was visible per batch while it ran, not only per iteration.
    events = coord.http.get(f"/jobs/{run['run_id']}/events").json()["items"]
    per_batch = [
        e["payload"]["progress"]
        for e in events
        if e["event_type"] == "progress" and "iteration_batches_done" in e["payload"]["progress"]
    ]
    assert per_batch and per_batch[-1]["iteration_batches"] == PARAMS["n_batches"]
    problem, settings = parse_sqd_params(PARAMS)
    sequential = run_sqd(problem, settings=settings, solve_batches=solve_batches_locally)
    assert res["energy"] == pytest.approx(sequential["energy"], abs=1e-10)
    # One lifecycle for every job: the run was RESERVING before its first batch was sent.
    statuses = [e["payload"]["status"] for e in events if e["event_type"] == "status"]
    assert statuses == ["QUEUED", "COMPILING", "RESERVING", "EXECUTING", "COMPLETED"]
    # Every batch took the one unit path: reservation, execution, one completion record.
    units = [e for e in events if e["event_type"] == "unit_completed"]
    assert len(units) >= PARAMS["n_batches"]
    assert {u["node_id"] for u in units} == nodes
    assert len({u["fragment_id"] for u in units}) == len(units)
    for u in units:
        assert u["payload"]["method"] == "sqd_batch"
        assert u["payload"]["reservation_id"] and u["payload"]["attempts"] >= 1
    bundle = wait_until(
        lambda: _provenance(coord, run["run_id"]), timeout=60, what="provenance bundle"
    )
    listed = {e["fragment_id"] for e in bundle["events"] if e["event_type"] == "unit_completed"}
    assert listed == {u["fragment_id"] for u in units}


def test_sqd_survives_a_killed_node(coord: LiveCoordinator, tmp_path: Path) -> None:
    node = LiveNode(tmp_path, coord.bootstrap_addr(), name="doomed")
    peer_id = node.peer_id()
    coord.http.post("/enrollment/peers", json={"peer_id": peer_id})
    coord.http.post(f"/enrollment/peers/{peer_id}/action", json={"action": "approve"})
    node.start()
    try:
        wait_until(
            lambda: coord.http.get(f"/discovery/peers/{peer_id}").status_code == 200,
            timeout=30,
            what="doomed node heard",
        )
        r = coord.http.post(
            "/workflows/runs", json={"kind": "sqd", "params": {**PARAMS, "seed": 7}}
        )
        run_id = r.json()["run_id"]
        wait_until(
            lambda: coord.http.get(f"/workflows/runs/{run_id}").json()["status"] == "EXECUTING",
            timeout=60,
            interval=0.05,
            what="run executing",
        )
        node.kill()
        run = coord.wait_job(run_id, timeout=400, path="/workflows/runs/")
        assert run["status"] == "COMPLETED", run["error"]
        batches = run["result"]["batches"]
        # Its batch may have been lost with it (killed before replying) and solved elsewhere.
        last_iteration = max(b["iteration"] for b in batches)
        assert peer_id not in {b["node_id"] for b in batches if b["iteration"] == last_iteration}
    finally:
        node.stop()


def test_invalid_molecule_is_422_before_any_job(coord: LiveCoordinator) -> None:
    before = coord.http.get("/jobs").json()["total"]
    for bad in (
        {"molecule": {"atom": "Xx 0 0 0", "basis": "sto-3g"}},
        {"molecule": {"atom": "H 0 0 0; H 0 0 0.74", "basis": "no-such-basis"}},
        {"molecule": {"atom": "H 0 0 0; H 0 0 0.74", "basis": "sto-3g", "active_orbitals": 40}},
        {"fcidump": "garbage"},
    ):
        r = coord.http.post("/workflows/runs", json={"kind": "sqd", "params": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["message"]
    assert coord.http.get("/jobs").json()["total"] == before


def test_the_accurate_preset_runs_over_the_mesh_and_bad_settings_are_422(
    coord: LiveCoordinator,
) -> None:
    """The preset is an ordinary, validated setting: it runs on the nodes and is reported;
    an unknown preset or occupancy guess is a 422 naming the field, before any job exists."""
    params = {
        "molecule": {"atom": "N 0 0 0; N 0 0 1.1", "basis": "sto-3g"},
        "preset": "accurate",
        "n_samples": 2000,
        "seed": 3,
    }
    res = _run(coord, params)["result"]
    assert res["settings"]["preset"] == "accurate"
    for key, value in PRESETS["accurate"].items():
        assert res["settings"][key] == value
    ref = res["reference_energy"]
    assert ref - 1e-9 <= res["energy"] <= ref + 1.6e-3

    before = coord.http.get("/jobs").json()["total"]
    for bad, field in (
        ({"preset": "fastest"}, "preset"),
        ({"preset": 3}, "preset"),
        ({"initial_occupancies": "ccsd"}, "initial_occupancies"),
        ({"max_iterations": 500}, "max_iterations"),
    ):
        r = coord.http.post("/workflows/runs", json={"kind": "sqd", "params": {**params, **bad}})
        assert r.status_code == 422, (bad, r.text)
        error = r.json()["error"]
        assert field in error["message"] and error["details"]["field"] == field, error
    assert coord.http.get("/jobs").json()["total"] == before
