"""Cost of one mesh invocation, beside Ray and plain TCP, measured side by side in one run.

Compares, for a tiny call:
  * over the mesh: coordinator MeshBridge -> node *subprocess* (Noise + yamux, one long-lived
    protocol-2 channel), sequential and with 8 calls in flight;
  * a Ray 2.60 actor call and a Ray task (when the ``bench`` extra is installed:
    ``pip install -e ".[bench]"``), sequential and with 8 in flight;
  * the same call through the node's worker pool (``echo``), which real handlers pay on top;
  * the same handler called in-process (no network, no serialisation);
  * the bridge alone: an empty asyncio -> Trio -> asyncio hop;
and the round trip of a 2^20-amplitude complex128 statevector (16 MiB each way) through the
node's worker pool, beside the same bytes echoed by a plain TCP server subprocess: once as the
coordinator sends it to a node on its own host (shared memory, ``mesh/hostlocal.py``) and once
on the encrypted stream, as it travels to a node on another machine (a second bridge with
``shared_memory=False``, which the node serves via ``--allow-peer``).

Run: ``.venv/bin/python bench/mesh_invoke.py [--calls 1000]``. Prints ratios, not verdicts.
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

import numpy as np

from quantum_mesh.mesh.bridge import MeshBridge
from quantum_mesh.node.context import NodeContext
from quantum_mesh.node.handlers import ping

READY_WAIT_S = 60.0
CONCURRENCY = 8
STATE_QUBITS = 20
BULK_ROUNDS = 5

TCP_ECHO_SERVER = """
import socket, sys
srv = socket.create_server(("127.0.0.1", 0)); print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
while True:
    head = conn.recv(8, socket.MSG_WAITALL)
    if len(head) < 8: break
    n = int.from_bytes(head, "big"); buf = bytearray(n); view = memoryview(buf); got = 0
    while got < n: got += conn.recv_into(view[got:], n - got)
    conn.sendall(head); conn.sendall(buf)
"""


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


async def start_node(
    workdir: Path, bootstrap: str, *extra: str
) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    ready = workdir / "node.ready.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quantum_mesh.node.main", "--bootstrap", bootstrap,
        "--key-file", str(workdir / "node.key"), "--ready-file", str(ready),
        "--no-preload", "--log-level", "WARNING", *extra,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + READY_WAIT_S
    while not ready.exists():
        if time.monotonic() > deadline or process.returncode is not None:
            raise RuntimeError("node did not become ready")
        await asyncio.sleep(0.05)
    info = json.loads(ready.read_text())
    return process, info["peer_id"], info["listen_addrs"]


async def ray_rows(calls: int) -> list[tuple[str, list[float] | None, float]]:
    """Ray 2.60 actor and task calls, the same tiny call, measured now; [] without Ray."""
    try:
        import ray
    except ImportError:
        print("(Ray rows skipped: pip install -e '.[bench]')")
        return []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:

        @ray.remote
        class Pinger:
            def ping(self) -> dict[str, bool]:
                return {"pong": True}

        @ray.remote
        def ping_task() -> dict[str, bool]:
            return {"pong": True}

        actor = Pinger.remote()  # type: ignore[attr-defined]
        ray.get([actor.ping.remote() for _ in range(50)])
        ray.get([ping_task.remote() for _ in range(50)])

        async def actor_call() -> None:
            await actor.ping.remote()

        async def task_call() -> None:
            await ping_task.remote()

        async def measure() -> list[tuple[str, list[float] | None, float]]:
            actor_seq, actor_rate = await timed_sequential(calls, actor_call)
            actor_conc = await timed_concurrent(calls, actor_call)
            task_seq, task_rate = await timed_sequential(max(50, calls // 3), task_call)
            task_conc = await timed_concurrent(max(50, calls // 3), task_call)
            return [
                ("Ray actor call (sequential)", actor_seq, actor_rate),
                ("Ray actor call (8 in flight)", None, actor_conc),
                ("Ray task (sequential)", task_seq, task_rate),
                ("Ray task (8 in flight)", None, task_conc),
            ]

        return await measure()
    finally:
        ray.shutdown()


async def tcp_round_trip(payload: bytes, rounds: int) -> float:
    """Seconds per round trip of ``payload`` through a plain TCP echo server subprocess."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TCP_ECHO_SERVER, stdout=asyncio.subprocess.PIPE
    )
    assert server.stdout is not None
    port = int((await server.stdout.readline()).decode())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    samples: list[float] = []
    try:
        for _ in range(rounds + 1):
            started = time.perf_counter()
            writer.write(len(payload).to_bytes(8, "big") + payload)
            await writer.drain()
            head = await reader.readexactly(8)
            echoed = await reader.readexactly(int.from_bytes(head, "big"))
            samples.append(time.perf_counter() - started)
            assert len(echoed) == len(payload)
    finally:
        writer.close()
        server.kill()
        await server.wait()
    return statistics.median(samples[1:])


