"""Checks made before a coordinator starts anything, so a second start touches nothing.

A coordinator owns its data directory (database, keys, peer logs, its document server's
files) and two ports. Started twice with the same ones, the second used to bind libp2p,
start nodes with the first one's peer IDs and stop the first one's document server before it
failed on the HTTP port. Now it takes an exclusive lock on the data directory first, then
checks every port it will bind, and only then starts; either failure is one line and exit
code 2, and the running coordinator never notices.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

LOCK_NAME = "coordinator.lock"


class StartRefused(Exception):
    """Why this start must not go on (one line for the operator)."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take the data directory's lock for the life of this process (kept by the returned
    open file; the OS releases it when the process ends, however it ends).

    Raises:
        StartRefused: another live process holds it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        if error.errno in (errno.EAGAIN, errno.EACCES):
            raise StartRefused(
                f"data directory {data_dir} is in use by another coordinator (pid {holder}); "
                "stop it first, or start this one with another --data-dir"
            ) from error
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


#: The API front's directory in the data directory: its runtime's socket and pid file
#: (``api/front/runtime_process.py``).
RUN_DIR = "run"
#: Where the API front records its job runtime's pid.
RUNTIME_PID_FILE = Path(RUN_DIR) / "runtime.pid"
RUNTIME_MODULE = "quantum_mesh.api.front.runtime_main"
#: Seconds a start waits for the job runtime of a front that died to end.
PREVIOUS_RUNTIME_WAIT_S = 30.0


def wait_for_previous_runtime(
    data_dir: Path, *, timeout_s: float = PREVIOUS_RUNTIME_WAIT_S
) -> None:
    """After a crash of an API front (call it holding the data directory's lock), wait for
    its job runtime, which the kernel kills with it, to be gone: until then it holds the
    libp2p port and the database.

    Raises:
        StartRefused: it is still running after ``timeout_s``.
    """
    try:
        pid = int((data_dir / RUNTIME_PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout_s
    while _is_runtime(pid):
        if time.monotonic() > deadline:
            raise StartRefused(
                f"the job runtime of a previous coordinator (pid {pid}) is still running; "
                "stop it first"
            )
        time.sleep(0.05)


def _is_runtime(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return RUNTIME_MODULE.encode() in command and state != "Z"


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Bind and release each named TCP port (0 = any, skipped), then listen, so that
    another live listener on it is found even where SO_REUSEADDR would allow the bind.

    Raises:
        StartRefused: a port is taken (or cannot be bound on ``host``).
    """
    for what, port in ports.items():
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As the servers themselves bind: connections of a process that just died
            # (TIME_WAIT) must not count as "in use", only a live listener does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                probe.listen(1)
            except OSError as error:
                reason = "is in use" if error.errno == errno.EADDRINUSE else f"failed: {error}"
                setting = {"HTTP": "--port / QMESH_PORT", "libp2p": "--p2p-port / QMESH_P2P_PORT"}
                hint = setting.get(what, "its setting")
                raise StartRefused(
                    f"{what} port {host}:{port} {reason}; choose another with {hint}"
                ) from error


def default_node_key(name: str) -> Path:
    """Where a standalone node keeps its key (and, beside it, its peer log) when no
    ``--key-file`` is given: ``$QMESH_NODE_DATA_DIR``, else the user's data directory
    (``$XDG_DATA_HOME/qmesh/nodes/<name>``, ``~/.local/share/…``): never the current
    directory, which is often a checkout."""
    base = os.environ.get("QMESH_NODE_DATA_DIR")
    if base:
        root = Path(base).expanduser()
    else:
        data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        root = Path(data_home).expanduser() / "qmesh" / "nodes" / name
    return root / "node.key"
