"""Feeds control-plane transitions into the coordinator's fsync'd JSONL peer log.

The writes run on one dedicated thread, off the event loop, in submission order, one fsync
per batch (``PeerLogWriter``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantum_mesh.store.peerlog import PeerLog, PeerLogWriter


class Journal:
    def __init__(self, path: Path | None = None, *, peer_id: str | None = None) -> None:
        self._writer = PeerLogWriter(PeerLog(path, peer_id=peer_id) if path is not None else None)

    def record(self, event: str, **fields: Any) -> None:
        self._writer.record(event, **fields)

    def close(self) -> None:
        self._writer.close()


NULL_JOURNAL = Journal()
