"""Real processes for end-to-end tests: a `qmesh coordinator` and standalone `qmesh node`s.

Every wait is bounded; every process is killed on exit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from quantum_mesh.startup import RUNTIME_MODULE

START_TIMEOUT_S = 90.0
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


#: Ports handed out by ``free_port`` lie below the kernel's ephemeral range (32768-60999 by
#: default). A port asked of the kernel with ``bind(0)`` comes from that range, so a child that
#: picks its own port that way (the coordinator's embedded document server, an outgoing
#: connection) can never take the port a test chose for the coordinator before it binds it.
_PORT_FLOOR = 20000
_PORT_CEILING = 32000
_next_port = _PORT_FLOOR + (os.getpid() * 7919) % (_PORT_CEILING - _PORT_FLOOR)


def free_port() -> int:
    """A port outside the ephemeral range that nothing holds now, never the same one twice."""
    global _next_port
    for _ in range(_PORT_CEILING - _PORT_FLOOR):
        port = _next_port
        _next_port = _PORT_FLOOR + (port + 1 - _PORT_FLOOR) % (_PORT_CEILING - _PORT_FLOOR)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port between {_PORT_FLOOR} and {_PORT_CEILING}")


def terminate(proc: subprocess.Popen[bytes] | None, *, grace_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``: every process a test started ends."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class LiveCoordinator:
    """`python -m quantum_mesh.cli coordinator` as a subprocess, with an HTTP client."""

    def __init__(
        self,
        data_dir: Path,
        *,
        database_url: str | None = None,
        embedded_nodes: int = 3,
        env: dict[str, str] | None = None,
        p2p_port: int | None = None,
        port: int | None = None,
        api_key: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.p2p_port = p2p_port or free_port()
        self.embedded_nodes = embedded_nodes
        # Without embedded nodes nothing is usable until a test starts its own: ready at once.
        ready_nodes = {"QMESH_MIN_READY_NODES": "0"} if embedded_nodes == 0 else {}
        self.env = {**os.environ, "QMESH_LOG_LEVEL": "INFO", **ready_nodes, **(env or {})}
        if database_url:
            self.env["QMESH_DATABASE_URL"] = database_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = f"http://127.0.0.1:{self.port}"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.base_url + "/api/v1", timeout=30.0, headers=headers)

    def start(self, *, wait_nodes: int | None = None, ready: bool = True) -> LiveCoordinator:
        """Start; wait for ``/ready`` (``ready=False``: only for ``/health``) and then for
        ``wait_nodes`` usable nodes (default: the embedded ones)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "coordinator.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "quantum_mesh.cli",
                "coordinator",
                "--port",
                str(self.port),
                "--p2p-port",
                str(self.p2p_port),
                "--embedded-nodes",
                str(self.embedded_nodes),
                "--data-dir",
                str(self.data_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        probe = "/ready" if ready else "/health"
        wait_until(
            lambda: self._answers(probe), timeout=START_TIMEOUT_S, what=f"coordinator {probe}"
        )
        if not ready:
            return self
        want = self.embedded_nodes if wait_nodes is None else wait_nodes
        if want:
            wait_until(
                lambda: self.usable_nodes() >= want,
                timeout=START_TIMEOUT_S,
                what=f"{want} usable nodes",
            )
        return self

    def _answers(self, path: str) -> bool:
        """200 on ``path`` now; raises if the coordinator process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"coordinator exited with {self.proc.returncode}: {self.log_tail()}")
        try:
            return self.http.get(path).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def mesh_pid(self) -> int:
        """The process that holds the coordinator's libp2p host and job runtime: the runtime
        child of an API front (QMESH_API_FRONT), else the coordinator process itself."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        for entry in children.read_text().split():
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if RUNTIME_MODULE.encode() in command:
                return int(entry)
        return self.proc.pid

    def usable_nodes(self) -> int:
        peers = self.http.get("/discovery/peers").json()["items"]
        return sum(1 for p in peers if p["fresh"] and p["enrollment"] == "APPROVED")

    def bootstrap_addr(self) -> str:
        return str(self.http.get("/bootstrap/libp2p").json()["listen_addrs"][0])

    def wait_job(
        self, job_id: str, *, timeout: float = 120.0, path: str = "/jobs/"
    ) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body = self.http.get(f"{path}{job_id}").json()
            return body if body["status"] in TERMINAL else None

        return wait_until(done, timeout=timeout, interval=0.25, what=f"job {job_id}")  # type: ignore[no-any-return]

    def log_tail(self, n: int = 4000) -> str:
        try:
            return (self.data_dir / "coordinator.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        terminate(self.proc)
        self.http.close()

    def restart(self) -> None:
        """Start again on the same data dir and ports (after ``kill``)."""
        self.start()

    def __enter__(self) -> LiveCoordinator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LiveNode:
    """A standalone `qmesh node` subprocess."""

    def __init__(
        self,
        data_dir: Path,
        bootstrap: str,
        *,
        name: str = "standalone",
        noise_level: float = 0.0,
        fidelity: float = 0.99,
        workers: int = 1,
        key_file: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.key_file = key_file or data_dir / f"{name}.key"
        self.ready_file = data_dir / f"{name}.ready.json"
        self.args = [
            sys.executable,
            "-m",
            "quantum_mesh.cli",
            "node",
            "--bootstrap",
            bootstrap,
            "--key-file",
            str(self.key_file),
            "--name",
            name,
            "--workers",
            str(workers),
            "--noise-level",
            str(noise_level),
            "--fidelity",
            str(fidelity),
            "--ready-file",
            str(self.ready_file),
        ]
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    def peer_id(self) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "quantum_mesh.cli", "keygen", "--key-file", str(self.key_file)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout.strip()

    def start(self) -> LiveNode:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        log = open(self.data_dir / f"{self.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.ready_file.exists, timeout=START_TIMEOUT_S, what=f"node {self.name} ready")
        return self

    def info(self) -> dict[str, Any]:
        return json.loads(self.ready_file.read_text())  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        terminate(self.proc)
