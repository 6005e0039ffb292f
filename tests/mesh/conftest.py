from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quantum_mesh.mesh.bridge import MeshBridge


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[MeshBridge]:
    mesh = MeshBridge(key_file=tmp_path / "coordinator.key")
    await mesh.start()
    try:
        yield mesh
    finally:
        await mesh.stop()
