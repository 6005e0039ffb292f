"""The embedded MongoDB-wire document server, supervised as a child process.

With no ``QMESH_MONGO_URL`` the coordinator runs SecantusDB (``secantusd-py``, installed in the
same virtualenv) under ``--data-dir``. SecantusDB is GPL-2.0, so it is only ever *run* as a
separate process, never imported. The child is started with plain ``subprocess.Popen`` and
polled, not awaited through an asyncio transport, so it does not die with the event loop that
started it (test fixtures start it from a short-lived loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from quantum_mesh.logs import get_logger
from quantum_mesh.procutil import die_with_parent, stop_child

log = get_logger(__name__)

EXECUTABLE = "secantusd-py"
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
KILL_WAIT_S = 10.0
POLL_S = 0.1
PING_TIMEOUT_MS = 500
WATCHDOG_POLL_S = 0.5
RESTART_BACKOFF_MIN_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
#: A child that stayed up this long resets the restart backoff.
HEALTHY_AFTER_S = 60.0
#: Attempts to start on a port picked by us (another process may take it first).
PORT_ATTEMPTS = 3
LOG_ROTATE_BYTES = 5_000_000


class DocServerError(RuntimeError):
    """The document server could not be started or is not configured."""


def find_executable() -> Path:
    """``secantusd-py`` next to the running interpreter (the same venv), else on ``PATH``."""
    beside = Path(sys.executable).parent / EXECUTABLE
    if beside.exists():
        return beside
    found = shutil.which(EXECUTABLE)
    if found is None:
        raise DocServerError(
            f"{EXECUTABLE} is not installed (pip install 'quantum-mesh[embedded-docs]') "
            "and QMESH_MONGO_URL is not set"
        )
    return Path(found)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedDocServer:
    """Starts, pings, stops and (optionally) restarts one ``secantusd-py`` process.

    The port is fixed after the first start, so the URL stays valid across watchdog restarts.
    """

    def __init__(
        self,
        *,
        storage_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        watchdog: bool = True,
        ready_timeout_s: float = READY_TIMEOUT_S,
        stop_grace_s: float = STOP_GRACE_S,
        executable: Path | None = None,
        sync_on_commit: bool = False,
    ) -> None:
        self.storage_dir = Path(storage_dir)
        self.host = host
        self._port = port
        self.watchdog = watchdog
        self.ready_timeout_s = ready_timeout_s
        self.stop_grace_s = stop_grace_s
        self._executable = executable
        # Off by default: without it a kill -9 can lose the last few hundred ms of writes, but
        # the log is sequential, so the projection checkpoint is lost with the data it covers
        # and the projector simply replays from Postgres.
        self.sync_on_commit = sync_on_commit
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    # --- public API ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if not self._port:
            raise DocServerError("The document server has not been started")
        return f"mongodb://{self.host}:{self._port}/"

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def start(self) -> str:
        """Launch the server, wait (bounded) until it answers a ping, and return its URL.

        Raises:
            DocServerError: the executable is missing or the server did not become ready.
        """
        if self.is_running():
            return self.url
        self._stopping = False
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self._kill_orphan()
        pick = self._port == 0
        last_error: DocServerError | None = None
        for _ in range(PORT_ATTEMPTS if pick else 1):
            if pick:
                self._port = _free_port(self.host)
            try:
                await self._spawn_and_wait()
            except DocServerError as error:
                last_error = error
                if pick:
                    self._port = 0
                continue
            break
        else:
            assert last_error is not None
            raise last_error
        if self.watchdog and (self._watchdog_task is None or self._watchdog_task.done()):
            self._watchdog_task = asyncio.get_running_loop().create_task(
                self._watch(), name="docserver-watchdog"
            )
        log.info("docserver.started", url=self.url, pid=self.pid)
        return self.url

    async def stop(self, *, grace_s: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` (default ``stop_grace_s``); no restart."""
        self._stopping = True
        task, self._watchdog_task = self._watchdog_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._terminate(self.stop_grace_s if grace_s is None else grace_s)
        self._pidfile.unlink(missing_ok=True)
        log.info("docserver.stopped", url=self.url if self._port else None)

    # --- process handling ------------------------------------------------------------------
    @property
    def _data_path(self) -> Path:
        return self.storage_dir / "db"

    @property
    def _pidfile(self) -> Path:
        return self.storage_dir / "secantusd.pid"

    @property
    def _logfile(self) -> Path:
        return self.storage_dir / "secantusd.log"

    async def _spawn_and_wait(self) -> None:
        exe = self._executable or find_executable()
        self._data_path.mkdir(parents=True, exist_ok=True)
        if self._logfile.exists() and self._logfile.stat().st_size > LOG_ROTATE_BYTES:
            self._logfile.replace(self._logfile.with_suffix(".log.1"))
        args = [
            str(exe),
            "--host",
            self.host,
            "--port",
            str(self._port),
            "--storage-path",
            str(self._data_path),
            "--log-level",
            "WARNING",
        ]
        if self.sync_on_commit:
            args.append("--sync-on-commit")
        # Forked from the event loop's thread (Popen returns in milliseconds) so that the
        # parent-death signal below is tied to a thread that lives as long as the process.
        self._proc = self._popen(args)
        try:
            await self._wait_ready()
        except DocServerError:
            await self._terminate(0.0)
            raise

    def _popen(self, args: list[str]) -> subprocess.Popen[bytes]:
        with open(self._logfile, "ab") as out:
            # Own session: a Ctrl-C in the terminal reaches the coordinator, which stops the
            # child in order, instead of the child dying first and the watchdog restarting it.
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.storage_dir,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        self._pidfile.write_text(str(proc.pid))
        return proc

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            self.url,
            serverSelectionTimeoutMS=PING_TIMEOUT_MS,
            connectTimeoutMS=PING_TIMEOUT_MS,
            directConnection=True,
        )
        try:
            while time.monotonic() < deadline:
                if not self.is_running():
                    raise DocServerError(
                        f"{EXECUTABLE} exited with code {self._exit_code()} before it was ready: "
                        f"{self._log_tail()}"
                    )
                try:
                    await client.admin.command("ping")
                    return
                except PyMongoError:
                    await asyncio.sleep(POLL_S)
        finally:
            await client.close()
        raise DocServerError(
            f"{EXECUTABLE} did not answer a ping within {self.ready_timeout_s:.0f} s: "
            f"{self._log_tail()}"
        )

    async def _terminate(self, grace_s: float) -> None:
        proc = self._proc
        if proc is not None and await stop_child(proc, grace_s, kill_wait_s=KILL_WAIT_S):
            log.warning("docserver.kill", pid=proc.pid, grace_s=grace_s)

    def _exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self._logfile.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def _kill_orphan(self) -> None:
        """Kill a server left running on our storage by a coordinator that was SIGKILLed."""
        try:
            pid = int(self._pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            return
        if EXECUTABLE in cmdline and str(self._data_path) in cmdline:
            log.warning("docserver.orphan_killed", pid=pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(POLL_S)

    async def _watch(self) -> None:
        """Restart the child when it dies, with exponential backoff capped at 30 s."""
        backoff = RESTART_BACKOFF_MIN_S
        up_since = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(WATCHDOG_POLL_S)
            if self._stopping or self.is_running():
                if time.monotonic() - up_since > HEALTHY_AFTER_S:
                    backoff = RESTART_BACKOFF_MIN_S
                continue
            log.warning("docserver.died", code=self._exit_code(), retry_in_s=backoff)
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            try:
                await self._spawn_and_wait()
            except (DocServerError, OSError) as error:
                log.error("docserver.restart_failed", error=str(error))
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
                continue
            self.restarts += 1
            up_since = time.monotonic()
            # A child that keeps dying right after start must not be restarted in a hot loop.
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
            log.info("docserver.restarted", url=self.url, restarts=self.restarts)
