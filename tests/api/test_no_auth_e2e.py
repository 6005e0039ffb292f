"""With no API key configured, the coordinator serves loopback only and says so at start.

`QMESH_HOST=0.0.0.0` without keys used to expose an API where any caller could enroll and
approve its own node; now the HTTP port is bound to 127.0.0.1 and the start-up output (log and
console) names the override and how to lift it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.live import LiveCoordinator


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCoordinator]:
    live = LiveCoordinator(
        tmp_path_factory.mktemp("noauth"),
        embedded_nodes=0,
        env={"QMESH_HOST": "0.0.0.0", "QMESH_API_KEYS": "", "QMESH_PRINCIPALS": ""},
    )
    live.start()
    try:
        yield live
    finally:
        live.stop()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (Linux /proc/net/tcp{,6})."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                found.add(address)
    return found


def test_no_keys_binds_loopback_only_and_says_so(coord: LiveCoordinator) -> None:
    log = coord.log_tail(200_000)
    assert "No API keys configured" in log
    assert "QMESH_HOST=0.0.0.0" in log and "127.0.0.1" in log
    listening = _listening_addresses(coord.port)
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp to read listening sockets from")
    assert listening == {"0100007F"}, listening  # 127.0.0.1, and nothing else
    # Everything is admin on loopback: enrollment works without a key.
    r = httpx.post(
        f"{coord.base_url}/api/v1/enrollment/peers",
        json={"peer_id": "12D3KooWQ5N5fZ3T4sTbq3vJ5m6yXcS8p2Qe1r9u7Zw4VkLmNoPq"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    assert httpx.get(f"{coord.base_url}/metrics", timeout=30).status_code == 200
