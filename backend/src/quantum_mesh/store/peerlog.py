"""The peer log: one fsync'd JSON line per protocol, reservation or execution event.

Each coordinator and node keeps its own file. It exists to answer "what did this peer see and
when" after a crash, independently of the databases, so ``append`` returns only once the line
is on disk. Lines look like::

    {"ts": "2026-01-02T03:04:05.123456+00:00", "peer": "12D3KooW…", "event": "invoke.sent",
     "job_id": "…", "fragment_id": "f0", "node_id": "12D3KooW…"}

Files rotate by size (``peer.jsonl`` → ``peer.jsonl.1`` → ``peer.jsonl.2`` …). A crash can
leave a torn last line; readers skip any line that does not parse, and a writer that finds one
terminates it first so the next entry starts on a fresh line.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from quantum_mesh.logs import get_logger

log = get_logger(__name__)

RESERVED_KEYS = frozenset({"ts", "peer", "event"})
#: Most entries one group commit writes.
MAX_BATCH_ENTRIES = 512
_PEER_SHORT = 16


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def fsync_dir(path: Path) -> None:
    """Make a create or rename durable: fsync the directory entry, not only the file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_ts(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def rotated_files(path: Path) -> list[Path]:
    """``path`` and its rotated siblings, oldest first (``.N`` … ``.1``, then ``path``)."""
    numbered: list[tuple[int, Path]] = []
    for candidate in path.parent.glob(path.name + ".*"):
        suffix = candidate.name[len(path.name) + 1 :]
        if suffix.isdigit():
            numbered.append((int(suffix), candidate))
    files = [p for _, p in sorted(numbered, reverse=True)]
    if path.exists():
        files.append(path)
    return files


def discover_logs(directory: Path) -> list[Path]:
    """The live ``*.jsonl`` peer logs in ``directory`` (rotated siblings are found by read)."""
    return sorted(directory.glob("*.jsonl")) if directory.is_dir() else []


class PeerLogWriter:
    """Appends entries to a ``PeerLog`` on one thread, one fsync per batch (group commit).

    ``record`` never blocks its caller: under load, entries queued while a batch is being
    fsync'd go out together in the next one, so the log costs one fsync per batch, not per
    entry. The returned future resolves once the entry is on disk, for the callers whose
    answer must wait for it (a node's reservation records); others ignore it. Entries keep
    submission order. Without a log (``None``) every record is a resolved no-op.
    """

    def __init__(self, log: PeerLog | None) -> None:
        self.log = log
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any], Future[None]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def record(self, event: str, **fields: Any) -> Future[None]:
        done: Future[None] = Future()
        if self.log is None:
            done.set_result(None)
            return done
        self._ensure_thread()
        self._queue.put((event, fields, done))
        return done

    def close(self) -> None:
        """Write what is queued, stop the thread and close the file."""
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()
            self._thread = None
        if self.log is not None:
            self.log.close()

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="peerlog-writer", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while len(batch) < MAX_BATCH_ENTRIES and not self._queue.empty():
                batch.append(self._queue.get())
            entries = [b for b in batch if b is not None]
            self._write(entries)
            if len(entries) < len(batch):
                return

    def _write(self, entries: list[tuple[str, dict[str, Any], Future[None]]]) -> None:
        if not entries:
            return
        assert self.log is not None
        try:
            self.log.append_many([(event, fields) for event, fields, _ in entries])
        except Exception as error:
            log.exception("peerlog.append_failed", events=[e for e, _, _ in entries])
            for _, _, done in entries:
                done.set_exception(error)
            return
        for _, _, done in entries:
            done.set_result(None)


