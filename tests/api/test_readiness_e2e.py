"""/ready tells the truth about nodes: 503 until QMESH_MIN_READY_NODES are usable."""

from __future__ import annotations

from pathlib import Path

from tests.support.live import LiveCoordinator, LiveNode, wait_until


def test_ready_waits_for_a_usable_node_and_names_what_is_missing(tmp_path: Path) -> None:
    coord = LiveCoordinator(
        tmp_path / "coord", embedded_nodes=0, env={"QMESH_MIN_READY_NODES": "1"}
    ).start(ready=False)
    node = LiveNode(tmp_path, coord.bootstrap_addr(), name="late")
    try:
        r = coord.http.get("/ready")
        assert r.status_code == 503
        body = r.json()
        assert body["failing"] == ["nodes"]
        assert body["parts"]["nodes"].startswith("down: 0 usable of 1 needed")
        assert body["nodes"] == {
            "known": 0, "fresh": 0, "stale": 0, "usable": 0, "untrusted": 0, "min_ready": 1
        }  # fmt: skip
        assert coord.http.get("/health").status_code == 200  # alive, just not ready

        # A node that is heard but not enrolled is still not usable.
        node.start()
        peer_id = node.peer_id()
        r = coord.http.post("/enrollment/peers", json={"peer_id": peer_id})
        assert r.status_code in (200, 201), r.text
        assert coord.http.get("/ready").status_code == 503
        coord.http.post(f"/enrollment/peers/{peer_id}/action", json={"action": "approve"})
        wait_until(lambda: coord.http.get("/ready").status_code == 200, timeout=30, what="ready")
        body = coord.http.get("/ready").json()
        assert body["status"] == "ready" and body["failing"] == []
        assert body["nodes"]["usable"] == 1 and body["parts"]["nodes"] == "up: 1 usable"
    finally:
        node.stop()
        coord.stop()
