"""Link namespaces (control/netns.py): real namespaces, veth pairs and tbf when run as root;
set-up and teardown leave nothing behind, and tbf measurably caps a real transfer."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from quantum_mesh.control import netns
from quantum_mesh.control.workflows import scenario_params
from quantum_mesh.errors import InvalidInput

REASON = netns.unavailable_reason()
needs_netns = pytest.mark.skipif(
    REASON is not None, reason=f"network namespaces need root and iproute2 ({REASON})"
)

#: One transfer each way; at the shaped rate it takes about a quarter second.
TRANSFER_BYTES = 256 * 1024
SHAPED_BPS = 1_000_000  # 8 Mbit/s

#: Runs inside the namespace: send the bytes, then read as many back and say when done.
CLIENT = """
import socket, sys
n = int(sys.argv[2])
s = socket.create_connection((sys.argv[1], int(sys.argv[3])), timeout=30)
s.sendall(b"u" * n)
got = 0
while got < n:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += len(chunk)
s.sendall(b"!")
s.close()
"""


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def _addresses() -> str:
    return subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout


def _qdisc(link: netns.Link, inside: bool) -> str:
    where = ["-n", link.namespace] if inside else []
    dev = "eth0" if inside else link.veth
    argv = ["tc", *where, "qdisc", "show", "dev", dev]
    return subprocess.run(argv, capture_output=True, text=True).stdout


def _transfer(link: netns.Link) -> tuple[float, float]:
    """Seconds of an upload (namespace -> root) and of a download (root -> namespace) of
    ``TRANSFER_BYTES`` over ``link``, both timed at the root side."""
    server = socket.create_server((link.host_addr, 0))
    port = server.getsockname()[1]
    times: dict[str, float] = {}

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            got, started = 0, None
            while got < TRANSFER_BYTES:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                started = started or time.perf_counter()
                got += len(chunk)
            times["up"] = time.perf_counter() - (started or 0.0)
            started = time.perf_counter()
            conn.sendall(b"d" * TRANSFER_BYTES)
            conn.recv(1)  # the client has it all
            times["down"] = time.perf_counter() - started

    args = [str(TRANSFER_BYTES), str(port)]
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        subprocess.run(
            [*link.exec_prefix(), sys.executable, "-c", CLIENT, link.host_addr, *args],
            check=True,
            timeout=60,
        )
        thread.join(30)
    finally:
        server.close()
    return times["up"], times["down"]


@needs_netns
def test_set_up_and_teardown_leave_nothing_behind() -> None:
    owned = netns.LinkNamespaces()
    shaped = owned.create(rate_bps=SHAPED_BPS)
    plain = owned.create()
    assert shaped.namespace != plain.namespace and shaped.host_addr != plain.host_addr
    assert {shaped.namespace, plain.namespace} <= set(netns.namespaces())
    assert shaped.veth in _links() and f"{shaped.host_addr}/30" in _addresses()
    assert shaped.label == f"netns {shaped.namespace}, veth {shaped.host_addr}/30"
    # The node side is in the namespace, with its own loopback up.
    inside = subprocess.run(
        [*shaped.exec_prefix(), "ip", "-o", "-4", "addr"], capture_output=True, text=True
    ).stdout
    assert f"{shaped.node_addr}/30" in inside and "127.0.0.1" in inside
    # tbf on both ends of the shaped link, none on the other.
    assert "tbf" in _qdisc(shaped, inside=False) and "tbf" in _qdisc(shaped, inside=True)
    assert "tbf" not in _qdisc(plain, inside=False)

    owned.remove(plain)
    owned.remove(plain)  # idempotent
    owned.remove_all()  # what a coordinator's shutdown does
    assert len(owned) == 0
    for link in (shaped, plain):
        assert link.namespace not in netns.namespaces()
        assert link.veth not in _links()
        assert f"{link.host_addr}/30" not in _addresses()


@needs_netns
def test_namespaces_of_a_coordinator_that_died_are_removed() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid names nobody now
    name = f"{netns.NS_PREFIX}{gone.pid}-1"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=5)
    try:
        assert name in netns.remove_orphans()
        assert name not in netns.namespaces()
    finally:
        netns.remove(name, f"{netns.VETH_PREFIX}{gone.pid}-1")


@needs_netns
def test_tbf_caps_a_real_transfer_both_ways() -> None:
    owned = netns.LinkNamespaces()
    try:
        plain_up, plain_down = _transfer(owned.create())
        shaped_up, shaped_down = _transfer(owned.create(rate_bps=SHAPED_BPS))
    finally:
        owned.remove_all()
    # Ratios only: the shaped link is several times slower each way than the same link
    # unshaped, and no faster than its rate allows (a burst's worth of slack).
    assert shaped_up / plain_up > 3, (shaped_up, plain_up)
    assert shaped_down / plain_down > 3, (shaped_down, plain_down)
    for seconds in (shaped_up, shaped_down):
        assert TRANSFER_BYTES / seconds < 1.25 * SHAPED_BPS, seconds


def test_bandwidth_is_refused_where_no_namespace_can_be_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netns, "unavailable_reason", lambda: "not root")
    with pytest.raises(InvalidInput, match=r"tbf.*not root"):
        scenario_params.scenarios_of({"scenarios": ["baseline", "bandwidth"]})
    # The relay alone still delays and loses on 127.0.0.1.
    assert scenario_params.scenarios_of({"scenarios": ["latency", "loss"]}) == ["latency", "loss"]
