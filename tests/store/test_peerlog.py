"""The fsync'd JSONL peer log: durability, rotation, filters, torn lines, threads."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from quantum_mesh.store import peerlog
from quantum_mesh.store.peerlog import PeerLog, format_entries

PEER = "12D3KooWCoordinatorxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"


def test_append_writes_one_fsynced_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(peerlog.os, "fsync", counting_fsync)
    log = PeerLog(tmp_path / "coord.jsonl", peer_id=PEER)
    entry = log.append("job.status", job_id="j1", status="QUEUED", attempt=1)
    log.append("job.status", job_id="j1", status="COMPILING")
    log.close()

    lines = (tmp_path / "coord.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len(synced) >= 2  # every append fsyncs before returning
    first = json.loads(lines[0])
    assert first == entry
    assert list(first)[:3] == ["ts", "peer", "event"]
    assert first["peer"] == PEER and first["event"] == "job.status" and first["attempt"] == 1
    assert datetime.fromisoformat(first["ts"]).tzinfo is not None
    with pytest.raises(ValueError, match="reserved"):
        log.append("x", ts="now")


def test_rotation_keeps_backups_in_order(tmp_path: Path) -> None:
    path = tmp_path / "node.jsonl"
    log = PeerLog(path, max_bytes=400, backups=2, peer_id="p")
    for i in range(40):
        log.append("tick", i=i)
    log.close()
    assert path.exists() and (tmp_path / "node.jsonl.1").exists()
    assert (tmp_path / "node.jsonl.2").exists() and not (tmp_path / "node.jsonl.3").exists()
    assert all(p.stat().st_size <= 400 for p in tmp_path.iterdir())
    kept = [e["i"] for e in PeerLog.read(path)]
    assert kept == list(range(kept[0], 40)) and kept[0] > 0  # oldest dropped, order intact


def test_filters_and_merge(tmp_path: Path) -> None:
    coord = PeerLog(tmp_path / "coord.jsonl", peer_id=PEER)
    node = PeerLog(tmp_path / "node.jsonl", peer_id="12D3KooWNodeA")
    coord.append("invoke.sent", job_id="j1", fragment_id="f0")
    node.append("invoke.received", job_id="j1", fragment_id="f0")
    node.append("invoke.done", job_id="j1", fragment_id="f0")
    middle = datetime.now(UTC)
    coord.append("reservation.committed", job_id="j2")
    for log in (coord, node):
        log.close()
    paths = [tmp_path / "coord.jsonl", tmp_path / "node.jsonl"]

    merged = list(PeerLog.read(paths))
    assert [e["event"] for e in merged] == [
        "invoke.sent",
        "invoke.received",
        "invoke.done",
        "reservation.committed",
    ]
    assert [e["event"] for e in PeerLog.read(paths, job_id="j2")] == ["reservation.committed"]
    assert len(list(PeerLog.read(paths, peer="12D3KooWNode"))) == 2
    assert len(list(PeerLog.read(paths, event="invoke.*"))) == 3
    assert len(list(PeerLog.read(paths, event="invoke.done"))) == 1
    assert [e["job_id"] for e in PeerLog.read(paths, since=middle)] == ["j2"]
    assert len(list(PeerLog.read(paths, until=middle.isoformat()))) == 3
    future = datetime.now(UTC) + timedelta(days=1)
    assert list(PeerLog.read(paths, since=future)) == []
    with pytest.raises(ValueError):
        list(PeerLog.read(paths, since="yesterday"))

    text = format_entries(merged)
    assert len(text.splitlines()) == 4
    assert "invoke.sent" in text and "job_id=j1" in text and "fragment_id=f0" in text


def test_torn_last_line_is_skipped_and_not_glued_to_the_next(tmp_path: Path) -> None:
    path = tmp_path / "node.jsonl"
    log = PeerLog(path, peer_id="p")
    log.append("ok", n=1)
    log.close()
    with open(path, "ab") as f:  # a crash in the middle of a write
        f.write(b'{"ts": "2026-01-01T00:00:00+00:00", "peer": "p", "ev')
    assert [e["n"] for e in PeerLog.read(path)] == [1]

    reopened = PeerLog(path, peer_id="p")
    reopened.append("ok", n=2)
    reopened.close()
    assert [e["n"] for e in PeerLog.read(path)] == [1, 2]


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "busy.jsonl"
    log = PeerLog(path, max_bytes=4000, backups=50, peer_id="p")

    def writer(t: int) -> None:
        for i in range(25):
            log.append("tick", thread=t, i=i, pad="x" * 40)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    log.close()
    entries = list(PeerLog.read(path))
    assert len(entries) == 100
    for t in range(4):
        assert [e["i"] for e in entries if e["thread"] == t] == list(range(25))
