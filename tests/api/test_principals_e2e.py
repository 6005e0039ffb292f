"""Principals, roles and quotas on a live coordinator (issue 10, items 6 and 7).

Three principals: ``ops`` (admin), ``alice`` and ``bob`` (users). A user sees, lists, follows
and cancels only its own jobs; enrollment and reservations need an admin; unfinished jobs and
active reservations are bounded per principal (429 ``quota_exceeded`` with Retry-After). The
original incident is replayed: an admin holding every slot of the only node with direct
reservations makes jobs wait, never fail, and the reservation quota stops a third hold."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_ws import WebSocketDisconnect, connect_ws
from tests.support.circuits import BELL_QASM2 as BELL
from tests.support.live import TERMINAL, LiveCoordinator, wait_until

from quantum_mesh.node.reservations import SLOTS_PER_WORKER

OPS, ALICE, BOB = "ops-key-4f1a9c", "alice-key-0b7e21", "bob-key-c3d580"
EMBEDDED_NODES = 1  # with one worker
#: Every reservation slot of the only node; the admin's reservation quota is set to it, so
#: the admin alone can replay the incident (all slots held) and no more.
SLOTS = SLOTS_PER_WORKER


@pytest.fixture(scope="module")
def coord(
    tmp_path_factory: pytest.TempPathFactory, module_pg_url: str
) -> Iterator[LiveCoordinator]:
    live = LiveCoordinator(
        tmp_path_factory.mktemp("principals"),
        database_url=module_pg_url,
        embedded_nodes=EMBEDDED_NODES,
        api_key=OPS,
        env={
            "QMESH_PRINCIPALS": f"ops:admin:{OPS},alice:user:{ALICE},bob:user:{BOB}",
            "QMESH_QUOTA_ACTIVE_JOBS": "2",
            "QMESH_QUOTA_ACTIVE_RESERVATIONS": str(SLOTS),
            "QMESH_RATE_LIMIT_PER_MINUTE": "100000",
            "QMESH_NODE_WORKERS": "1",
        },
    )
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def alice(coord: LiveCoordinator) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=coord.http.base_url, headers={"X-API-Key": ALICE}, timeout=30.0
    ) as client:
        yield client


@pytest.fixture(scope="module")
def bob(coord: LiveCoordinator) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=coord.http.base_url, headers={"Authorization": f"Bearer {BOB}"}, timeout=30.0
    ) as client:
        yield client


def _envelope(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and isinstance(err["details"], dict)
    return err  # type: ignore[no-any-return]


def _submit(client: httpx.Client, seed: int, **headers: str) -> httpx.Response:
    return client.post(
        "/circuits/submit", json={"circuit": BELL, "shots": 32, "seed": seed}, headers=headers
    )


def _job_id(r: httpx.Response) -> str:
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def _wait(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(f"/jobs/{job_id}").json()
        return body if body["status"] in TERMINAL else None

    return wait_until(done, timeout=timeout, interval=0.25, what=f"job {job_id}")  # type: ignore[no-any-return]


def test_a_user_sees_lists_and_cancels_only_its_own_jobs(
    coord: LiveCoordinator, alice: httpx.Client, bob: httpx.Client
) -> None:
    mine = _job_id(_submit(alice, 1))
    theirs = _job_id(_submit(bob, 2))
    assert _wait(alice, mine)["status"] == "COMPLETED"
    assert _wait(bob, theirs)["status"] == "COMPLETED"
    assert alice.get(f"/jobs/{mine}").json()["owner"] == "alice"

    for path in (f"/jobs/{theirs}", f"/jobs/{theirs}/events", f"/jobs/{theirs}/provenance"):
        err = _envelope(alice.get(path), 403, "forbidden")
        assert err["details"]["job_id"] == theirs
    _envelope(alice.post(f"/jobs/{theirs}/cancel"), 403, "forbidden")
    _envelope(alice.get(f"/workflows/runs/{theirs}"), 403, "forbidden")

    listed = alice.get("/jobs?limit=500").json()
    assert listed["items"] and {j["owner"] for j in listed["items"]} == {"alice"}
    assert mine in {j["job_id"] for j in listed["items"]}
    assert listed["total"] == len(listed["items"])
    # The admin sees everyone's.
    everyone = {j["job_id"] for j in coord.http.get("/jobs?limit=500").json()["items"]}
    assert {mine, theirs} <= everyone
    assert coord.http.get(f"/jobs/{theirs}").json()["owner"] == "bob"


def test_portfolio_jobs_are_owned_too(
    coord: LiveCoordinator, alice: httpx.Client, bob: httpx.Client
) -> None:
    body = {
        "assets": ["A", "B", "C"],
        "expected_returns": [0.1, 0.12, 0.07],
        "covariance": [[0.05, 0.01, 0.0], [0.01, 0.06, 0.0], [0.0, 0.0, 0.04]],
        "budget": 1,
        "seed": 3,
    }
    r = bob.post("/finance/submit", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    _envelope(alice.get(f"/finance/{job_id}"), 403, "forbidden")
    _envelope(alice.get(f"/finance/{job_id}/comparison"), 403, "forbidden")
    assert job_id not in {j["job_id"] for j in alice.get("/finance").json()["items"]}
    assert job_id in {j["job_id"] for j in bob.get("/finance").json()["items"]}
    assert bob.get(f"/finance/{job_id}").status_code == 200
    wait_until(
        lambda: bob.get(f"/finance/{job_id}").json()["status"] in TERMINAL,
        timeout=120,
        what="portfolio job",
    )


def test_idempotency_keys_are_scoped_per_principal(alice: httpx.Client, bob: httpx.Client) -> None:
    first = _job_id(_submit(alice, 11, **{"Idempotency-Key": "shared-key-1"}))
    again = _job_id(_submit(alice, 11, **{"Idempotency-Key": "shared-key-1"}))
    other = _job_id(_submit(bob, 11, **{"Idempotency-Key": "shared-key-1"}))
    assert first == again
    assert other != first
    assert bob.get(f"/jobs/{other}").json()["owner"] == "bob"
    for client, job_id in ((alice, first), (bob, other)):
        _wait(client, job_id)


def test_users_cannot_enroll_approve_or_reserve(
    coord: LiveCoordinator, alice: httpx.Client
) -> None:
    peer = "12D3KooWQ5N5fZ3T4sTbq3vJ5m6yXcS8p2Qe1r9u7Zw4VkLmNoPq"
    for r in (
        alice.post("/enrollment/peers", json={"peer_id": peer}),
        alice.post(f"/enrollment/peers/{peer}/action", json={"action": "approve"}),
        alice.post("/reservations", json={"service_type": "single_qubit", "ttl_s": 5}),
        alice.get("/reservations/00000000-0000-0000-0000-000000000000"),
        alice.post("/reservations/00000000-0000-0000-0000-000000000000/cancel"),
    ):
        err = _envelope(r, 403, "forbidden")
        assert err["details"]["required_role"] == "admin"
    # Reading enrollment and discovery stays open to every principal.
    assert alice.get("/enrollment/peers").status_code == 200
    assert alice.get("/discovery/peers").status_code == 200
    # The admin may.
    created = coord.http.post("/enrollment/peers", json={"peer_id": peer, "name": "spare"})
    assert created.status_code in (200, 201), created.text
    approved = coord.http.post(f"/enrollment/peers/{peer}/action", json={"action": "approve"})
    assert approved.json()["status"] == "APPROVED"


def test_users_cannot_run_benchmark_scenarios_that_disturb_the_mesh(alice: httpx.Client) -> None:
    workload = {"kind": "circuit", "params": {"count": 1, "qubits": 2, "depth": 1}}
    for scenario in ("node_loss", "degraded_node", "node_join", "latency", "bandwidth", "loss"):
        r = alice.post(
            "/workflows/benchmarks",
            json={"workload": workload, "scenarios": ["baseline", scenario]},
        )
        err = _envelope(r, 403, "forbidden")
        assert err["details"]["scenario"] == scenario and scenario in err["message"]


def test_reservation_and_job_quotas(
    coord: LiveCoordinator, alice: httpx.Client, bob: httpx.Client
) -> None:
    # The incident: direct reservations hold every slot of the only node (= the quota).
    held = []
    for _ in range(SLOTS):
        r = coord.http.post("/reservations", json={"service_type": "single_qubit", "ttl_s": 120})
        assert r.status_code == 201 and r.json()["status"] == "COMMITTED", r.text
        assert r.json()["owner"] == "ops"
        held.append(r.json()["reservation_id"])
    third = coord.http.post("/reservations", json={"service_type": "single_qubit", "ttl_s": 120})
    err = _envelope(third, 429, "quota_exceeded")
    assert err["details"]["limit"] == SLOTS
    assert err["details"]["quota"] == "active_reservations"
    assert 1 <= int(third.headers["Retry-After"]) <= 120

    # Jobs wait for a slot, they do not fail; alice's third unfinished job is refused.
    waiting = [_job_id(_submit(alice, 20 + i)) for i in range(2)]
    over = _submit(alice, 30)
    err = _envelope(over, 429, "quota_exceeded")
    assert err["details"]["limit"] == 2 and err["details"]["quota"] == "active_jobs"
    assert int(over.headers["Retry-After"]) >= 1
    # bob's quota is his own.
    bobs = _job_id(_submit(bob, 40))
    time.sleep(2.0)
    for job_id in waiting:
        assert alice.get(f"/jobs/{job_id}").json()["status"] not in TERMINAL

    for reservation_id in held:
        assert coord.http.post(f"/reservations/{reservation_id}/cancel").status_code == 200
    for client, job_id in [(alice, j) for j in waiting] + [(bob, bobs)]:
        assert _wait(client, job_id, timeout=180)["status"] == "COMPLETED"
    # Finished jobs free the quota.
    assert _wait(alice, _job_id(_submit(alice, 31)))["status"] == "COMPLETED"
    again = coord.http.post("/reservations", json={"service_type": "single_qubit", "ttl_s": 5})
    assert again.status_code == 201, again.text
    coord.http.post(f"/reservations/{again.json()['reservation_id']}/cancel")


def _messages(url: str, **kwargs: Any) -> tuple[list[dict[str, Any]], int]:
    """Every message until the server closes, and its close code."""
    messages: list[dict[str, Any]] = []
    with httpx.Client(timeout=30.0) as plain, connect_ws(url, plain, **kwargs) as ws:
        try:
            while True:
                messages.append(ws.receive_json(timeout=60))
        except WebSocketDisconnect as closed:
            return messages, closed.code
        except queue.Empty:
            return messages, -1


def test_websocket_follows_only_own_jobs(
    coord: LiveCoordinator, alice: httpx.Client, bob: httpx.Client
) -> None:
    mine = _job_id(_submit(alice, 50))
    theirs = _job_id(_submit(bob, 51))
    token = alice.post("/auth/ws-token").json()["token"]
    base = coord.base_url.replace("http", "ws", 1) + "/api/v1/jobs"

    messages, code = _messages(f"{base}/{mine}/events?token={token}")
    assert code == 1000
    assert messages[0]["initial"] is True and messages[-1]["status"] == "COMPLETED"

    messages, code = _messages(f"{base}/{theirs}/events?token={token}")
    assert code == 4403
    assert messages and messages[0]["error"]["code"] == "forbidden"
    messages, code = _messages(f"{base}/{theirs}/events", subprotocols=[f"bearer.{token}"])
    assert code == 4403
    # The admin may follow anyone's job (header auth).
    with connect_ws(f"{base}/{theirs}/events", coord.http) as ws:
        assert ws.receive_json(timeout=30)["job_id"] == theirs
    _wait(bob, theirs)