class PeerLog:
    """Append-only, fsync'd, size-rotated JSONL log of one peer. Safe to share across threads."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 10_000_000,
        backups: int = 5,
        peer_id: str | None = None,
    ) -> None:
        if max_bytes <= 0 or backups < 0:
            raise ValueError(f"max_bytes must be > 0 and backups >= 0, got {max_bytes}, {backups}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.peer_id = peer_id
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._size = 0

    # --- writing ---------------------------------------------------------------------------
    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one entry and fsync it before returning; returns the entry written.

        Raises:
            ValueError: a field name collides with ``ts``, ``peer`` or ``event``.
            OSError: the disk refused the write (the caller decides whether that is fatal).
        """
        return self.append_many([(event, fields)])[0]

    def append_many(self, items: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Write several entries with one fsync (group commit); durable when it returns."""
        entries: list[dict[str, Any]] = []
        for event, fields in items:
            clash = RESERVED_KEYS.intersection(fields)
            if clash:
                raise ValueError(f"Field names {sorted(clash)} are reserved in peer log entries")
            entries.append(
                {
                    "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
                    "peer": self.peer_id,
                    "event": event,
                    **fields,
                }
            )
        lines = [
            (
                json.dumps(e, ensure_ascii=False, separators=(",", ":"), default=_json_default)
                + "\n"
            ).encode()
            for e in entries
        ]
        with self._lock:
            out = self._open()
            for line in lines:
                if self._size > 0 and self._size + len(line) > self.max_bytes:
                    out.flush()
                    os.fsync(out.fileno())
                    out = self._rotate()
                out.write(line)
                self._size += len(line)
            out.flush()
            os.fsync(out.fileno())
        return entries

    async def append_async(self, event: str, **fields: Any) -> dict[str, Any]:
        """``append`` from an event loop without blocking it on the fsync."""
        return await asyncio.to_thread(self.append, event, **fields)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _open(self) -> IO[bytes]:
        if self._file is not None:
            return self._file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        out = open(self.path, "ab")  # noqa: SIM115 - held open across appends, closed in close()
        self._size = out.tell()
        if self._size > 0 and not self._ends_with_newline():
            out.write(b"\n")  # terminate a torn line left by a crash
            out.flush()
            os.fsync(out.fileno())
            self._size += 1
        if created:
            fsync_dir(self.path.parent)
        self._file = out
        return out

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def _rotate(self) -> IO[bytes]:
        assert self._file is not None
        self._file.close()
        self._file = None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            oldest = self.path.with_name(f"{self.path.name}.{self.backups}")
            oldest.unlink(missing_ok=True)
            for index in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{index}")
                if src.exists():
                    src.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        fsync_dir(self.path.parent)
        return self._open()

    # --- reading ---------------------------------------------------------------------------
    @staticmethod
    def read(
        paths: Path | str | Iterable[Path | str],
        *,
        job_id: str | None = None,
        peer: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        event: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Entries of one or more peer logs (with their rotated files), oldest first.

        Several logs are merged by timestamp. ``peer`` matches a full peer ID or a prefix;
        ``since``/``until`` bound ``ts`` inclusively; ``event`` matches exactly or, when it
        ends with ``*``, as a prefix (``invoke.*``). Lines that do not parse are skipped.
        """
        items = [paths] if isinstance(paths, Path | str) else list(paths)
        lo = _parse_ts(since) if since is not None else None
        hi = _parse_ts(until) if until is not None else None
        if (since is not None and lo is None) or (until is not None and hi is None):
            raise ValueError(f"since/until must be ISO 8601 times, got {since!r}, {until!r}")

        def keep(entry: dict[str, Any]) -> bool:
            if job_id is not None and entry.get("job_id") != job_id:
                return False
            if peer is not None and not str(entry.get("peer") or "").startswith(peer):
                return False
            if event is not None:
                name = str(entry.get("event"))
                if not (name.startswith(event[:-1]) if event.endswith("*") else name == event):
                    return False
            if lo is not None or hi is not None:
                ts = _parse_ts(entry.get("ts"))
                if ts is None or (lo is not None and ts < lo) or (hi is not None and ts > hi):
                    return False
            return True

        streams = [_entries(Path(p)) for p in items]
        merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=_sort_key)
        return (e for e in merged if keep(e))


def _sort_key(entry: dict[str, Any]) -> datetime:
    return _parse_ts(entry.get("ts")) or datetime.min.replace(tzinfo=UTC)


def _entries(path: Path) -> Iterator[dict[str, Any]]:
    skipped = 0
    for file in rotated_files(path):
        try:
            handle = open(file, "rb")  # noqa: SIM115 - generator keeps it open while iterating
        except FileNotFoundError:  # rotated away between listing and opening
            continue
        with handle:
            for raw in handle:
                try:
                    entry = json.loads(raw)
                except (UnicodeDecodeError, ValueError):
                    skipped += 1
                    continue
                if isinstance(entry, dict):
                    yield entry
                else:
                    skipped += 1
    if skipped:
        log.debug("peerlog.skipped_lines", path=str(path), lines=skipped)


def _short_peer(peer: Any) -> str:
    text = "-" if peer is None else str(peer)
    return text if len(text) <= _PEER_SHORT else f"{text[:6]}…{text[-8:]}"


def format_entries(entries: Iterable[dict[str, Any]]) -> str:
    """Human-readable lines for ``qmesh log``: time, peer, event, then ``key=value`` fields."""
    lines: list[str] = []
    for entry in entries:
        rest = " ".join(
            f"{key}={json.dumps(value, ensure_ascii=False, default=_json_default)}"
            if not isinstance(value, str)
            else f"{key}={value}"
            for key, value in entry.items()
            if key not in RESERVED_KEYS
        )
        lines.append(
            f"{entry.get('ts', '-'):<32} {_short_peer(entry.get('peer')):<15} "
            f"{entry.get('event', '-'):<24} {rest}".rstrip()
        )
    return "\n".join(lines)
