"""The service index and the libp2p host's runtime state, on a live coordinator."""

from __future__ import annotations

import httpx
from tests.support.live import LiveCoordinator

EMBEDDED_NODES = 2
BELL = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\ncx q[0],q[1];\n'


def test_the_index_links_every_entry_point_and_each_answers(coord: LiveCoordinator) -> None:
    index = coord.http.get("/").json()
    assert index["service"] == "quantum-mesh" and index["version"]
    assert httpx.get(coord.base_url + "/").json() == index  # at the root too
    assert index["links"]["submit_circuit"] == {"href": "/api/v1/circuits/submit", "method": "POST"}
    for name, link in index["links"].items():
        if link["method"] != "GET":
            continue
        r = httpx.get(coord.base_url + link["href"], timeout=30)
        assert r.status_code == 200, (name, link, r.status_code, r.text[:300])


def test_runtime_shows_connections_channels_and_refusals(coord: LiveCoordinator) -> None:
    r = coord.http.post("/circuits/submit", json={"circuit": BELL, "shots": 64, "seed": 1})
    assert r.status_code == 202, r.text
    assert coord.wait_job(r.json()["job_id"])["status"] == "COMPLETED"
    state = coord.http.get("/bootstrap/libp2p/runtime").json()
    assert state["running"] is True
    assert state["peer_id"] == coord.http.get("/bootstrap/libp2p").json()["peer_id"]
    peers = {p["peer_id"] for p in coord.http.get("/discovery/peers").json()["items"]}
    assert peers and peers <= set(state["connected_peers"])
    assert state["channels"]["protocol"] == "/qmesh/invoke/2.0.0"
    assert 1 <= state["channels"]["open"] <= EMBEDDED_NODES
    assert state["channels"]["pending_calls"] >= 0
    assert set(state["inbound"]["refused"]) >= {"not_enrolled", "busy"}
    assert state["advert_stats"]["accepted"] > 0
    assert state["pubsub"]["topic"] == "qmesh/adverts/1.0.0"


def test_openapi_documents_the_real_error_envelope(coord: LiveCoordinator) -> None:
    schema = httpx.get(coord.base_url + "/openapi.json", timeout=30).json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    envelope = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status in ("400", "401", "403", "404", "409", "413", "422", "429"):
                body = operation["responses"][status]["content"]["application/json"]["schema"]
                assert body == envelope, (method, path, status)
    assert schema["components"]["schemas"]["ErrorBody"]["required"] == ["code", "message"]
    # ... and what the service really answers has that shape.
    r = coord.http.post("/workflows/runs", json={"kind": "qaoa_knapsack", "params": {"sed": 5}})
    assert r.status_code == 422
    assert set(r.json()) == {"error"} and {"code", "message", "details"} <= set(r.json()["error"])
