from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from quantum_mesh.mesh.adverts import Advert
from quantum_mesh.mesh.bridge import MeshBridge

#: Bound on every wait in node tests (a cold node starts in about a second).
WAIT_S = 30.0


async def wait_for(predicate: Callable[[], Any], *, what: str, within_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out after {within_s} s waiting for {what}")


@dataclass
class Heard:
    """Everything the coordinator bridge heard, in order."""

    adverts: list[Advert] = field(default_factory=list)
    disconnected: list[str] = field(default_factory=list)

    def from_peer(self, peer_id: str) -> list[Advert]:
        return [a for a in self.adverts if a.peer_id == peer_id]


@pytest.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[tuple[MeshBridge, Heard]]:
    mesh = MeshBridge(key_file=tmp_path / "coordinator.key")
    heard = Heard()
    mesh.on_advert = heard.adverts.append
    mesh.on_peer_disconnected = heard.disconnected.append
    await mesh.start()
    try:
        yield mesh, heard
    finally:
        await mesh.stop()


@dataclass
class NodeProcess:
    process: asyncio.subprocess.Process
    peer_id: str
    listen_addrs: list[str]


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Starts ``python -m quantum_mesh.node.main`` children; kills leftovers at teardown."""
    started: list[asyncio.subprocess.Process] = []

    async def start(bootstrap: str, *args: str, name: str = "n0") -> NodeProcess:
        ready = tmp_path / f"{name}.ready.json"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "quantum_mesh.node.main",
            "--bootstrap", bootstrap,
            "--key-file", str(tmp_path / f"{name}.key"),
            "--ready-file", str(ready),
            "--name", name,
            "--no-preload",
            "--log-level", "WARNING",
            *args,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        started.append(process)
        await wait_for(
            lambda: ready.exists() or process.returncode is not None, what="node ready file"
        )
        assert process.returncode is None, "node exited during startup"
        info = json.loads(ready.read_text())
        return NodeProcess(process, info["peer_id"], info["listen_addrs"])

    yield start
    for process in started:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
