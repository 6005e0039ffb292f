"""Cost of one mesh invocation, measured side by side in one run.

Compares, for the tiny ``ping`` method:
  * over the mesh: coordinator MeshBridge -> node *subprocess* (Noise + yamux, new stream per
    call), sequential and with 8 calls in flight;
  * the same call through the node's worker pool (``echo``), which real handlers pay on top;
  * the same handler called in-process (no network, no serialisation);
  * the bridge alone: an empty asyncio -> Trio -> asyncio hop.

Run: ``.venv/bin/python bench/mesh_invoke.py [--calls 300]``. Prints ratios, not verdicts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from quantum_mesh.mesh.bridge import MeshBridge
from quantum_mesh.node.context import NodeContext
from quantum_mesh.node.handlers import ping

READY_WAIT_S = 60.0
CONCURRENCY = 8


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


async def timed_sequential(
    n: int, call: Callable[[], Awaitable[object]]
) -> tuple[list[float], float]:
    samples: list[float] = []
    started = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    return samples, n / (time.perf_counter() - started)


async def timed_concurrent(n: int, call: Callable[[], Awaitable[object]]) -> float:
    queue = list(range(n))

    async def worker() -> None:
        while queue:
            queue.pop()
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - started)


async def start_node(workdir: Path, bootstrap: str) -> tuple[asyncio.subprocess.Process, str]:
    ready = workdir / "node.ready.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quantum_mesh.node.main", "--bootstrap", bootstrap,
        "--key-file", str(workdir / "node.key"), "--ready-file", str(ready),
        "--no-preload", "--log-level", "WARNING",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + READY_WAIT_S
    while not ready.exists():
        if time.monotonic() > deadline or process.returncode is not None:
            raise RuntimeError("node did not become ready")
        await asyncio.sleep(0.05)
    return process, json.loads(ready.read_text())["peer_id"]


async def run(calls: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="qmesh-bench-"))
    bridge = MeshBridge(key_file=workdir / "coordinator.key")
    await bridge.start()
    process, peer = await start_node(workdir, bridge.listen_addrs[0])
    try:
        for _ in range(50):  # bounded: connection + worker pool warm-up
            with contextlib.suppress(Exception):
                await bridge.invoke(peer, "echo", {}, timeout=10)
                break
            await asyncio.sleep(0.1)
        for _ in range(20):
            await bridge.invoke(peer, "ping", {}, timeout=5)

        mesh, mesh_rate = await timed_sequential(
            calls, lambda: bridge.invoke(peer, "ping", {}, timeout=5)
        )
        mesh_conc_rate = await timed_concurrent(
            calls, lambda: bridge.invoke(peer, "ping", {}, timeout=5)
        )
        pool, pool_rate = await timed_sequential(
            max(20, calls // 3), lambda: bridge.invoke(peer, "echo", {}, timeout=5)
        )
        hop, hop_rate = await timed_sequential(calls * 5, bridge.hop)
        node = NodeContext(peer_id=peer, name="bench")

        async def local() -> None:
            ping({}, node)

        local_samples, local_rate = await timed_sequential(calls * 20, local)
    finally:
        process.terminate()
        await process.wait()
        await bridge.stop()

    rows = [
        ("ping over mesh (sequential)", mesh, mesh_rate),
        ("ping over mesh (8 in flight)", None, mesh_conc_rate),
        ("echo via node worker pool", pool, pool_rate),
        ("bridge hop only (asyncio->Trio->asyncio)", hop, hop_rate),
        ("ping handler in-process", local_samples, local_rate),
    ]
    print(f"{'what':44} {'median us':>10} {'p95 us':>10} {'calls/s':>10}")
    for name, samples, rate in rows:
        if samples is None:
            print(f"{name:44} {'-':>10} {'-':>10} {rate:10.0f}")
        else:
            med, p95 = summary(samples)
            print(f"{name:44} {med * 1e6:10.1f} {p95 * 1e6:10.1f} {rate:10.0f}")
    mesh_med, local_med, hop_med = summary(mesh)[0], summary(local_samples)[0], summary(hop)[0]
    print()
    print(f"mesh / in-process round trip:   {mesh_med / local_med:10.0f}x")
    print(f"bridge hop share of mesh ping:  {hop_med / mesh_med:10.1%}")
    print(f"pool echo / mesh ping:          {summary(pool)[0] / mesh_med:10.2f}x")
    print(f"8-in-flight / sequential rate:  {mesh_conc_rate / mesh_rate:10.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300, help="mesh calls per measurement")
    args = parser.parse_args()
    asyncio.run(run(max(10, min(args.calls, 5000))))


if __name__ == "__main__":
    main()
