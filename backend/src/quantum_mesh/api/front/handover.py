"""Hands journalled jobs over to the runtime, in order, and keeps the runtime's load figures
that the front's admission control reads.

One batch is in flight at a time: the runtime writes a batch in one transaction, and
everything accepted while it runs goes in the next. Between batches (and at least every
``REFRESH_S``) the answer also carries the runtime's unfinished jobs, its write backlog and
its completion rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from quantum_mesh.api.front.forwarding import INTAKE_PATH
from quantum_mesh.api.front.journal import IntakeJournal
from quantum_mesh.control.intake import AcceptedJob, IntakeBatch, IntakeReport
from quantum_mesh.logs import get_logger

log = get_logger(__name__)

#: Most jobs in one hand-over.
MAX_BATCH = 512
#: Longest time between two load reports from the runtime while nothing is handed over.
REFRESH_S = 0.25
#: Pause before handing a batch over again after the runtime did not take it.
RETRY_S = 0.2


class Handover:
    def __init__(self, client: httpx.AsyncClient, journal: IntakeJournal) -> None:
        self.client = client
        self.journal = journal
        self._queue: list[AcceptedJob] = []
        self._wake = asyncio.Event()
        self._advanced = asyncio.Event()
        #: The highest seq the runtime has written (every lower one too).
        self.handed_over_seq = 0
        #: The runtime's figures as of its last answer.
        self.runtime_active = 0
        self.write_backlog = 0
        self.completed_per_s = 0.0
        #: Submits the front refused since the last hand-over (the runtime counts them).
        self.refused = 0
        #: When the runtime last answered (``time.monotonic``).
        self.answered_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Jobs accepted and not yet written by the runtime."""
        return len(self._queue)

    def hand_over(self, entry: AcceptedJob) -> None:
        self._queue.append(entry)
        self._wake.set()

    async def caught_up(self, seq: int) -> None:
        """Returns once the runtime has written every job up to ``seq``: a request forwarded
        after a job's 202 sees that job."""
        while self.handed_over_seq < seq:
            await self._advanced.wait()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="intake-handover")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def drain(self, timeout_s: float) -> bool:
        """Wait (bounded) until every accepted job is with the runtime."""
        try:
            await asyncio.wait_for(
                self.caught_up(self._queue[-1].seq if self._queue else 0), timeout_s
            )
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        while True:
            if not self._queue:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), REFRESH_S)
            self._wake.clear()
            batch, refused = self._queue[:MAX_BATCH], self.refused
            try:
                report = await self._send(batch, refused)
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("front.handover_retry", jobs=len(batch), error=str(exc))
                await asyncio.sleep(RETRY_S)
                continue
            del self._queue[: len(batch)]
            self.refused -= refused
            self._take(report)
            if batch:
                self.handed_over_seq = max(self.handed_over_seq, batch[-1].seq)
                self._advanced.set()
                self._advanced = asyncio.Event()
            self.journal.release(self.handed_over_seq)

    async def _send(self, batch: list[AcceptedJob], refused: int) -> IntakeReport:
        """Raises ``httpx.HTTPError``, or ``ValueError`` for an answer that is no report."""
        body = IntakeBatch(entries=batch, refused=refused)
        response = await self.client.post(
            INTAKE_PATH,
            content=body.model_dump_json(),
            headers={"content-type": "application/json"},
        )
        response.raise_for_status()
        return IntakeReport.model_validate_json(response.content)

    def _take(self, report: IntakeReport) -> None:
        self.answered_at = time.monotonic()
        self.runtime_active = report.active
        self.write_backlog = report.write_backlog
        self.completed_per_s = report.completed_per_s
