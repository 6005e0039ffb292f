"""No 500 from input, and no secret in the logs, on one live coordinator with API keys
(PostgreSQL, as in production: its integer and JSON types are the strict ones).

Every malformed number a client can send (pagination, workload parameters, an FCIDUMP
header) is a 4xx naming the field; afterwards the coordinator's log and the JSONL peer logs
must not contain either configured key, nor a wrong key a client sent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.live import LiveCoordinator

KEY, OTHER_KEY = "bounds-key-8c1f0e2d9a", "bounds-other-4b7e1c3f"
WRONG_KEY = "bounds-wrong-6d2a9f0b17"
HUGE = "99999999999999999999"
LIST_PATHS = [
    "/jobs",
    "/finance",
    "/workflows/runs",
    "/workflows/benchmarks",
    "/enrollment/peers",
    "/discovery/peers",
    "/services",
]


@pytest.fixture(scope="module")
def coord(
    tmp_path_factory: pytest.TempPathFactory, module_pg_url: str
) -> Iterator[LiveCoordinator]:
    live = LiveCoordinator(
        tmp_path_factory.mktemp("bounds"),
        database_url=module_pg_url,
        embedded_nodes=0,
        api_key=KEY,
        env={"QMESH_API_KEYS": f"{KEY},{OTHER_KEY}", "QMESH_RATE_LIMIT_PER_MINUTE": "100000"},
    )
    live.start()
    try:
        yield live
    finally:
        live.stop()


def _invalid(r: httpx.Response, field: str, *, status: int = 422) -> dict[str, Any]:
    """The envelope of a refused input, whose message names ``field``."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] in ("validation_error", "invalid_input"), err
    assert field in err["message"], err
    return err  # type: ignore[no-any-return]


def _run(coord: LiveCoordinator, kind: str, params: dict[str, Any]) -> httpx.Response:
    return coord.http.post("/workflows/runs", json={"kind": kind, "params": params})


@pytest.mark.parametrize("path", LIST_PATHS)
def test_pagination_out_of_range_is_422_on_every_list(coord: LiveCoordinator, path: str) -> None:
    for query in (f"offset={HUGE}", "offset=1000000001", "offset=-1", "offset=abc"):
        _invalid(coord.http.get(f"{path}?{query}"), "offset")
    for query in (f"limit={HUGE}", "limit=0", "limit=501"):
        _invalid(coord.http.get(f"{path}?{query}"), "limit")
    edge = coord.http.get(f"{path}?offset=1000000000&limit=500")
    assert edge.status_code == 200, edge.text
    assert edge.json()["items"] == [] and edge.json()["offset"] == 10**9


def test_knapsack_numbers_beyond_bounds_are_422_naming_the_field(coord: LiveCoordinator) -> None:
    base = {"values": [10, 13, 7], "weights": [5, 6, 3], "capacity": 9}
    for field, bad in [
        ("values", {"values": [10**30, 13, 7]}),
        ("values", {"values": [-(10**30), 13, 7]}),
        ("weights", {"weights": [5, 10**30, 3]}),
        ("capacity", {"capacity": 10**30}),
        ("capacity", {"capacity": 1.5}),
        ("values", {"values": [1e300, 13, 7]}),
        ("values", {"values": "abc"}),
        ("values", {"values": list(range(1, 100_000))}),
        ("block_size", {"block_size": "abc"}),
        ("block_size", {"block_size": 1.5}),
        ("beam_width", {"beam_width": 10**30}),
        ("optimizer", {"optimizer": 7}),
        ("seed", {"seed": 10**30}),
    ]:
        err = _invalid(_run(coord, "qaoa_knapsack", {**base, **bad}), field)
        assert err["details"].get("field") == field or field in str(err["details"]), err


