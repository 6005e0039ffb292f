"""Wire compatibility with a standard libp2p implementation: a js-libp2p 3.x peer
(``tests/jspeer/``, Noise, Yamux, GossipSub, Identify from npm) joins a live coordinator. It
hears the nodes' adverts relayed by the coordinator's GossipSub, is refused with
``not_enrolled`` before it is enrolled, and gets ``ping`` answers once an admin approves it.

``scripts/test.sh`` installs the npm packages (``npm ci`` in ``tests/jspeer``); Node.js runs
the peer as a subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.live import LiveCoordinator

JS_PEER = Path(__file__).resolve().parents[1] / "jspeer"
EMBEDDED_NODES = 1
#: Longest wait for one line from the JS peer.
LINE_TIMEOUT_S = 30.0


class JsPeer:
    """``node peer.mjs ADDR`` with its JSON-lines output read on a thread."""

    def __init__(self, coordinator_addr: str) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.fail("Node.js is not installed: scripts/test.sh installs it (apt: nodejs)")
        if not (JS_PEER / "node_modules" / "libp2p").is_dir():
            pytest.fail(f"npm packages missing: run `npm ci` in {JS_PEER} (scripts/test.sh does)")
        self.process = subprocess.Popen(
            [node, "peer.mjs", coordinator_addr],
            cwd=JS_PEER,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))

    def next_event(self, event: str) -> dict[str, Any]:
        deadline = time.monotonic() + LINE_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line["event"] == event:
                return line
        stderr = self.process.stderr.read() if self.process.poll() is not None else ""
        raise AssertionError(f"no {event!r} from the JS peer in {LINE_TIMEOUT_S} s {stderr}")

    def ping(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("ping\n")
        self.process.stdin.flush()
        reply: dict[str, Any] = self.next_event("reply")["reply"]
        return reply

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def js_peer(coord: LiveCoordinator) -> Iterator[JsPeer]:
    addr = coord.http.get("/bootstrap/libp2p").json()["listen_addrs"][0]
    peer = JsPeer(addr)
    try:
        yield peer
    finally:
        peer.stop()


def test_js_libp2p_peer_hears_adverts_is_refused_then_answered(
    coord: LiveCoordinator, js_peer: JsPeer
) -> None:
    peer_id = js_peer.next_event("started")["peer_id"]
    js_peer.next_event("connected")
    node_ids = {p["peer_id"] for p in coord.http.get("/discovery/peers").json()["items"]}
    advert = js_peer.next_event("advert")
    assert advert["peer_id"] in node_ids and "qaoa_block" in advert["services"]

    refused = js_peer.ping()
    assert refused["ok"] is False and refused["error"]["code"] == "not_enrolled"

    enrolled = coord.http.post("/enrollment/peers", json={"peer_id": peer_id, "name": "js-peer"})
    assert enrolled.status_code == 201, enrolled.text
    approved = coord.http.post(f"/enrollment/peers/{peer_id}/action", json={"action": "approve"})
    assert approved.status_code == 200, approved.text

    answered = js_peer.ping()
    assert answered["ok"] is True, answered
    assert answered["result"]["pong"] is True
    assert answered["result"]["peer_id"] == coord.http.get("/bootstrap/libp2p").json()["peer_id"]
