"""A MeshPort that records invocation latency and outcome in the Prometheus metrics."""

from __future__ import annotations

import time
from typing import Any

from quantum_mesh.control.ports import MeshPort
from quantum_mesh.observability import metrics


class InstrumentedMesh:
    def __init__(self, inner: MeshPort) -> None:
        self.inner = inner

    async def invoke(
        self,
        peer_id: str,
        method: str,
        params: dict[str, Any],
        *,
        timeout: float,
        addrs: list[str] | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        ok = False
        try:
            result = await self.inner.invoke(peer_id, method, params, timeout=timeout, addrs=addrs)
            ok = True
            return result
        finally:
            metrics.mesh_invoke(method, time.perf_counter() - started, ok)

    async def ping(self, peer_id: str, *, timeout: float = 5.0) -> float:
        return await self.inner.ping(peer_id, timeout=timeout)