def test_parameter_search_bad_numbers_are_422(coord: LiveCoordinator) -> None:
    qubo = [[1.0, -2.0], [-2.0, 3.0]]
    for field, bad in [
        ("offset", {"offset": "abc"}),
        ("offset", {"offset": [1]}),
        ("offset", {"offset": 1e300}),
        ("n_schedules", {"n_schedules": "abc"}),
        ("n_schedules", {"n_schedules": 10**30}),
        ("n_schedules", {"n_schedules": 0}),
        ("p", {"p": 2.5}),
        ("jobs", {"jobs": 10**6}),
        ("refine_rounds", {"refine_rounds": -1}),
        ("qubo", {"qubo": [[1.0, "x"], [0.0, 1.0]]}),
        ("qubo", {"qubo": [[1e300, 0.0], [0.0, 1.0]]}),
        ("qubo", {"qubo": [[True, 0.0], [0.0, 1.0]]}),
    ]:
        _invalid(_run(coord, "qaoa_parameter_search", {"qubo": qubo, **bad}), field)


def test_portfolio_numbers_beyond_bounds_are_422(coord: LiveCoordinator) -> None:
    body = {
        "assets": ["A", "B", "C"],
        "expected_returns": [0.1, 0.12, 0.07],
        "covariance": [[0.05, 0.01, 0.0], [0.01, 0.06, 0.0], [0.0, 0.0, 0.04]],
        "budget": 2,
    }
    _invalid(
        coord.http.post("/finance/submit", json={**body, "expected_returns": [1e300, 0.1, 0.1]}),
        "expected_returns",
    )
    big = [[1e300, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    _invalid(coord.http.post("/finance/submit", json={**body, "covariance": big}), "covariance")
    _invalid(coord.http.post("/finance/submit", json={**body, "budget": 10**30}), "budget")
    _invalid(
        coord.http.post("/finance/submit", json={**body, "risk_aversion": 1e300}), "risk_aversion"
    )


@pytest.mark.parametrize(
    ("fcidump", "field"),
    [
        ("&FCI NORB=99999999,NELEC=2,MS2=0,\n&END\n 1.0 1 1 1 1\n", "NORB"),
        ("&FCI NORB=-5,NELEC=2,MS2=0,\n&END\n", "NORB"),
        ("&FCI NORB=2,NELEC=99999999999,MS2=0,\n&END\n 1.0 1 1 1 1\n", "NELEC"),
        ("&FCI NORB=2,NELEC=2,MS2=0,\n&END\n 1.0 9 9 9 9\n", "index"),
        ("&FCI NORB=2,NELEC=2,MS2=0,\n&END\n 1.0 -1 1 0 0\n", "index"),
        ("&FCI NORB=2,NELEC=2,MS2=0,\n&END\n abc 1 1 0 0\n", "line"),
        ("&FCI NORB=2,NELEC=2,MS2=0,\n&END\n" + " 1.0 1 1 1 1\n" * 100_000, "lines"),
        ("&FCI NORB=2 NELEC=2\n" * 20, "header"),
    ],
    ids=[
        "norb-huge",
        "norb-negative",
        "nelec-huge",
        "index-high",
        "index-negative",
        "value",
        "too-many-lines",
        "unclosed-header",
    ],
)
def test_junk_fcidump_is_422_quickly(coord: LiveCoordinator, fcidump: str, field: str) -> None:
    started = time.monotonic()
    _invalid(_run(coord, "sqd", {"fcidump": fcidump}), field)
    assert time.monotonic() - started < 10.0


@pytest.mark.parametrize(
    ("molecule", "field"),
    [
        ({"atom": "H 0 0 0; H 0 0 0.74", "basis": "/etc/passwd"}, "basis"),
        ({"atom": "H 0 0 0; H 0 0 0.74", "basis": "sto-3g@1s@2s"}, "basis"),
        ({"atom": "H 0 0 0; H 0 0 1e999", "basis": "sto-3g"}, "coordinate"),
        ({"atom": "H 0 0 0; H 0 0 0.74", "basis": "sto-3g", "charge": -(10**30)}, "charge"),
        ({"atom": "H 0 0 0; H 0 0 0.74", "basis": "sto-3g", "spin": 10**30}, "spin"),
        (
            {"atom": "H 0 0 0; H 0 0 0.74", "basis": "sto-3g", "active_orbitals": 10**30},
            "active_orbitals",
        ),
        ({"atom": "; ".join(f"H 0 0 {i}" for i in range(150)), "basis": "sto-3g"}, "atoms"),
    ],
)
def test_sqd_molecule_bounds_are_422(
    coord: LiveCoordinator, molecule: dict[str, Any], field: str
) -> None:
    _invalid(_run(coord, "sqd", {"molecule": molecule}), field)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/workflows/runs",
            '{"kind": "qaoa_knapsack", "params": {"values": [1, 2], "weights": [1, 1], '
            '"capacity": 1, "note": NaN}}',
            "note",
        ),
        (
            "/workflows/runs",
            '{"kind": "qaoa_knapsack", "params": {"values": [1, 2], "weights": [1, 1], '
            '"capacity": 1, "note": "a\\u0000b"}}',
            "note",
        ),
        (
            "/workflows/runs",
            '{"kind": "qaoa_parameter_search", "params": {"qubo": [[1, 0], [0, 1]], '
            '"offset": Infinity}}',
            "offset",
        ),
        (
            "/workflows/runs",
            '{"kind": "sqd", "params": {"fcidump": "&FCI NORB=1,NELEC=2,MS2=0,\\n&END\\n'
            ' 0.5 1 1 1 1\\n\\n\\u0000"}}',
            "fcidump",
        ),
        (
            "/finance/submit",
            '{"assets": ["A\\u0000", "B"], "expected_returns": [0.1, 0.2], '
            '"covariance": [[1, 0], [0, 1]], "budget": 1}',
            "assets",
        ),
        (
            "/finance/submit",
            '{"assets": ["A", "B"], "expected_returns": [NaN, 0.2], '
            '"covariance": [[1, 0], [0, 1]], "budget": 1}',
            "expected_returns",
        ),
    ],
    ids=["nan", "nul", "infinity", "nul-after-integrals", "nul-in-asset", "nan-in-returns"],
)
def test_values_a_json_column_cannot_store_are_422(
    coord: LiveCoordinator, path: str, body: str, field: str
) -> None:
    """NaN/Infinity (accepted by Python's JSON parser) and NUL characters were a 500 on
    PostgreSQL when the job was stored."""
    r = coord.http.post(path, content=body, headers={"Content-Type": "application/json"})
    _invalid(r, field)


