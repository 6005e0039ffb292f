"""The narrow interfaces the control plane needs from the execution plane."""

from __future__ import annotations

from typing import Any, Protocol


class MeshPort(Protocol):
    """What the control plane asks of the mesh (implemented by ``mesh.bridge.MeshBridge``)."""

    async def invoke(
        self,
        peer_id: str,
        method: str,
        params: dict[str, Any],
        *,
        timeout: float,
        addrs: list[str] | None = None,
    ) -> dict[str, Any]: ...

    async def ping(self, peer_id: str, *, timeout: float = 5.0) -> float: ...
