"""The control plane against real processes: enrollment gating, suspension, node death,
fidelity fallback, coordinator crash recovery, WebSocket streams, reservations."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from httpx_ws import connect_ws
from qiskit import qasm2
from qiskit.circuit.random import random_circuit
from qiskit.quantum_info import Statevector
from tests.support.circuits import BELL_QASM2 as BELL
from tests.support.live import LiveCoordinator, LiveNode, wait_until


def _big_circuit(seed: int, qubits: int = 10, depth: int = 40) -> tuple[str, Statevector]:
    circuit = random_circuit(qubits, depth=depth, max_operands=2, seed=seed)
    return qasm2.dumps(circuit), Statevector.from_instruction(circuit)


EMBEDDED_NODES = 2


@pytest.fixture
def only_standalone(coord: LiveCoordinator) -> Iterator[None]:
    """Suspend the embedded nodes for one test so work can only go to standalone nodes."""
    embedded = [
        e["peer_id"] for e in coord.http.get("/enrollment/peers").json()["items"] if e["embedded"]
    ]
    for pid in embedded:
        coord.http.post(f"/enrollment/peers/{pid}/action", json={"action": "suspend"})
    try:
        yield
    finally:
        for pid in embedded:
            coord.http.post(f"/enrollment/peers/{pid}/action", json={"action": "approve"})


def _enroll(coord: LiveCoordinator, node: LiveNode, *, approve: bool = True) -> str:
    peer_id = node.peer_id()
    assert (
        coord.http.post("/enrollment/peers", json={"peer_id": peer_id}).json()["status"]
        == "PENDING"
    )
    if approve:
        coord.http.post(f"/enrollment/peers/{peer_id}/action", json={"action": "approve"})
    return peer_id


def _heard(coord: LiveCoordinator, peer_id: str) -> None:
    def fresh() -> bool:
        r = coord.http.get(f"/discovery/peers/{peer_id}")
        return r.status_code == 200 and r.json()["fresh"]

    wait_until(fresh, timeout=30, what=f"{peer_id} heard")


@contextmanager
def _standalone(
    coord: LiveCoordinator, tmp_path: Path, *specs: dict[str, Any]
) -> Iterator[list[tuple[LiveNode, str]]]:
    """Start standalone nodes (enrolled and approved unless ``approve=False``), wait until
    each is heard, and stop them all afterwards."""
    started: list[tuple[LiveNode, str]] = []
    enrolled: list[str] = []
    try:
        for spec in specs:
            spec = dict(spec)
            approve = spec.pop("approve", True)
            node = LiveNode(tmp_path, coord.bootstrap_addr(), **spec)
            peer_id = _enroll(coord, node) if approve else node.peer_id()
            started.append((node, peer_id))
            if approve:
                enrolled.append(peer_id)
        for node, _ in started:
            node.start()
        for peer_id in enrolled:  # an unenrolled node's adverts are dropped: never heard
            _heard(coord, peer_id)
        yield started
    finally:
        for node, _ in started:
            node.stop()


def _submit(coord: LiveCoordinator, circuit: str, **kw: object) -> str:
    r = coord.http.post("/circuits/submit", json={"circuit": circuit, **kw})
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def test_unenrolled_node_never_gets_work(
    coord: LiveCoordinator, tmp_path: Path, only_standalone: None
) -> None:
    with _standalone(
        coord, tmp_path, {"name": "trusted"}, {"name": "stranger", "approve": False}
    ) as [(_, trusted_id), (_, stranger_id)]:
        assert coord.http.get(f"/discovery/peers/{stranger_id}").status_code == 404
        jobs = [_submit(coord, BELL, seed=i) for i in range(3)]
        for job_id in jobs:
            job = coord.wait_job(job_id)
            assert job["status"] == "COMPLETED"
            assert {f["node_id"] for f in job["fragment_results"]} == {trusted_id}
        services = coord.http.get("/services").json()["items"]
        assert all(stranger_id not in s["peers"] for s in services)


def test_suspended_node_stops_getting_work(
    coord: LiveCoordinator, tmp_path: Path, only_standalone: None
) -> None:
    with _standalone(coord, tmp_path, {"name": "a"}, {"name": "b"}) as [(_, a_id), (_, b_id)]:
        r = coord.http.post(f"/enrollment/peers/{a_id}/action", json={"action": "suspend"})
        assert r.json()["status"] == "SUSPENDED"
        text, _ = _big_circuit(3, qubits=4, depth=10)
        job = coord.wait_job(_submit(coord, text, seed=1))
        assert job["status"] == "COMPLETED"
        assert {f["node_id"] for f in job["fragment_results"]} == {b_id}
        plan = coord.http.get(f"/plans/{job['plan_id']}").json()
        assert all(a_id not in [f["primary_node"], *f["fallback_nodes"]] for f in plan["fragments"])


def test_node_killed_mid_job_leaves_job_completed_on_survivor(
    coord: LiveCoordinator, tmp_path: Path, only_standalone: None
) -> None:
    with _standalone(coord, tmp_path, {"name": "victim"}, {"name": "survivor"}) as [
        (victim, victim_id),
        (_, survivor_id),
    ]:
        text, expected = _big_circuit(11, qubits=12, depth=60)
        job_id = _submit(coord, text, seed=4)

        def victim_worked() -> bool:
            events = coord.http.get(f"/jobs/{job_id}/events").json()["items"]
            return any(
                e["event_type"] == "fragment_completed" and e["node_id"] == victim_id
                for e in events
            )

        wait_until(victim_worked, timeout=60, interval=0.05, what="victim completed a fragment")
        victim.kill()
        job = coord.wait_job(job_id, timeout=180)
        assert job["status"] == "COMPLETED", json.dumps(job["error"])[:3000]
        probs = job["quantum_result"]["probabilities"]
        for i, p in enumerate(expected.probabilities()):
            assert probs.get(format(i, "012b"), 0.0) == pytest.approx(p, abs=1e-9)

        def lost_victim(h: dict) -> bool:
            if h["node_id"] != victim_id:
                return False
            reason = str(h.get("reason", ""))
            return h["outcome"] in {"connection_lost", "timeout", "skipped_unusable"} or (
                h["outcome"] == "reservation_rejected"
                and ("unreachable" in reason or "usable" in reason)
            )

        after_kill = [
            f for f in job["fragment_results"] if any(lost_victim(h) for h in f["history"])
        ]
        assert after_kill, "the victim's failure must be visible in fragment_results"
        assert all(f["node_id"] == survivor_id for f in after_kill)
        events = coord.http.get(f"/jobs/{job_id}/events").json()["items"]
        completed = [e["fragment_id"] for e in events if e["event_type"] == "fragment_completed"]
        assert len(completed) == len(set(completed)) == len(job["fragment_results"])


def test_queued_jobs_survive_a_node_killed_mid_run(
    coord: LiveCoordinator, tmp_path: Path, only_standalone: None
) -> None:
    """16 jobs queued on 2 standalone nodes; one is SIGKILLed while it works. Busy and lost
    nodes mean waiting and retrying, never failure: every job completes on the survivor,
    no fragment is accepted twice, and the retries are visible."""
    with _standalone(coord, tmp_path, {"name": "victim"}, {"name": "survivor"}) as [
        (victim, victim_id),
        (_, survivor_id),
    ]:
        circuits = [_big_circuit(100 + i, qubits=6, depth=10) for i in range(16)]
        job_ids = [_submit(coord, text, seed=i) for i, (text, _) in enumerate(circuits)]

        def victim_worked() -> bool:
            for job_id in job_ids:
                events = coord.http.get(f"/jobs/{job_id}/events").json()["items"]
                if any(
                    e["event_type"] == "fragment_completed" and e["node_id"] == victim_id
                    for e in events
                ):
                    return True
            return False

        wait_until(victim_worked, timeout=90, interval=0.05, what="victim completed a fragment")
        victim.kill()
        jobs = [coord.wait_job(job_id, timeout=300) for job_id in job_ids]
        assert [j["status"] for j in jobs] == ["COMPLETED"] * 16, [j["error"] for j in jobs]
        for job, (_, expected) in zip(jobs, circuits, strict=True):
            probs = job["quantum_result"]["probabilities"]
            for i, p in enumerate(expected.probabilities()):
                assert probs.get(format(i, "06b"), 0.0) == pytest.approx(p, abs=1e-9)
        retried = 0
        for job in jobs:
            events = coord.http.get(f"/jobs/{job['job_id']}/events").json()["items"]
            completed = [
                e["fragment_id"] for e in events if e["event_type"] == "fragment_completed"
            ]
            assert len(completed) == len(set(completed)) == len(job["fragment_results"])
            retried += sum(
                1
                for e in events
                if e["event_type"] in {"attempt_failed", "reservation_rejected"}
                and e["node_id"] == victim_id
            )
        assert retried >= 1, "the victim's loss must show as retries in the job events"
        late = [
            f["node_id"]
            for j in jobs
            for f in j["fragment_results"]
            if any(h["node_id"] == victim_id and h["outcome"] != "ok" for h in f["history"])
        ]
        assert late and set(late) == {survivor_id}


def test_low_fidelity_node_is_skipped_for_fallback(
    coord: LiveCoordinator, tmp_path: Path, only_standalone: None
) -> None:
    # The noisy node advertises the better fidelity, so the planner picks it first; the
    # fidelity it really delivers is below the job's minimum, so the runtime falls back.
    # The advertised gap (0.999 against 0.91) outweighs ~27 ms of measured link latency in
    # the planner's cost, so a slow first ping on a loaded machine cannot reorder them (with
    # 0.95 it took ~15 ms, and CI once measured that much).
    noisy_spec = {"name": "noisy", "noise_level": 0.4, "fidelity": 0.999}
    with _standalone(coord, tmp_path, noisy_spec, {"name": "clean", "fidelity": 0.91}) as [
        (_, noisy_id),
        (_, clean_id),
    ]:
        # Compare like with like: the planner prices an unmeasured link as a slow one, so
        # wait until the coordinator has measured both.
        def measured() -> bool:
            return all(
                coord.http.get(f"/discovery/peers/{p}").json()["latency_ms"] is not None
                for p in (noisy_id, clean_id)
            )

        wait_until(measured, timeout=30, what="both links measured")
        job = coord.wait_job(_submit(coord, BELL, seed=2, min_fidelity=0.9))
        assert job["status"] == "COMPLETED", json.dumps(job["error"])[:3000]
        plan = coord.http.get(f"/plans/{job['plan_id']}").json()
        assert plan["fragments"][0]["primary_node"] == noisy_id
        first = job["fragment_results"][0]
        assert first["node_id"] == clean_id
        below = [h for h in first["history"] if h["outcome"] == "fidelity_below_threshold"]
        assert below and below[0]["node_id"] == noisy_id and below[0]["observed_fidelity"] < 0.9
        assert job["quantum_result"]["fidelity"] == pytest.approx(1.0, abs=1e-9)
        history = coord.http.get(f"/metrics/fidelity/{noisy_id}").json()
        assert history["observed_executions"] == [] or history["advertised"] == pytest.approx(0.999)


def test_websocket_sees_every_transition_in_order(coord: LiveCoordinator) -> None:
    text, _ = _big_circuit(5, qubits=8, depth=30)
    job_id = _submit(coord, text, seed=3)
    ws_url = coord.base_url.replace("http", "ws") + f"/api/v1/jobs/{job_id}/events"
    messages = []
    with connect_ws(ws_url, coord.http) as ws:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                msg = ws.receive_json(timeout=30)
            except Exception:
                break
            messages.append(msg)
            if msg.get("status") in {"COMPLETED", "FAILED", "CANCELLED"}:
                break
    order = ["QUEUED", "COMPILING", "RESERVING", "EXECUTING", "COMPLETED"]
    statuses = [m["status"] for m in messages if "status" in m]
    assert statuses[-1] == "COMPLETED"
    ranks = [order.index(s) for s in statuses]
    assert ranks == sorted(ranks)
    seqs = [m["seq"] for m in messages[1:] if m.get("seq") is not None]
    assert seqs == sorted(seqs)
    # Every status event after the initial snapshot was delivered.
    events = coord.http.get(f"/jobs/{job_id}/events").json()["items"]
    status_after_first = [
        e["payload"]["status"]
        for e in events
        if e["event_type"] == "status"
        and order.index(e["payload"]["status"]) > order.index(statuses[0])
    ]
    assert [s for s in statuses[1:] if s != statuses[0]] == [
        s for s in dict.fromkeys(status_after_first)
    ] or set(status_after_first) <= set(statuses)


CLI = (sys.executable, "-m", "quantum_mesh.cli")


def test_cancel_and_watch_cli(coord: LiveCoordinator) -> None:
    job_id = _submit(coord, BELL, seed=1)
    coord.wait_job(job_id)
    r = coord.http.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    out = subprocess.run(
        [*CLI, "watch", job_id, "--json", "--api", coord.base_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "COMPLETED"


def test_reservations_commit_cancel_and_expire(coord: LiveCoordinator) -> None:
    r = coord.http.post("/reservations", json={"service_type": "single_qubit", "ttl_s": 1.0})
    assert r.status_code == 201, r.text
    res = r.json()
    assert res["status"] == "COMMITTED" and res["node_id"]
    wait_until(
        lambda: (
            coord.http.get(f"/reservations/{res['reservation_id']}").json()["status"] == "EXPIRED"
        ),
        timeout=15,
        what="reservation expiry",
    )
    r = coord.http.post("/reservations", json={"service_type": "cnot", "ttl_s": 60})
    rid = r.json()["reservation_id"]
    assert coord.http.post(f"/reservations/{rid}/cancel").json()["status"] == "CANCELED"
    again = coord.http.post(f"/reservations/{rid}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    r = coord.http.post(
        "/reservations", json={"service_type": "single_qubit", "min_fidelity": 0.99999}
    )
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_capacity"
    assert coord.http.get("/reservations/nope").status_code == 404


def test_coordinator_sigkill_recovers_every_job(tmp_path: Path, pg_url: str) -> None:
    live = LiveCoordinator(tmp_path / "crash", database_url=pg_url, embedded_nodes=2)
    live.start()
    try:
        circuits = [_big_circuit(20 + i, qubits=10, depth=50) for i in range(3)]
        jobs = [_submit(live, text, seed=i) for i, (text, _) in enumerate(circuits)]

        def some_progress() -> bool:
            events = live.http.get(f"/jobs/{jobs[0]}/events").json()["items"]
            return any(e["event_type"] == "fragment_completed" for e in events)

        wait_until(some_progress, timeout=60, interval=0.05, what="first fragment")
        first_plan = live.http.get(f"/plans/{live.http.get(f'/jobs/{jobs[0]}').json()['plan_id']}")
        live.kill()
        # Restarted without fusion: a recovered job must keep its saved plan's (fused)
        # fragments, or the fragments it already finished would mean other operations.
        live.env["QMESH_FUSE_FRAGMENTS"] = "false"
        live.restart()
        fused = [f for f in first_plan.json()["fragments"] if "services" in f]
        assert fused, first_plan.json()["fragments"]
        for job_id, (_, expected) in zip(jobs, circuits, strict=True):
            job = live.wait_job(job_id, timeout=240)
            assert job["status"] == "COMPLETED", (job, live.log_tail())
            probs = job["quantum_result"]["probabilities"]
            got = np.array([probs.get(format(i, "010b"), 0.0) for i in range(1024)])
            assert np.allclose(got, expected.probabilities(), atol=1e-9)
            events = live.http.get(f"/jobs/{job_id}/events").json()["items"]
            completed = [
                e["fragment_id"] for e in events if e["event_type"] == "fragment_completed"
            ]
            assert len(completed) == len(set(completed)) == len(job["fragment_results"])
        replanned = live.http.get(f"/plans/{live.http.get(f'/jobs/{jobs[0]}').json()['plan_id']}")
        partition = [
            (f["fragment_id"], f["operation_ids"], f.get("services"))
            for f in first_plan.json()["fragments"]
        ]
        assert [
            (f["fragment_id"], f["operation_ids"], f.get("services"))
            for f in replanned.json()["fragments"]
        ] == partition
    finally:
        live.stop()


def test_coordinator_sigkill_resumes_a_knapsack_run_from_its_last_block(
    tmp_path: Path, pg_url: str
) -> None:
    live = LiveCoordinator(tmp_path / "crash-qaoa", database_url=pg_url, embedded_nodes=2)
    live.start()
    rng = np.random.default_rng(4)
    values = rng.integers(10, 100, size=120).tolist()
    weights = rng.integers(5, 60, size=120).tolist()
    try:
        run_id = live.http.post(
            "/workflows/runs",
            json={
                "kind": "qaoa_knapsack",
                "params": {
                    "values": values,
                    "weights": weights,
                    "capacity": int(sum(weights) * 0.4),
                    "seed": 2,
                    "block_size": 16,
                },
            },
        ).json()["run_id"]

        def checkpoints() -> list[int]:
            events = live.http.get(f"/jobs/{run_id}/events").json()["items"]
            return [
                e["payload"]["state"]["next_block"]
                for e in events
                if e["event_type"] == "checkpoint"
            ]

        wait_until(
            lambda: len(checkpoints()) >= 1, timeout=120, interval=0.05, what="first finished block"
        )
        at_kill = live.http.get(f"/workflows/runs/{run_id}").json()["status"]
        live.kill()
        assert at_kill not in {"COMPLETED", "FAILED", "CANCELLED"}  # killed mid-run
        live.restart()
        run = live.wait_job(run_id, timeout=300, path="/workflows/runs/")
        assert run["status"] == "COMPLETED", run["error"]
        marks = checkpoints()
        blocks = len(run["result"]["block_items"])
        # Every block was finished exactly once: the restarted run continued, not restarted.
        assert marks == list(range(1, blocks + 1)), marks
        result = run["result"]
        assert result["total_weight"] <= int(sum(weights) * 0.4)
        assert result["total_value"] >= result["greedy_value"]
    finally:
        live.stop()


def test_coordinator_sigkill_resumes_an_sqd_run_with_the_uninterrupted_energy(
    tmp_path: Path, pg_url: str
) -> None:
    """Killed after its first iteration's checkpoint, the run replays that iteration from
    the checkpoint after the restart (nothing sent again for it) and ends with exactly the
    energy of the same run left alone."""
    params = {
        "molecule": {
            "atom": "N 0 0 0; N 0 0 1.1", "basis": "6-31g",
            "active_orbitals": 10, "active_electrons": 10,
        },
        "n_batches": 2, "samples_per_batch": 100, "max_iterations": 4, "n_samples": 5000,
        "energy_tol": 1e-14, "occupancies_tol": 1e-14, "seed": 9,
    }  # fmt: skip
    live = LiveCoordinator(tmp_path / "crash-sqd", database_url=pg_url, embedded_nodes=2)
    live.start()
    try:
        run_id = live.http.post("/workflows/runs", json={"kind": "sqd", "params": params}).json()[
            "run_id"
        ]

        def checkpoints() -> list[int]:
            events = live.http.get(f"/jobs/{run_id}/events").json()["items"]
            return [
                len(e["payload"]["state"]["iterations"])
                for e in events
                if e["event_type"] == "checkpoint"
            ]

        wait_until(lambda: checkpoints(), timeout=300, interval=0.05, what="first iteration")
        at_kill = live.http.get(f"/workflows/runs/{run_id}").json()["status"]
        live.kill()
        assert at_kill not in {"COMPLETED", "FAILED", "CANCELLED"}  # killed mid-run
        live.restart()
        run = live.wait_job(run_id, timeout=600, path="/workflows/runs/")
        assert run["status"] == "COMPLETED", run["error"]
        resumed = run["result"]
        assert resumed["resumed_iterations"] >= 1
        assert len(resumed["iterations"]) == 4
        # The same run, never interrupted.
        again = live.http.post("/workflows/runs", json={"kind": "sqd", "params": params})
        alone = live.wait_job(again.json()["run_id"], timeout=600, path="/workflows/runs/")
        assert alone["status"] == "COMPLETED", alone["error"]
        assert alone["result"]["resumed_iterations"] == 0
        assert resumed["energy"] == pytest.approx(alone["result"]["energy"], abs=1e-10)
    finally:
        live.stop()
