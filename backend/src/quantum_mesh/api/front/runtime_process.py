"""Starts, watches and stops the job runtime: the whole coordinator app
(``create_app(behind_front=True)``) in a child process, serving on a Unix socket."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from quantum_mesh.config import Settings
from quantum_mesh.logs import get_logger
from quantum_mesh.procutil import die_with_parent, stop_child
from quantum_mesh.startup import RUN_DIR, RUNTIME_MODULE, RUNTIME_PID_FILE

log = get_logger(__name__)

#: Seconds the runtime has to stop (its nodes, its writer) before it is killed.
STOP_GRACE_S = 30.0
READY_POLL_S = 0.1


def runtime_socket(settings: Settings) -> Path:
    """The runtime's socket, in a directory only this user can enter (uvicorn makes the
    socket itself world-writable)."""
    run_dir = settings.data_dir / RUN_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o700)
    return run_dir / "runtime.sock"


class RuntimeProcess:
    def __init__(self, settings: Settings, socket_path: Path) -> None:
        self.settings = settings
        self.socket_path = socket_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    def launch(self) -> None:
        """Start the runtime process (without waiting for it). The CLI calls this before it
        imports the front's own modules, so that both processes import at once; call it
        from the thread that runs the front's event loop (the death signal follows it)."""
        if self.proc is not None:
            return
        self.socket_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                RUNTIME_MODULE,
                "--socket",
                str(self.socket_path),
            ],
            # SIGKILL, as the coordinator itself would be: a front that crashed is restarted
            # by its supervisor, and a runtime still stopping would hold the libp2p port.
            # What the runtime committed stays; its unfinished jobs recover at the next start.
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        # A later start waits for this process to be gone (startup.wait_for_previous_runtime).
        (self.settings.data_dir / RUNTIME_PID_FILE).write_text(f"{self.proc.pid}\n")
        log.info("front.runtime_started", pid=self.proc.pid, socket=str(self.socket_path))

    async def start(self, on_exit: Callable[[int], None]) -> None:
        """Start the runtime (unless launched already) and return once it answers
        ``/health``. ``on_exit`` is called with the exit code if the runtime ends without
        being asked to."""
        self.launch()
        await self._wait_ready(self.settings.api_front_start_timeout_s)
        self._watch = asyncio.create_task(self._watch_exit(on_exit), name="runtime-watch")

    async def _wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
        async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise RuntimeError(f"the job runtime exited with code {code} while starting")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the job runtime did not answer within {timeout_s:.0f} s")
                if self.socket_path.exists():
                    try:
                        if (await client.get("/health", timeout=5.0)).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                await asyncio.sleep(READY_POLL_S)

    async def _watch_exit(self, on_exit: Callable[[int], None]) -> None:
        assert self.proc is not None
        code = await asyncio.to_thread(self.proc.wait)
        if not self._stopping:
            log.error("front.runtime_exited", pid=self.proc.pid, code=code)
            on_exit(code)

    async def stop(self) -> None:
        self._stopping = True
        if self.proc is not None:
            killed = await stop_child(self.proc, STOP_GRACE_S, kill_wait_s=5.0)
            log.info("front.runtime_stopped", pid=self.proc.pid, killed=killed)
        if self._watch is not None:
            await asyncio.gather(self._watch, return_exceptions=True)