def test_no_key_appears_in_any_log(coord: LiveCoordinator) -> None:
    """Runs last: every request above sent KEY; now a wrong key and the second key too."""
    base = f"{coord.base_url}/api/v1"
    wrong = httpx.get(f"{base}/jobs", headers={"Authorization": f"Bearer {WRONG_KEY}"})
    assert wrong.status_code == 401
    assert httpx.get(f"{base}/jobs", headers={"X-API-Key": WRONG_KEY}).status_code == 401
    assert httpx.get(f"{base}/jobs", headers={"X-API-Key": OTHER_KEY}).status_code == 200
    r = httpx.get(f"{base}/jobs?offset={HUGE}", headers={"X-API-Key": OTHER_KEY})
    assert r.status_code == 422
    assert coord.http.get("/health").status_code == 200
    time.sleep(0.5)  # let the coordinator flush its log lines
    logs = {"coordinator.log": (coord.data_dir / "coordinator.log").read_text(errors="replace")}
    for path in coord.data_dir.rglob("*.jsonl"):
        logs[str(path)] = path.read_text(errors="replace")
    for name, text in logs.items():
        for secret in (KEY, OTHER_KEY, WRONG_KEY):
            assert secret not in text, f"{secret} appears in {name}"
    coordinator_log = logs["coordinator.log"]
    assert "api.unhandled" not in coordinator_log
    assert "Exception in ASGI application" not in coordinator_log


def test_a_nul_character_in_stored_text_is_a_4xx_not_a_500(
    coord: LiveCoordinator, tmp_path: Path
) -> None:
    from quantum_mesh.mesh.identity import load_or_create_keypair, peer_id_of

    peer_id = peer_id_of(load_or_create_keypair(tmp_path / "nul.key"))
    r = coord.http.post("/enrollment/peers", json={"peer_id": peer_id, "name": "lab\u0000box"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_input"
    assert coord.http.get(f"/enrollment/peers/{peer_id}").status_code == 404
