"""Principals, roles, open paths, failed-auth limits and WebSocket tokens, without a coordinator.

The app is built by ``create_app`` and driven through httpx's ASGI transport (no lifespan, so
no coordinator): only what the security middleware and the routes that need no coordinator
(``/metrics``, ``/openapi.json``, ``/docs``, ``/auth/ws-token``) answer is exercised here. The
same behaviour on a live coordinator is in ``test_security_e2e.py`` and
``test_principals_e2e.py``."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest
from pydantic import ValidationError

from quantum_mesh.api.app import create_app
from quantum_mesh.api.security import WsTokens, bind_decision
from quantum_mesh.config import Settings

ADMIN_KEY, USER_KEY = "unit-admin-key-0001", "unit-user-key-0002"


def _settings(**values: object) -> Settings:
    base: dict[str, object] = {"rate_limit_per_minute": 0, "_env_file": None}
    return Settings(**{**base, **values})  # type: ignore[arg-type]


def _get(
    settings: Settings,
    paths: list[tuple[str, str, dict[str, str]]],
    *,
    client: tuple[str, int] = ("127.0.0.1", 40000),
) -> list[httpx.Response]:
    """Send the requests in order through one app (one set of in-memory limits)."""
    app = create_app(settings)

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return [await http.request(m, p, headers=h) for m, p, h in paths]

    return asyncio.run(go())


# --- settings ------------------------------------------------------------------------------


def test_api_keys_are_admin_principals_with_stable_names() -> None:
    specs = _settings(api_keys="k-one, k-two").principal_specs()
    assert [s.role for s in specs] == ["admin", "admin"]
    names = [s.name for s in specs]
    assert names == [
        f"admin-{hashlib.sha256(k.encode()).hexdigest()[:8]}" for k in ("k-one", "k-two")
    ]
    # The name depends on the key only, not on its place in the list.
    again = _settings(api_keys="k-two,k-one").principal_specs()
    assert {s.name for s in again} == set(names)


def test_compact_principals_form_merges_keys_of_one_name() -> None:
    s = _settings(principals="alice:user:ka1, ops:admin:ko:with:colons ,alice:user:ka2")
    specs = {p.name: p for p in s.principal_specs()}
    assert specs["alice"].role == "user" and specs["alice"].keys == ("ka1", "ka2")
    assert specs["ops"].role == "admin" and specs["ops"].keys == ("ko:with:colons",)
    assert s.auth_enabled
    assert set(s.secret_keys) == {"ka1", "ka2", "ko:with:colons"}


def test_json_principals_form_with_quota_overrides() -> None:
    value = json.dumps(
        [
            {"name": "alice", "role": "user", "keys": ["a1", "a2"], "max_active_jobs": 3},
            {"name": "ci", "role": "admin", "key": "c1", "max_active_reservations": 0},
        ]
    )
    specs = {p.name: p for p in _settings(principals=value, api_keys="legacy").principal_specs()}
    assert specs["alice"].keys == ("a1", "a2") and specs["alice"].max_active_jobs == 3
    assert specs["alice"].max_active_reservations is None
    assert specs["ci"].keys == ("c1",) and specs["ci"].max_active_reservations == 0
    assert any(p.role == "admin" and p.keys == ("legacy",) for p in specs.values())


@pytest.mark.parametrize(
    "principals",
    [
        "alice:owner:k1",  # unknown role
        "alice:user:",  # empty key
        "alice:user",  # no key
        "al ice:user:k1",  # bad name
        "alice:user:k1,bob:user:k1",  # one key, two principals
        "alice:user:k1,alice:admin:k2",  # one name, two roles
        "[{not json",
        '[{"name": "a", "role": "user"}]',  # no key
        '[{"name": "a", "role": "user", "key": "k", "max_active_jobs": -1}]',
    ],
)
def test_bad_principal_settings_are_refused_at_start(principals: str) -> None:
    with pytest.raises(ValidationError):
        _settings(principals=principals)


def test_a_refused_setting_does_not_echo_the_keys() -> None:
    with pytest.raises(ValidationError) as refused:
        _settings(principals="ok:user:KEY-7f3a9d2c,alice:owner:k1")
    assert "KEY-7f3a9d2c" not in str(refused.value)
    assert "role of 'alice'" in str(refused.value)


def test_open_paths_must_be_paths() -> None:
    assert _settings().open_path_set == frozenset({"/health", "/api/v1/health"})
    assert "/ready" in _settings(open_paths="/health,/ready").open_path_set
    with pytest.raises(ValidationError):
        _settings(open_paths="health")


# --- WebSocket tokens ----------------------------------------------------------------------


def test_ws_token_roundtrip_expiry_and_tampering() -> None:
    tokens = WsTokens(secret=b"s" * 32, ttl_s=60.0)
    token, expires_at = tokens.issue("alice", now=1000.0)
    assert expires_at == 1060.0
    assert tokens.verify(token, now=1059.0) == "alice"
    assert tokens.verify(token, now=1060.5) is None  # expired
    payload, sig = token.split(".")
    assert (
        tokens.verify(payload + "." + sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB"), now=1001.0)
        is None
    )
    assert WsTokens(secret=b"t" * 32, ttl_s=60.0).verify(token, now=1001.0) is None
    assert tokens.verify("garbage", now=1001.0) is None
    assert tokens.verify("", now=1001.0) is None
    assert tokens.verify("é.ü", now=1001.0) is None  # any text a query string may carry
    assert tokens.verify(payload + ".é", now=1001.0) is None
    # Only characters allowed in a Sec-WebSocket-Protocol value (RFC 6455 token).
    assert all(c.isalnum() or c in "-_." for c in token)


# --- binding without keys ------------------------------------------------------------------


def test_without_keys_the_http_port_is_bound_to_loopback() -> None:
    host, note = bind_decision(_settings(host="0.0.0.0"))
    assert host == "127.0.0.1" and note and "0.0.0.0" in note and "QMESH_API_KEYS" in note
    host, note = bind_decision(_settings())
    assert host == "127.0.0.1" and note and "loopback" in note
    assert bind_decision(_settings(host="::1"))[0] == "::1"
    host, note = bind_decision(_settings(host="0.0.0.0", api_keys="k"))
    assert host == "0.0.0.0" and note is None
    host, note = bind_decision(_settings(host="0.0.0.0", allow_unauthenticated_bind=True))
    assert host == "0.0.0.0" and note and "QMESH_ALLOW_UNAUTHENTICATED_BIND" in note


def test_without_keys_only_loopback_clients_are_served() -> None:
    settings = _settings()
    (remote,) = _get(settings, [("GET", "/metrics", {})], client=("10.1.2.3", 5000))
    assert remote.status_code == 403 and remote.json()["error"]["code"] == "forbidden"
    (local,) = _get(settings, [("GET", "/metrics", {})])
    assert local.status_code == 200
    allowed = _settings(allow_unauthenticated_bind=True)
    (remote,) = _get(allowed, [("GET", "/metrics", {})], client=("10.1.2.3", 5000))
    assert remote.status_code == 200


# --- open paths ----------------------------------------------------------------------------


def test_metrics_docs_and_openapi_need_a_key_by_default() -> None:
    settings = _settings(api_keys=ADMIN_KEY)
    bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
    paths = ["/metrics", "/openapi.json", "/docs"]
    answers = _get(settings, [("GET", p, {}) for p in paths] + [("GET", p, bearer) for p in paths])
    for r in answers[:3]:
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert [r.status_code for r in answers[3:]] == [200, 200, 200]
    (health,) = _get(settings, [("GET", "/api/v1/health", {})])
    assert health.status_code == 200


def test_odd_credentials_are_a_401_never_a_500() -> None:
    settings = _settings(api_keys=ADMIN_KEY)
    answers = _get(
        settings,
        [
            ("GET", "/metrics", {"X-API-Key": b"\xff\xfe\x00k"}),  # type: ignore[dict-item]
            ("GET", "/metrics", {"Authorization": "Bearer "}),
            ("GET", "/metrics", {"Authorization": "Basic abc"}),
        ],
    )
    assert [r.status_code for r in answers] == [401, 401, 401]


def test_open_paths_setting_opens_exactly_the_listed_paths() -> None:
    settings = _settings(api_keys=ADMIN_KEY, open_paths="/health,/metrics")
    metrics, openapi, health = _get(
        settings, [("GET", "/metrics", {}), ("GET", "/openapi.json", {}), ("GET", "/health", {})]
    )
    assert metrics.status_code == 200 and health.status_code == 200
    assert openapi.status_code == 401


# --- failed authentication -----------------------------------------------------------------


def test_failed_auth_is_rate_limited_per_client_address() -> None:
    settings = _settings(api_keys=ADMIN_KEY, auth_failures_per_minute=10)
    app = create_app(settings)
    good = {"X-API-Key": ADMIN_KEY}

    async def go() -> None:
        attacker = httpx.ASGITransport(app=app, client=("10.9.9.9", 1000))
        honest = httpx.ASGITransport(app=app, client=("10.8.8.8", 1000))
        async with (
            httpx.AsyncClient(transport=attacker, base_url="http://t") as bad,
            httpx.AsyncClient(transport=honest, base_url="http://t") as ok,
        ):
            # Successes never count: 30 good requests, then still 10 failures before a 429.
            for _ in range(30):
                assert (await ok.get("/metrics", headers=good)).status_code == 200
            for i in range(10):
                r = await bad.get("/metrics", headers={"X-API-Key": f"guess-{i}"})
                assert r.status_code == 401, (i, r.text)
            r = await bad.get("/metrics", headers={"X-API-Key": "guess-10"})
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
            assert r.json()["error"]["details"]["reason"] == "failed_auth"
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            # While locked out, no key is checked from that address: a lucky guess learns
            # nothing (the lock-out ends after Retry-After seconds).
            assert (await bad.get("/metrics", headers=good)).status_code == 429
            # Another address is not affected; a request without a key is a plain 401.
            assert (await ok.get("/metrics", headers=good)).status_code == 200
            for _ in range(9):
                assert (await ok.get("/metrics", headers={"X-API-Key": "x"})).status_code == 401
            assert (await ok.get("/metrics", headers=good)).status_code == 200
            assert (await bad.get("/metrics")).status_code == 401

    asyncio.run(go())


# --- the WebSocket token endpoint ----------------------------------------------------------


def test_ws_token_endpoint_needs_a_key_and_binds_the_principal() -> None:
    settings = _settings(principals=f"ops:admin:{ADMIN_KEY},alice:user:{USER_KEY}")
    app = create_app(settings)

    async def go() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            anonymous = await http.post("/api/v1/auth/ws-token")
            issued = await http.post(
                "/api/v1/auth/ws-token", headers={"Authorization": f"Bearer {USER_KEY}"}
            )
            return anonymous, issued

    anonymous, issued = asyncio.run(go())
    assert anonymous.status_code == 401
    assert issued.status_code == 200, issued.text
    body = issued.json()
    assert body["principal"] == "alice" and body["expires_in_s"] == 60
    assert app.state.ws_tokens.verify(body["token"]) == "alice"
    assert body["expires_at"].endswith("+00:00")