async def run(calls: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="qmesh-bench-"))
    bridge = MeshBridge(key_file=workdir / "coordinator.key")
    await bridge.start()
    remote_like = MeshBridge(key_file=workdir / "stream-only.key", shared_memory=False)
    await remote_like.start()
    process, peer, node_addrs = await start_node(
        workdir, bridge.listen_addrs[0], "--allow-peer", remote_like.peer_id
    )
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

        rng = np.random.default_rng(7)
        state = rng.normal(size=2**STATE_QUBITS) + 1j * rng.normal(size=2**STATE_QUBITS)
        mesh_bulk = await bulk_round_trip(bridge, peer, state)
        stream_bulk = await bulk_round_trip(remote_like, peer, state, addrs=node_addrs)
    finally:
        process.terminate()
        await process.wait()
        await bridge.stop()
        await remote_like.stop()

    tcp_bulk = await tcp_round_trip(state.tobytes(), BULK_ROUNDS)
    ray = await ray_rows(calls)
    rows = [
        ("ping over mesh (sequential)", mesh, mesh_rate),
        ("ping over mesh (8 in flight)", None, mesh_conc_rate),
        *ray,
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
    if ray:
        actor_med = summary(ray[0][1] or [])[0]
        print(f"mesh p50 / Ray actor p50:       {mesh_med / actor_med:10.2f}x  (goal <= 1)")
        print(f"mesh / Ray actor, 8 in flight:  {mesh_conc_rate / ray[1][2]:10.2f}x  (goal >= 1)")
    mib = state.nbytes / 2**20
    print()
    print(
        f"{mib:.0f} MiB statevector round trip via the worker pool: node on this host (shared "
        f"memory) {mesh_bulk * 1e3:.0f} ms, on the encrypted stream {stream_bulk * 1e3:.0f} ms, "
        f"plain TCP {tcp_bulk * 1e3:.0f} ms"
    )
    print(f"mesh throughput / loopback TCP:       {tcp_bulk / mesh_bulk:10.1%}  (goal >= 50%)")
    print(f"  the same on the encrypted stream:   {tcp_bulk / stream_bulk:10.1%}")


async def bulk_round_trip(
    bridge: MeshBridge, peer: str, state: np.ndarray, *, addrs: list[str] | None = None
) -> float:
    """Median seconds of an ``echo`` of ``state`` (the first call, which also tells the
    bridge whether the node shares its host, is not counted)."""
    samples: list[float] = []
    for _ in range(BULK_ROUNDS + 1):
        t0 = time.perf_counter()
        reply = await bridge.invoke(peer, "echo", {"state": state}, timeout=120, addrs=addrs)
        samples.append(time.perf_counter() - t0)
        assert np.array_equal(reply["params"]["state"], state)
    return statistics.median(samples[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000, help="calls per measurement")
    args = parser.parse_args()
    asyncio.run(run(max(10, min(args.calls, 5000))))


if __name__ == "__main__":
    main()
