"""A network namespace per link-scenario node: its own network stack, one veth pair to the
root namespace, and, for ``bandwidth``, the kernel's ``tbf`` qdisc on both ends of it.

Set-up and teardown are ``ip``/``tc`` calls (iproute2), each bounded by a timeout; they need
root. Names carry the coordinator's pid and a serial, so coordinators (and tests) running
side by side never collide: namespace ``qmesh-link-<pid>-<n>``, root-side veth
``qml<pid>-<n>`` (the namespace side is its ``eth0``). Each link gets a /30 of
``10.77.0.0/16`` no other interface of the root namespace holds (chosen under a file lock):
``10.77.a.b+1`` on the root side, ``+2`` inside. Everything stays on this machine: the
namespace has no route but its /30.

``remove`` is idempotent; namespaces left by a coordinator that died without removing them
(its pid is gone) are removed by the next ``create``.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

NS_PREFIX = "qmesh-link-"
VETH_PREFIX = "qml"
#: Where the links' /30s come from.
SUBNET = ipaddress.IPv4Network("10.77.0.0/16")
SLOTS = SUBNET.num_addresses // 4
#: Bound of one ``ip``/``tc`` call.
COMMAND_TIMEOUT_S = 5.0
#: tbf: bytes the bucket holds (at least two full-size frames; else 20 ms at the rate) and
#: how long a packet may wait in its queue before it is dropped.
TBF_MIN_BURST_BYTES = 3200
TBF_BURST_S = 0.02
TBF_LATENCY_MS = 200
_LOCK = Path(tempfile.gettempdir()) / "qmesh-netns.lock"
_NAME = re.compile(rf"^{re.escape(NS_PREFIX)}(\d+)-(\d+)$")
_serial = itertools.count(1)
_serial_lock = threading.Lock()


class NetnsError(RuntimeError):
    """A namespace, veth or qdisc could not be set up."""


def unavailable_reason() -> str | None:
    """Why this process cannot make link namespaces (None: it can try)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool!r} (iproute2) not found"
    return None


@dataclass(frozen=True)
class Link:
    namespace: str
    veth: str
    host_addr: str
    node_addr: str
    #: tbf settings on both ends, when shaped: ``{"rate_kbit", "burst_bytes", "latency_ms"}``.
    tbf: dict[str, float] | None = None

    @property
    def label(self) -> str:
        return f"netns {self.namespace}, veth {self.host_addr}/30"

    def exec_prefix(self) -> list[str]:
        """What runs a command inside the namespace (``ip netns exec`` execs it in place:
        the process keeps its pid, and so its signals)."""
        return ["ip", "netns", "exec", self.namespace]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return subprocess.CompletedProcess(list(argv), 1, "", str(error))


def _must(*argv: str) -> None:
    done = _run(*argv)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")


def namespaces() -> list[str]:
    """Names of the link namespaces that exist now (any coordinator's)."""
    listed = _run("ip", "netns", "list").stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(NS_PREFIX)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove(namespace: str, veth: str) -> None:
    """Remove a namespace and its veth pair; nothing happens for what is gone already."""
    _run("ip", "netns", "del", namespace)
    # A process still inside keeps the namespace, and so the pair, alive: deleting the root
    # side destroys both ends at once.
    _run("ip", "link", "del", veth)


def _veth_of(namespace: str) -> str:
    return VETH_PREFIX + namespace.removeprefix(NS_PREFIX)


def remove_orphans() -> list[str]:
    """Remove link namespaces whose coordinator (the pid in the name) is gone."""
    removed = []
    for name in namespaces():
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1))):
            remove(name, _veth_of(name))
            removed.append(name)
    return removed


def _taken_slots() -> set[int]:
    shown = _run("ip", "-o", "-4", "addr", "show").stdout
    taken = set()
    for text in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", shown):
        address = ipaddress.IPv4Address(text)
        if address in SUBNET:
            taken.add((int(address) - int(SUBNET.network_address)) // 4)
    return taken


def tbf_settings(rate_bps: float) -> dict[str, float]:
    """The tbf qdisc for a cap of ``rate_bps`` bytes a second."""
    return {
        "rate_kbit": round(rate_bps * 8 / 1000, 3),
        "burst_bytes": max(TBF_MIN_BURST_BYTES, int(rate_bps * TBF_BURST_S)),
        "latency_ms": TBF_LATENCY_MS,
    }


def _tbf(settings: dict[str, float]) -> list[str]:
    return [
        "root",
        "tbf",
        "rate",
        f"{int(settings['rate_kbit'] * 1000)}bit",
        "burst",
        str(int(settings["burst_bytes"])),
        "latency",
        f"{int(settings['latency_ms'])}ms",
    ]


def create(*, rate_bps: float | None = None) -> Link:
    """A new namespace with a veth pair to the root namespace, addressed and up (shaped by
    tbf both ways at ``rate_bps`` bytes a second when given).

    Raises:
        NetnsError: a step failed (what was made is removed again).
    """
    reason = unavailable_reason()
    if reason is not None:
        raise NetnsError(f"no network namespaces here: {reason}")
    remove_orphans()
    with _serial_lock:
        serial = next(_serial) % 10_000
    namespace = f"{NS_PREFIX}{os.getpid()}-{serial}"
    veth = _veth_of(namespace)
    with _LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two coordinators never pick the same /30
        try:
            taken = _taken_slots()
            start = (os.getpid() * 7 + serial) % SLOTS
            slot = next(
                (s % SLOTS for s in range(start, start + SLOTS) if s % SLOTS not in taken), None
            )
            if slot is None:
                raise NetnsError(f"no free /30 left in {SUBNET}")
            base = int(SUBNET.network_address) + 4 * slot
            host, node = str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2))
            tbf = tbf_settings(rate_bps) if rate_bps else None
            try:
                _must("ip", "netns", "add", namespace)
                _must("ip", "link", "add", veth, "type", "veth", "peer", "eth0", "netns", namespace)
                _must("ip", "addr", "add", f"{host}/30", "dev", veth)
                _must("ip", "link", "set", veth, "up")
                _must("ip", "-n", namespace, "addr", "add", f"{node}/30", "dev", "eth0")
                _must("ip", "-n", namespace, "link", "set", "eth0", "up")
                _must("ip", "-n", namespace, "link", "set", "lo", "up")
                if tbf is not None:  # egress of each end: both directions of the link
                    _must("tc", "qdisc", "replace", "dev", veth, *_tbf(tbf))
                    _must("tc", "-n", namespace, "qdisc", "replace", "dev", "eth0", *_tbf(tbf))
            except NetnsError:
                remove(namespace, veth)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return Link(namespace=namespace, veth=veth, host_addr=host, node_addr=node, tbf=tbf)


class LinkNamespaces:
    """The namespaces one coordinator made: removed one by one after their run, and all at
    once on shutdown."""

    def __init__(self) -> None:
        self._links: dict[str, Link] = {}
        self._lock = threading.Lock()

    def create(self, *, rate_bps: float | None = None) -> Link:
        link = create(rate_bps=rate_bps)
        with self._lock:
            self._links[link.namespace] = link
        return link

    def remove(self, link: Link) -> None:
        remove(link.namespace, link.veth)
        with self._lock:
            self._links.pop(link.namespace, None)

    def remove_all(self) -> None:
        with self._lock:
            links = list(self._links.values())
        for link in links:
            with contextlib.suppress(Exception):
                self.remove(link)

    def __len__(self) -> int:
        return len(self._links)
