"""Embedded service nodes: child processes of the coordinator, restarted when they crash.

Each child is a real ``python -m quantum_mesh.node.main`` process (its own GIL, its own Trio
loop and worker pool), exactly what an operator runs standalone. Key files are created up
front, so the coordinator knows - and can enroll - the peer IDs before any child starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from quantum_mesh.mesh.identity import peer_id_from_key_file
from quantum_mesh.procutil import die_with_parent

logger = logging.getLogger(__name__)

#: Restart backoff: 0.5 s, 1 s, 2 s, ... capped; reset once a child has run this long.
RESTART_BASE_S = 0.5
RESTART_MAX_S = 30.0
STABLE_UPTIME_S = 60.0
#: How long ``stop`` waits after SIGTERM before SIGKILL.
STOP_GRACE_S = 5.0
#: Poll interval of ``wait_ready``.
READY_POLL_S = 0.05


@dataclass(slots=True)
class _Child:
    index: int
    peer_id: str
    key_file: Path
    log_file: Path
    ready_file: Path
    noise_level: float
    name: str = ""
    #: Started off the mesh, joining on SIGUSR1 (the spare for ``node_join``).
    join_on_signal: bool = False
    #: Dial this address instead of the coordinator's own (a relay on its link).
    bootstrap: str = ""
    #: Runs the node inside something, e.g. ``ip netns exec NS`` (a link scenario's node).
    prefix: list[str] = field(default_factory=list)
    #: Environment of this child over the supervisor's.
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    failures: int = 0
    monitor: asyncio.Task[None] | None = None


class NodeSupervisor:
    """Runs ``count`` node processes under ``data_dir/nodes`` (keys, logs, ready files)."""

    def __init__(
        self,
        *,
        count: int,
        data_dir: Path,
        bootstrap_addr: str,
        workers: int = 1,
        blas_threads: int = 1,
        noise_level: float = 0.0,
        fidelity: float = 0.99,
        nice: int = 0,
        noise_levels: list[float] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Every child gets ``workers``, ``blas_threads``, ``noise_level`` and the ``fidelity``
        it advertises (the ``QMESH_NODE_*`` settings, as a standalone ``qmesh node`` takes
        them); ``noise_levels`` gives each child its own noise level instead. Children run
        ``nice`` steps below this process (``QMESH_EMBEDDED_NODE_NICE``)."""
        if noise_levels is not None and len(noise_levels) != count:
            raise ValueError(f"noise_levels has {len(noise_levels)} entries for {count} nodes")
        self._dir = Path(data_dir) / "nodes"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._bootstrap = bootstrap_addr
        self._workers = workers
        self._blas_threads = blas_threads
        self._noise_level = noise_level
        self._fidelity = fidelity
        self._nice = nice
        self._env = dict(env or {})
        self._stopping = False
        self._children: list[_Child] = []
        for i in range(count):
            key_file = self._dir / f"node-{i}.key"
            self._children.append(
                _Child(
                    index=i,
                    peer_id=peer_id_from_key_file(key_file),
                    key_file=key_file,
                    log_file=self._dir / f"node-{i}.log",
                    ready_file=self._dir / f"node-{i}.ready.json",
                    noise_level=noise_levels[i] if noise_levels else noise_level,
                    name=f"node-{i}",
                )
            )
        self.peer_ids: list[str] = [c.peer_id for c in self._children]
        self.restarts: dict[str, int] = dict.fromkeys(self.peer_ids, 0)
        self._spare: _Child | None = None

    # --- the spare: a node that joins mid-run (benchmarks' node_join) -----------------------

    @property
    def spare_peer_id(self) -> str:
        """The spare's peer ID (its key is made on first use, like the others')."""
        if self._spare is None:
            key_file = self._dir / "node-join.key"
            self._spare = _Child(
                index=len(self._children),
                peer_id=peer_id_from_key_file(key_file),
                key_file=key_file,
                log_file=self._dir / "node-join.log",
                ready_file=self._dir / "node-join.ready.json",
                noise_level=self._noise_level,
                name="node-join",
                join_on_signal=True,
            )
        return self._spare.peer_id

    @property
    def bootstrap_addr(self) -> str:
        return self._bootstrap

    async def start_spare(
        self,
        *,
        within_s: float,
        bootstrap: str | None = None,
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        """Start the spare, warm but off the mesh, and wait until it serves; it will dial
        ``bootstrap`` (default: the coordinator) when told to join. ``prefix`` runs it inside
        something (``ip netns exec NS``: its own network namespace), with ``env`` over the
        usual environment. Not restarted when it exits: it lives for one run."""
        peer_id = self.spare_peer_id
        assert self._spare is not None
        await self.stop_spare()
        self._spare.bootstrap = bootstrap or ""
        self._spare.prefix = list(prefix or [])
        self._spare.env = dict(env or {})
        await self._spawn(self._spare)
        deadline = time.monotonic() + within_s
        while not self._spare.ready_file.exists():
            if time.monotonic() > deadline or self._spare.process is None:
                raise TimeoutError(f"the spare node was not ready within {within_s} s")
            if self._spare.process.returncode is not None:
                raise RuntimeError(f"the spare node exited with {self._spare.process.returncode}")
            await asyncio.sleep(READY_POLL_S)
        return peer_id

    def spare_running(self) -> bool:
        process = self._spare.process if self._spare else None
        return process is not None and process.returncode is None

    def join_spare(self) -> bool:
        """Tell the running spare to dial the coordinator now (SIGUSR1)."""
        process = self._spare.process if self._spare else None
        if process is None or process.returncode is not None:
            return False
        process.send_signal(signal.SIGUSR1)
        return True

    async def stop_spare(self) -> None:
        """Stop the spare (SIGTERM: it drains and says so), if it runs."""
        process = self._spare.process if self._spare else None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def pids(self) -> dict[str, int | None]:
        """Current OS process id of each node (None while it is down)."""
        return {
            c.peer_id: c.process.pid if c.process and c.process.returncode is None else None
            for c in self._children
        }

    def kill(self, peer_id: str) -> bool:
        """SIGKILL the node ``peer_id`` as a crash would; its monitor restarts it. False when
        it is not one of ours or is down already."""
        for child in self._children:
            if child.peer_id == peer_id and child.process and child.process.returncode is None:
                child.process.kill()
                return True
        return False

    async def start(self) -> None:
        self._stopping = False
        for child in self._children:
            await self._spawn(child)
            child.monitor = asyncio.create_task(
                self._monitor(child), name=f"node-supervisor-{child.index}"
            )

    async def wait_ready(self, *, within_s: float) -> None:
        """Wait until every child has written its ready file (it listens and serves).

        Raises:
            TimeoutError: not all ready within ``within_s``.
        """
        deadline = time.monotonic() + within_s
        while not all(c.ready_file.exists() for c in self._children):
            if time.monotonic() > deadline:
                missing = [c.index for c in self._children if not c.ready_file.exists()]
                raise TimeoutError(f"nodes {missing} not ready within {within_s} s")
            await asyncio.sleep(READY_POLL_S)

    async def stop(self) -> None:
        """SIGTERM every child, SIGKILL those still running after the grace period."""
        self._stopping = True
        await self.stop_spare()
        for child in self._children:
            if child.monitor is not None:
                child.monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await child.monitor
                child.monitor = None
        running = [c.process for c in self._children if c.process and c.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if running:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(p.wait()) for p in running], timeout=STOP_GRACE_S
            )
            for process in running:
                if process.returncode is None:
                    logger.warning("node pid %s ignored SIGTERM; killing it", process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            for task in pending:
                task.cancel()

    def _command(self, child: _Child) -> list[str]:
        return [
            *child.prefix,
            sys.executable,
            "-m",
            "quantum_mesh.node.main",
            "--bootstrap",
            child.bootstrap or self._bootstrap,
            "--key-file",
            str(child.key_file),
            "--p2p-port",
            "0",
            "--name",
            child.name or f"node-{child.index}",
            "--workers",
            str(self._workers),
            "--blas-threads",
            str(self._blas_threads),
            "--noise-level",
            str(child.noise_level),
            "--fidelity",
            str(self._fidelity),
            "--nice",
            str(self._nice),
            "--ready-file",
            str(child.ready_file),
            "--parent-pid",
            str(os.getpid()),
            *(["--join-on-signal"] if child.join_on_signal else []),
        ]

    async def _spawn(self, child: _Child) -> None:
        child.ready_file.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self._env, **child.env}
        with child.log_file.open("ab") as log:
            child.process = await asyncio.create_subprocess_exec(
                *self._command(child),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                preexec_fn=die_with_parent(),
            )
        logger.info("started node-%s (%s) as pid %s", child.index, child.peer_id, child.process.pid)

    async def _monitor(self, child: _Child) -> None:
        """Restart ``child`` whenever it exits on its own, with bounded exponential backoff."""
        while not self._stopping and child.process is not None:
            started = time.monotonic()
            code = await child.process.wait()
            if self._stopping:
                return
            if time.monotonic() - started > STABLE_UPTIME_S:
                child.failures = 0
            delay = min(RESTART_BASE_S * 2**child.failures, RESTART_MAX_S)
            child.failures += 1
            logger.warning(
                "node-%s exited with %s; restarting in %.1f s (log: %s)",
                child.index,
                code,
                delay,
                child.log_file,
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            await self._spawn(child)
            self.restarts[child.peer_id] += 1
