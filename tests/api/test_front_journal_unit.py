"""The API front's intake journal on a real file system: durable appends in groups, torn
lines, segments that rotate and are deleted only once their jobs are handed over."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quantum_mesh.api.front import journal as journal_module
from quantum_mesh.api.front.journal import IntakeJournal
from quantum_mesh.control.intake import AcceptedJob
from quantum_mesh.errors import Unavailable


def entry(seq: int) -> AcceptedJob:
    return AcceptedJob(
        seq=seq,
        job_id=f"00000000-0000-4000-8000-{seq:012d}",
        kind="circuit",
        request={"circuit": "OPENQASM 2.0;", "shots": seq},
        owner="local",
        accepted_at=datetime(2026, 12, 4, 12, 0, seq % 60, tzinfo=UTC),
    )


def segments_in(directory: Path) -> list[Path]:
    return sorted(directory.glob("intake-*.jsonl"))


async def test_appends_in_one_turn_share_a_write_and_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = IntakeJournal(tmp_path)
    writes: list[bytes] = []
    real_write = journal._write

    def counting(data: bytes) -> None:
        writes.append(data)
        real_write(data)

    monkeypatch.setattr(journal, "_write", counting)
    await asyncio.gather(*(journal.append(entry(seq)) for seq in range(1, 6)))
    await journal.append(entry(6))
    assert len(writes) == 2  # five submits of one turn, then one alone
    assert journal.durable_seq == 6
    assert IntakeJournal.read(tmp_path) == [entry(seq) for seq in range(1, 7)]
    journal.close()


async def test_a_torn_last_line_is_dropped_and_the_next_line_stands_alone(
    tmp_path: Path,
) -> None:
    journal = IntakeJournal(tmp_path)
    await journal.append(entry(1))
    journal.close()
    with journal.path.open("ab") as segment:
        segment.write(b'{"seq": 2, "job_id": "torn')
    assert IntakeJournal.read(tmp_path) == [entry(1)]

    # A front that starts again writes a new segment; the torn one is cut when reopened.
    reopened = IntakeJournal(tmp_path, next_seq=1)
    await reopened.append(entry(3))
    assert IntakeJournal.read(tmp_path) == [entry(1), entry(3)]
    reopened.close()


async def test_segments_rotate_and_go_only_once_handed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 1)  # every write starts a segment
    journal = IntakeJournal(tmp_path)
    for seq in range(1, 5):
        await journal.append(entry(seq))
    segments = segments_in(tmp_path)
    assert len(segments) == 4

    journal.release(2)
    assert segments_in(tmp_path) == segments[2:]
    assert IntakeJournal.read(tmp_path) == [entry(3), entry(4)]

    journal.release(4)  # all handed over: the last segment is kept, emptied
    assert segments_in(tmp_path) == segments[3:]
    assert IntakeJournal.read(tmp_path) == []
    journal.close()


async def test_nothing_is_released_while_a_write_is_pending(tmp_path: Path) -> None:
    journal = IntakeJournal(tmp_path)
    await journal.append(entry(1))
    pending = asyncio.ensure_future(journal.append(entry(2)))
    await asyncio.sleep(0)  # the append is queued, its write not yet run
    journal.release(1)
    await pending
    journal.release(1)  # seq 2 is durable and not handed over
    assert IntakeJournal.read(tmp_path) == [entry(1), entry(2)]
    journal.release(2)
    assert IntakeJournal.read(tmp_path) == []
    journal.close()


async def test_a_failed_write_refuses_the_submit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = IntakeJournal(tmp_path)

    def full_disk(_data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal, "_write", full_disk)
    with pytest.raises(Unavailable):
        await journal.append(entry(1))
    assert journal.durable_seq == 0
    journal.close()
