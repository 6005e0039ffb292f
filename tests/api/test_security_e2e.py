"""API keys, body limits and rate limits on a live coordinator: every refusal uses the envelope."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tests.support.live import LiveCoordinator

KEY, OTHER_KEY = "s3cret-key", "second-key"


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCoordinator]:
    live = LiveCoordinator(
        tmp_path_factory.mktemp("sec"),
        embedded_nodes=0,
        api_key=KEY,
        env={
            "QMESH_API_KEYS": f"{KEY},{OTHER_KEY}",
            "QMESH_RATE_LIMIT_PER_MINUTE": "20",
            "QMESH_MAX_REQUEST_BYTES": "5000",
        },
    )
    live.start()
    try:
        yield live
    finally:
        live.stop()


def _envelope(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and isinstance(err["details"], dict)


def test_health_is_open_everything_else_needs_a_key(coord: LiveCoordinator) -> None:
    assert httpx.get(f"{coord.base_url}/api/v1/health").json() == {"status": "ok"}
    _envelope(httpx.get(f"{coord.base_url}/api/v1/jobs"), 401, "unauthorized")
    _envelope(
        httpx.get(f"{coord.base_url}/api/v1/jobs", headers={"X-API-Key": "wrong"}),
        401,
        "unauthorized",
    )
    ok = httpx.get(f"{coord.base_url}/api/v1/jobs", headers={"X-API-Key": KEY})
    assert ok.status_code == 200 and "items" in ok.json()
    ok = httpx.get(f"{coord.base_url}/api/v1/jobs", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200


def test_oversized_body_is_413(coord: LiveCoordinator) -> None:
    big = "OPENQASM 2.0;\n" + "// padding\n" * 2000
    _envelope(coord.http.post("/circuits/submit", json={"circuit": big}), 413, "payload_too_large")


def test_validation_error_is_422(coord: LiveCoordinator) -> None:
    _envelope(coord.http.post("/circuits/submit", json={"shots": 5}), 422, "validation_error")
    _envelope(
        coord.http.post("/enrollment/peers", json={"peer_id": "not a peer id"}),
        422,
        "validation_error",
    )


def test_rate_limit_is_429_with_retry_after(coord: LiveCoordinator) -> None:
    client = httpx.Client(base_url=f"{coord.base_url}/api/v1", headers={"X-API-Key": OTHER_KEY})
    statuses = []
    for _ in range(40):
        r = client.get("/jobs")
        statuses.append(r.status_code)
        if r.status_code == 429:
            _envelope(r, 429, "rate_limited")
            assert int(r.headers["Retry-After"]) >= 1
            break
    assert 429 in statuses and statuses[0] == 200
    # The other key's budget is its own.
    assert coord.http.get("/health").status_code == 200
