"""Mesh trust on a live coordinator with an embedded node: an unenrolled libp2p peer (a raw
test peer with a fresh key) attacks both, and nothing it sends is served, buffered or heard.

Memory is measured as the target process's peak RSS (``VmHWM``, reset through
``/proc/<pid>/clear_refs`` just before the attack) minus its RSS before it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import trio
from tests.mesh import trio_peer
from tests.support.circuits import BELL_QASM2
from tests.support.live import LiveCoordinator, wait_until

from quantum_mesh.mesh import codec
from quantum_mesh.mesh.codec import dumps

EMBEDDED_NODES = 1
#: The attack frame: just under the 64 MiB frame limit the coordinator used to read whole.
HUGE_BYTES = 60_000_000
#: "A few MB": allocator noise and libp2p's own per-stream buffer (a 256 KiB yamux window).
MAX_GROWTH_KIB = 8 * 1024
#: The coordinator refreshes the metric gauges every 5 s.
METRICS_REFRESH_S = 5.0


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing for pid {pid}")


def peak_growth_kib(pid: int, attack: Callable[[], Any]) -> tuple[int, Any]:
    before = _kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := current RSS
    outcome = attack()
    return _kib(pid, "VmHWM") - before, outcome


def node_pid(coord: LiveCoordinator) -> int:
    key = str(coord.data_dir / "nodes" / "node-0.key")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"quantum_mesh.node.main" in argv and key.encode() in argv:
            return int(entry.name)
    raise AssertionError("embedded node process not found")


def node_addr(coord: LiveCoordinator) -> str:
    [peer] = coord.http.get("/discovery/peers").json()["items"]
    return str(peer["listen_addrs"][0])


def request(method: str, params: dict[str, Any]) -> bytes:
    return codec.encode_frame(codec.make_request(f"{method}-1", method, params))


def test_an_unenrolled_peer_is_refused_by_the_node(coord: LiveCoordinator) -> None:
    frames = [
        request("ping", {}),
        request("echo", {"x": 1}),
        request("node_status", {}),
        request(
            "reserve",
            {"reservation_id": "evil", "service_type": "cnot", "ttl_s": math.nan},
        ),
        request("reserve", {"reservation_id": "evil2", "service_type": "cnot"}),
    ]
    replies = trio.run(trio_peer.raw_calls, node_addr(coord), frames)
    assert [r["error"]["code"] for r in replies] == ["not_enrolled"] * len(frames)
    assert [r["ok"] for r in replies] == [False] * len(frames)
    # The node is not saturated: circuit work still runs on it.
    r = coord.http.post("/circuits/submit", json={"circuit": BELL_QASM2, "seed": 1})
    assert r.status_code == 202, r.text
    assert coord.wait_job(r.json()["job_id"])["status"] == "COMPLETED"


def test_a_huge_frame_from_an_unenrolled_peer_is_refused_by_the_coordinator(
    coord: LiveCoordinator,
) -> None:
    assert coord.proc is not None
    huge = trio_peer.padded_request("ping", HUGE_BYTES)
    target = coord.bootstrap_addr()
    growth, reply = peak_growth_kib(
        coord.mesh_pid, lambda: trio.run(trio_peer.oversized_frame, target, huge)
    )
    assert reply is trio_peer.RESET or reply.get("error", {}).get("code") == "not_enrolled", reply
    assert growth <= MAX_GROWTH_KIB, f"coordinator peak RSS grew by {growth} KiB"
    assert httpx.get(coord.base_url + "/health", timeout=10).status_code == 200


def test_a_huge_frame_from_an_unenrolled_peer_is_refused_by_a_node(
    coord: LiveCoordinator,
) -> None:
    huge = trio_peer.padded_request("echo", HUGE_BYTES)
    target = node_addr(coord)
    growth, reply = peak_growth_kib(
        node_pid(coord), lambda: trio.run(trio_peer.oversized_frame, target, huge)
    )
    assert reply is trio_peer.RESET or reply.get("error", {}).get("code") == "not_enrolled", reply
    assert growth <= MAX_GROWTH_KIB, f"node peak RSS grew by {growth} KiB"
    assert coord.usable_nodes() == 1


def _advert(peer_id: str) -> bytes:
    return dumps(
        {
            "peer_id": peer_id,
            "name": "ghost",
            "services": ["cnot"],
            "qubit_min": 1,
            "qubit_max": 24,
            "fidelity": 1.0,
            "noise_level": 0.0,
            "load": 0.0,
            "availability": "AVAILABLE",
            "workers": 64,
            "listen_addrs": [f"/ip4/127.0.0.1/tcp/9/p2p/{peer_id}"],
            "version": "0.1.0",
            "sent_at": time.time(),
            "seq": 1,
        }
    )


def test_fabricated_adverts_never_reach_discovery_or_metrics(coord: LiveCoordinator) -> None:
    made_up = trio.run(trio_peer.relay_forged_adverts, coord.bootstrap_addr(), _advert, 12)
    assert len(set(made_up)) == 12

    def dropped() -> float:
        text = httpx.get(coord.base_url + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith('qmesh_adverts_dropped_total{reason="unknown_peer"}'):
                return float(line.split()[-1])
        return 0.0

    # Every forged advert was delivered and dropped (counted without a peer label) ...
    wait_until(lambda: dropped() >= len(made_up), timeout=30, what="unknown_peer drops")
    time.sleep(METRICS_REFRESH_S + 1)  # ... and the gauges were refreshed since
    peers = {p["peer_id"] for p in coord.http.get("/discovery/peers").json()["items"]}
    metrics_text = httpx.get(coord.base_url + "/metrics", timeout=10).text
    for peer_id in made_up:
        assert peer_id not in peers
        assert coord.http.get(f"/discovery/peers/{peer_id}").status_code == 404
        assert peer_id not in metrics_text
    # The real node is still heard.
    assert coord.usable_nodes() == 1


def test_dev_mode_still_hears_unenrolled_peers(tmp_path: Path) -> None:
    """With ``QMESH_REQUIRE_ENROLLMENT=false`` adverts of unknown peers are heard as before
    (and this is what the forged adverts above would have achieved)."""
    with LiveCoordinator(
        tmp_path / "dev",
        embedded_nodes=0,
        env={"QMESH_REQUIRE_ENROLLMENT": "false"},
    ) as dev:
        made_up = trio.run(trio_peer.relay_forged_adverts, dev.bootstrap_addr(), _advert, 2)

        def heard() -> bool:
            peers = {p["peer_id"] for p in dev.http.get("/discovery/peers").json()["items"]}
            return set(made_up) <= peers

        wait_until(heard, timeout=30, what="dev-mode adverts heard")
