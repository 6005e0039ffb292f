"""Feeds control-plane transitions into the coordinator's fsync'd JSONL peer log.

The fsync runs on one dedicated thread, off the event loop, in submission order.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from quantum_mesh.logs import get_logger
from quantum_mesh.store.peerlog import PeerLog

log = get_logger(__name__)


class Journal:
    def __init__(self, path: Path | None = None, *, peer_id: str | None = None) -> None:
        self._log = PeerLog(path, peer_id=peer_id) if path is not None else None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peerlog")

    def record(self, event: str, **fields: Any) -> None:
        if self._log is None:
            return
        self._writer.submit(self._append, event, fields)

    def _append(self, event: str, fields: dict[str, Any]) -> None:
        try:
            assert self._log is not None
            self._log.append(event, **fields)
        except Exception:
            log.exception("peerlog.append_failed", event_name=event)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        if self._log is not None:
            self._log.close()


NULL_JOURNAL = Journal()
