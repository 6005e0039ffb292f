"""docker/compose.yaml: structure (always) and `docker compose config` (when a client exists).

Docker's engine does not run on the test machines; `config` needs only the client, which
interpolates variables and validates the file against the Compose schema.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PEER_ID = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
NODES = ("node-a", "node-b", "node-c")
CONFIG_TIMEOUT_S = 60


def _compose_cmd() -> list[str]:
    if shutil.which("docker") is None:
        pytest.skip("the docker client is not installed")
    try:
        plugin = subprocess.run(
            ["docker", "compose", "version"],
            capture_output=True,
            timeout=CONFIG_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("`docker compose version` hung")
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip(
        "the docker client has no compose plugin and docker-compose is absent "
        "(Debian: apt-get install docker-compose-plugin or docker-compose)"
    )


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("QMESH_", "COORDINATOR_"))}
    return subprocess.run(
        [*_compose_cmd(), "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=CONFIG_TIMEOUT_S,
        check=False,
    )


def test_compose_config_is_valid() -> None:
    run = _config({"COORDINATOR_PEER_ID": PEER_ID})
    assert run.returncode == 0, run.stderr + run.stdout


def test_compose_config_demands_the_coordinator_peer_id() -> None:
    run = _config({})
    assert run.returncode != 0
    assert "COORDINATOR_PEER_ID" in run.stderr + run.stdout


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _default(value: str) -> str:
    """Resolve `${VAR:-default}` and `${VAR:?msg}` the way compose does with VAR unset."""
    out = value
    while "${" in out:
        start = out.index("${")
        end = out.index("}", start)
        expr = out[start + 2 : end]
        if expr == "COORDINATOR_PEER_ID" or expr.startswith("COORDINATOR_PEER_ID:?"):
            repl = PEER_ID
        else:
            repl = expr.split(":-", 1)[1] if ":-" in expr else ""
        out = out[:start] + repl + out[end + 1 :]
    return out


def _ip(service: dict[str, Any]) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(_default(service["networks"]["mesh"]["ipv4_address"]))


def test_services_and_health_gates(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"postgres", "mongo", "coordinator", *NODES}
    assert services["postgres"]["image"] == "postgres:16"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["mongo"]["image"] == "mongo:7"
    assert "mongosh" in services["mongo"]["healthcheck"]["test"]
    coordinator = services["coordinator"]
    assert coordinator["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "mongo": {"condition": "service_healthy"},
    }
    assert "/api/v1/health" in " ".join(coordinator["healthcheck"]["test"])
    for name in NODES:
        assert services[name]["depends_on"] == {"coordinator": {"condition": "service_healthy"}}
        assert "healthcheck" in services[name]


def test_coordinator_settings(compose: dict[str, Any]) -> None:
    coordinator = compose["services"]["coordinator"]
    env = {k: _default(str(v)) for k, v in coordinator["environment"].items()}
    assert env["QMESH_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["QMESH_DATABASE_URL"]
    assert env["QMESH_MONGO_URL"] == "mongodb://mongo:27017"
    assert env["QMESH_P2P_HOST"] == "0.0.0.0"
    assert env["QMESH_EMBEDDED_NODES"] == "0"
    args = coordinator["command"]
    # The CLI's --embedded-nodes default would override QMESH_EMBEDDED_NODES.
    assert args[args.index("--embedded-nodes") + 1] == "0"
    assert args[args.index("--data-dir") + 1] == "/var/lib/qmesh"
    assert "coordinator-data:/var/lib/qmesh" in coordinator["volumes"]
    assert compose["volumes"]["coordinator-data"]["name"] == "qmesh-coordinator-data"


def test_nodes_dial_the_coordinator_at_its_fixed_address(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ipam = compose["networks"]["mesh"]["ipam"]["config"][0]
    subnet = ipaddress.IPv4Network(_default(ipam["subnet"]))
    coordinator_ip = _ip(services["coordinator"])
    ips = {name: _ip(services[name]) for name in ("postgres", "mongo", "coordinator", *NODES)}
    assert len(set(ips.values())) == len(ips), ips
    assert all(ip in subnet for ip in ips.values())
    for name in NODES:
        args = [_default(str(a)) for a in services[name]["command"]]
        assert args[0] == "node"
        bootstrap = args[args.index("--bootstrap") + 1]
        assert bootstrap == f"/ip4/{coordinator_ip}/tcp/4001/p2p/{PEER_ID}"
        assert args[args.index("--listen-host") + 1] == str(ips[name])
        assert args[args.index("--key-file") + 1].startswith("/var/lib/qmesh/")


def test_dockerfile_essentials() -> None:
    text = DOCKERFILE.read_text()
    assert "FROM python:3.11-slim" in text
    assert "libgmp-dev" in text and "gcc" in text
    assert '".[chem]"' in text
    assert "USER qmesh" in text
    assert 'ENTRYPOINT ["qmesh"]' in text
    assert "HEALTHCHECK" in text and "urllib.request" in text and "/api/v1/health" in text
    assert "QMESH_ALEMBIC_DIR=/app/alembic" in text
