"""API keys, body limits and rate limits on a live coordinator: every refusal uses the envelope.

Also the hardening of issue 10: open paths (only `/health` by default; `/metrics`, `/docs` and
`/openapi.json` need a key), failed attempts limited per client address, WebSocket handshakes
refused with close code 4401 (not HTTP 403) and WebSocket tokens for browsers."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import httpx
import pytest
from httpx_ws import WebSocketDisconnect, WebSocketUpgradeError, connect_ws
from tests.support.circuits import BELL_QASM2 as BELL
from tests.support.live import LiveCoordinator

KEY, OTHER_KEY = "s3cret-key", "second-key"
#: Principals of the newer tests, each with its own request budget.
WS_KEY, PROBE_KEY = "ws-user-key-7c1d", "probe-admin-key-9e2f"


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCoordinator]:
    live = LiveCoordinator(
        tmp_path_factory.mktemp("sec"),
        embedded_nodes=0,
        api_key=KEY,
        env={
            "QMESH_API_KEYS": f"{KEY},{OTHER_KEY}",
            "QMESH_PRINCIPALS": f"wsuser:user:{WS_KEY},probe:admin:{PROBE_KEY}",
            "QMESH_RATE_LIMIT_PER_MINUTE": "20",
            "QMESH_MAX_REQUEST_BYTES": "5000",
            # No node: a submitted job waits (COMPILING) for capacity for the whole module.
            "QMESH_CAPACITY_WAIT_S": "600",
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


def _client(coord: LiveCoordinator, key: str | None, *, source: str = "127.0.0.1") -> httpx.Client:
    """A client with its own key, connecting from ``source`` (any 127/8 address reaches the
    coordinator on Linux, and each is a different client address to it)."""
    return httpx.Client(
        base_url=f"{coord.base_url}/api/v1",
        headers={"X-API-Key": key} if key else {},
        transport=httpx.HTTPTransport(local_address=source),
        timeout=30.0,
    )


def test_metrics_docs_and_openapi_need_a_key(coord: LiveCoordinator) -> None:
    root = coord.base_url
    for path in ("/metrics", "/openapi.json", "/docs", "/api/v1/ready", "/ready"):
        _envelope(httpx.get(root + path), 401, "unauthorized")
    with _client(coord, PROBE_KEY) as probe:
        assert probe.get(root + "/metrics").status_code == 200
        assert probe.get(root + "/openapi.json").json()["info"]["title"] == "quantum-mesh"
    assert httpx.get(root + "/health").status_code == 200


def test_failed_auth_is_limited_per_client_address(coord: LiveCoordinator) -> None:
    with _client(coord, None, source="127.0.0.2") as guesser:
        for i in range(10):
            _envelope(
                guesser.get("/jobs", headers={"X-API-Key": f"guess-{i}"}), 401, "unauthorized"
            )
        locked = guesser.get("/jobs", headers={"X-API-Key": "guess-10"})
        _envelope(locked, 429, "rate_limited")
        retry_after = int(locked.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        # While locked out nothing from that address is checked, not even a good key.
        assert guesser.get("/jobs", headers={"X-API-Key": PROBE_KEY}).status_code == 429
        # Other addresses are unaffected.
        with _client(coord, PROBE_KEY, source="127.0.0.3") as honest:
            assert honest.get("/jobs").status_code == 200
        # The lock-out ends: one failure is forgiven every 6 s (10 a minute).
        time.sleep(retry_after + 0.5)
        assert guesser.get("/jobs", headers={"X-API-Key": PROBE_KEY}).status_code == 200


def _ws_url(coord: LiveCoordinator, job_id: str, query: str = "") -> str:
    return coord.base_url.replace("http", "ws", 1) + f"/api/v1/jobs/{job_id}/events{query}"


def _close_code(url: str, **kwargs: object) -> int:
    """Connect and read until the server closes; returns its close code."""
    with httpx.Client(timeout=30.0) as plain, connect_ws(url, plain, **kwargs) as ws:  # type: ignore[arg-type]
        try:
            while True:
                ws.receive_json(timeout=30)
        except WebSocketDisconnect as closed:
            return closed.code
        except queue.Empty:
            return -1


def test_refused_websocket_handshake_closes_with_4401(coord: LiveCoordinator) -> None:
    url = _ws_url(coord, "00000000-0000-0000-0000-000000000000")
    try:
        code = _close_code(url)
    except WebSocketUpgradeError as exc:  # what an HTTP 403 on the handshake looks like
        pytest.fail(f"the handshake was refused over HTTP ({exc.response.status_code}), not 4401")
    assert code == 4401
    assert _close_code(url + "?token=not-a-token") == 4401
    assert _close_code(url, subprotocols=["qmesh", "bearer.not-a-token"]) == 4401


def test_websocket_token_by_query_or_subprotocol(coord: LiveCoordinator) -> None:
    with _client(coord, WS_KEY) as user:
        job = user.post("/circuits/submit", json={"circuit": BELL, "shots": 16})
        assert job.status_code == 202, job.text
        job_id = job.json()["job_id"]
        issued = user.post("/auth/ws-token")
        assert issued.status_code == 200, issued.text
        token = issued.json()["token"]
        assert issued.json()["principal"] == "wsuser"
        # The token is for WebSocket handshakes only: it is no key for HTTP.
        _envelope(httpx.get(f"{coord.base_url}/api/v1/jobs?token={token}"), 401, "unauthorized")
        with httpx.Client(timeout=30.0) as plain:
            with connect_ws(_ws_url(coord, job_id, f"?token={token}"), plain) as ws:
                first = ws.receive_json(timeout=30)
                assert first["job_id"] == job_id and first["initial"] is True
            with connect_ws(
                _ws_url(coord, job_id), plain, subprotocols=["qmesh", f"bearer.{token}"]
            ) as ws:
                assert ws.subprotocol == "qmesh"
                assert ws.receive_json(timeout=30)["job_id"] == job_id
        # Header auth keeps working for non-browser clients.
        with connect_ws(_ws_url(coord, job_id), user) as ws:
            assert ws.receive_json(timeout=30)["job_id"] == job_id
        assert user.post(f"/jobs/{job_id}/cancel").json()["status"] == "CANCELLED"
    # The access log shows `?token=***`, never the token.
    log = coord.log_tail(5_000_000)
    assert "token=***" in log and token not in log
