"""Open-loop load on the circuit API: throughput, submit latency, liveness and losses per rate.

Starts a live ``qmesh coordinator`` subprocess with 3 embedded service nodes on 127.0.0.1
(embedded SQLite unless ``--database-url`` names PostgreSQL), raises the API rate limiter out
of the way (``QMESH_RATE_LIMIT_PER_MINUTE=10000000``) and warms the nodes up with a few Bell
jobs. Then, for each offered rate (submits/s):

1. **Submit window** (``--seconds``): Bell circuits (2 qubits, 256 shots, ``seed`` = i) go to
   ``POST /api/v1/circuits/submit`` *open loop*: submit i is sent at ``t0 + i/rate`` as its
   own task, whether or not earlier submits have been answered, so a slow service cannot slow
   the offered load down (no coordinated omission). Submit latency is measured from the
   *scheduled* send time to the response (like wrk2), so lag in this generator counts against
   the service rather than hiding it; the generator's own lag is reported apart (JSON
   ``gen_lag_p99_ms``, and a warning when it exceeds 10 ms). A 202/200 with a ``job_id`` is
   *accepted*; a 429 is *answered, rejected* (backpressure, not a loss); any other status, a
   transport error or a timeout (``--request-timeout``) is an *error*. Latency percentiles
   cover every submit; a timed-out submit counts with its elapsed time (a lower bound).
2. **Liveness**: ``GET /api/v1/health`` every 100 ms during the window, open loop as well.
3. **Drain**: the accepted jobs are polled until all are terminal (COMPLETED, FAILED,
   CANCELLED) or the drain deadline, ``--drain-seconds`` after the end of the window.
   ``GET /jobs`` has paging but no status filter and its items carry the full result
   (~3.5 KB per Bell job), so polling pages ``GET /jobs?kind=circuit`` (newest first) once
   over this window's jobs and afterwards only over the offset span that still holds
   unfinished ones, pausing between sweeps so that polling keeps a small duty cycle
   (``--poll-interval``, at least 4x the last sweep's time). A job's completion time is its
   ``updated_at`` once terminal. Jobs still unfinished at the deadline count as lost; they
   are then cancelled (``--no-cancel-leftovers`` keeps them running) so that one rate's
   backlog bleeds as little as possible into the next. Cancels that an overloaded service
   does not confirm within 30 s leave jobs running into the next rate: the row's note and
   JSON ``carried_over`` say how many. ``--fresh-per-rate`` avoids that altogether with a new
   coordinator (and warm-up) for every rate, at ~15 s of start-up per rate.

Per rate it prints one row:

* ``submitted`` / ``accepted`` / ``429`` / ``errors``: submit outcomes as above.
* ``p50``/``p99 ms``: submit latency; ``health p99``: ``/health`` latency in the window.
* ``done/s``: **completed jobs/s** = the number of accepted jobs that reached COMPLETED with
  ``updated_at`` inside [window start, window end + drain], divided by the time from the
  first submit to the last such completion. It includes the latency of the first and last
  job, so at low rates it sits slightly below the offered rate (50 jobs at 5/s with 0.5 s
  job latency give 50/10.3 s = 4.9/s); at high rates it is the rate the service actually
  finished work, backlog included.
* ``FAILED``: accepted jobs that ended FAILED (their distinct ``error.code`` in ``codes``).
* ``lost``: accepted jobs not terminal by the drain deadline, plus submit errors.
* ``cpu/job``: CPU milliseconds the service spent (the coordinator process, its nodes and
  their workers, the embedded document server; from ``/proc``) from the window's start to
  the end of the drain, per completed job, refusals and the drain's polling included. Less
  noisy than ``done/s`` on a shared machine, and it is what bounds ``done/s`` when the cores
  are saturated (JSON ``cpu_ms_per_job`` splits it by process).

The summary: peak completed jobs/s (and its offered rate), completed jobs/s at the highest
offered rate >= 2x the peak's offered rate and its ratio to the peak, total FAILED, total
lost, and submit p99 at 200 offered/s. Goals (the acceptance bar of the load issue):

* no collapse: completed jobs/s at >= 2x the peak's offered rate is >= 90 % of the peak;
* 0 FAILED and 0 lost jobs caused by load (429s are fine: answered and not lost);
* >= 100 Bell jobs/s sustained: the best completed jobs/s of a rate with 0 FAILED, 0 lost;
* submit p99 < 25 ms at 200 offered/s (429 answers count as answered).

The generator shares the CPUs with the coordinator and its nodes, so on a small machine the
figures include its own cost; every loop here is bounded in count and time and only talks to
127.0.0.1.

Run (about 10 s + drain per rate):

    .venv/bin/python bench/api_load.py --rates 5,10,20 --seconds 10
    .venv/bin/python bench/api_load.py --json /tmp/api_load.json   # 5,10,20,50,100,200 /s
    .venv/bin/python bench/api_load.py --fresh-per-rate --rates 5,10,20,50
    .venv/bin/python bench/api_load.py --database-url postgresql+psycopg://127.0.0.1/test

``--env KEY=VALUE`` passes settings to the coordinator, e.g. ``PYTHONPATH=/tmp/head/backend/src``
to measure another tree (a ``git archive`` of a baseline commit) with this same script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from _http import LeanPool, Response, TransportError
from _live import PARTS, ROOT, LiveCoordinator, cpu_seconds, start_coordinator

BELL = (
    'OPENQASM 2.0; include "qelib1.inc"; qreg q[2]; creg c[2]; '
    "h q[0]; cx q[0],q[1]; measure q -> c;"
)
SHOTS = 256
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
HEALTH_PATH = "/health"
HEALTH_PERIOD_S = 0.1
PAGE_LIMIT = 100  # items per GET /jobs page: small pages keep each poll short on the server
MAX_SWEEP_PAGES = 200  # bounds one full sweep (PAGE_LIMIT * MAX_SWEEP_PAGES jobs)
SPAN_PAD = 10  # extra offsets scanned on both sides of the unfinished span
CANCEL_CONCURRENCY = 8
CANCEL_BUDGET_S = 30.0
WARMUP_TIMEOUT_S = 120.0
LAG_WARN_MS = 10.0
# Log lines are grouped by message with identifiers and numbers blanked out.
LOG_NOISE = (
    (re.compile(r"\s\w+=\S+"), ""),  # structlog key=value pairs
    (re.compile(r"12D3KooW\w+"), "<peer>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<id>"),
    (re.compile(r"\b\d+(\.\d+)?\b"), "<n>"),
)
COLLAPSE_GOAL = 0.90
THROUGHPUT_GOAL = 100.0
P99_GOAL_MS = 25.0
P99_GOAL_RATE = 200.0


# --- small helpers ---------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def parse_ts(text: str | None) -> float | None:
    """ISO timestamp -> POSIX seconds; naive timestamps (SQLite) are UTC."""
    if not text:
        return None
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def error_code(response: httpx.Response | Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "no_envelope"


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def counts_text(counter: dict[str, int]) -> str:
    return ",".join(f"{k}x{v}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1]))


# --- records ---------------------------------------------------------------------------------
@dataclass
class Submit:
    index: int
    scheduled_s: float  # offset of the scheduled send from the window start
    lag_ms: float = 0.0  # actual send - scheduled send (generator lag)
    latency_ms: float = 0.0  # response - scheduled send
    status: int | None = None
    outcome: str = "error"  # accepted | rejected | error
    job_id: str | None = None
    error: str | None = None


@dataclass
class JobState:
    status: str = "UNKNOWN"
    done_s: float | None = None  # updated_at - window start, once terminal
    error_code: str | None = None
    position: int | None = None  # offset in GET /jobs?kind=circuit (newest first)


@dataclass
class RateResult:
    offered_per_s: float
    window_s: float
    drain_s: float
    submitted: int
    accepted: int
    rejected_429: int
    errors: int
    submit_errors: dict[str, int]
    submit_p50_ms: float | None
    submit_p99_ms: float | None
    submit_max_ms: float | None
    gen_lag_p99_ms: float | None
    gen_cpu_pct: float | None  # the generator's own CPU over the window, % of one core
    #: The service's CPU (coordinator, nodes, other children) from the window's start to the
    #: end of the drain, per completed job: refusals and polling included.
    cpu_ms_per_job: dict[str, float] | None
    health_probes: int
    health_errors: int
    health_p50_ms: float | None
    health_p99_ms: float | None
    completed: int
    completed_in_window: int
    failed: int
    cancelled: int
    unfinished: int
    lost: int
    failed_codes: dict[str, int]
    first_submit_s: float | None
    last_completion_s: float | None
    completed_per_s: float
    all_terminal_at_s: float | None  # last terminal updated_at (None: not all in time)
    poll_sweeps: int
    poll_requests: int
    leftovers: int  # accepted jobs still unfinished at the drain deadline
    leftover_cancels: dict[str, int]  # POST /jobs/{id}/cancel outcomes for them
    carried_over: int  # leftovers not confirmed cancelled: they overlap the next rate
    samples: dict[str, Any] = field(default_factory=dict)


# --- one rate --------------------------------------------------------------------------------
class RateRun:
    def __init__(
        self, api: str, rate: float, args: argparse.Namespace, pid: int | None = None
    ) -> None:
        self.api = api
        self.pid = pid
        self.cpu_before: dict[str, float] | None = None
        self.cpu_spent: dict[str, float] | None = None
        self.rate = rate
        self.args = args
        self.n = max(1, round(rate * args.seconds))
        self.submits: list[Submit] = [Submit(i, i / rate) for i in range(self.n)]
        self.health: list[tuple[float, float, bool]] = []  # (at_s, latency_ms, ok)
        self.jobs: dict[str, JobState] = {}
        self.t0 = 0.0
        self.t0_wall = 0.0
        self.sweeps = 0
        self.poll_requests = 0
        self.positions_valid = False
        self.leftovers: list[str] = []
        self.cancel_outcomes: Counter[str] = Counter()
        self.gen_cpu_pct: float | None = None

    def client(self, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        timeout = httpx.Timeout(self.args.request_timeout, pool=self.args.request_timeout)
        return httpx.AsyncClient(base_url=self.api, limits=limits, timeout=timeout)

    async def submit_one(self, http: LeanPool, s: Submit) -> None:
        scheduled = self.t0 + s.scheduled_s
        s.lag_ms = (time.perf_counter() - scheduled) * 1000
        body = {"circuit": BELL, "shots": SHOTS, "seed": s.index}
        try:
            async with asyncio.timeout(self.args.request_timeout):
                r = await http.post("/circuits/submit", json=body)
        except TimeoutError:
            s.error = "timeout"
        except TransportError as exc:
            s.error = type(exc).__name__
        else:
            s.status = r.status_code
            if r.status_code in (200, 202):
                try:
                    s.job_id = str(r.json()["job_id"])
                    s.outcome = "accepted"
                except (ValueError, KeyError, TypeError):
                    s.error = "no_job_id"
            elif r.status_code == 429:
                s.outcome = "rejected"
            else:
                s.error = f"http{r.status_code}:{error_code(r)}"
        finally:
            s.latency_ms = (time.perf_counter() - scheduled) * 1000

    async def probe_one(self, http: httpx.AsyncClient, at_s: float) -> None:
        scheduled = self.t0 + at_s
        ok = False
        try:
            async with asyncio.timeout(self.args.request_timeout):
                ok = (await http.get(HEALTH_PATH)).status_code == 200
        except (TimeoutError, httpx.HTTPError):
            ok = False
        self.health.append((at_s, (time.perf_counter() - scheduled) * 1000, ok))

    async def window(self) -> None:
        """Open-loop submits and health probes for ``--seconds``; then wait (bounded) for
        every submit to be answered or time out."""
        async with (
            LeanPool(self.api, self.args.max_connections) as http,
            self.client(16) as probe_http,
        ):
            self.t0 = time.perf_counter()
            self.t0_wall = time.time()
            cpu0 = time.process_time()
            if self.pid is not None:
                self.cpu_before = cpu_seconds(self.pid)
            n_probes = max(1, round(self.args.seconds / HEALTH_PERIOD_S))
            events = sorted(
                [(s.scheduled_s, 0, s.index) for s in self.submits]
                + [(k * HEALTH_PERIOD_S, 1, k) for k in range(n_probes)]
            )
            tasks: list[asyncio.Task[None]] = []
            for at_s, kind, index in events:
                delay = self.t0 + at_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                coro = (
                    self.submit_one(http, self.submits[index])
                    if kind == 0
                    else self.probe_one(probe_http, at_s)
                )
                tasks.append(asyncio.create_task(coro))
            _done, pending = await asyncio.wait(tasks, timeout=self.args.request_timeout + 5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
            spent, elapsed = time.process_time() - cpu0, time.perf_counter() - self.t0
            self.gen_cpu_pct = 100 * spent / elapsed
        for s in self.submits:
            if s.outcome == "error" and s.error is None:
                s.error = "unanswered"
        self.jobs = {s.job_id: JobState() for s in self.submits if s.job_id}

    # --- drain -------------------------------------------------------------------------------
    def _absorb(self, items: list[dict[str, Any]], offset: int) -> set[str]:
        """Record the states of this window's jobs in one page; returns the ids that were ours."""
        ours: set[str] = set()
        for k, item in enumerate(items):
            job_id = str(item.get("job_id"))
            state = self.jobs.get(job_id)
            if state is None:
                continue
            ours.add(job_id)
            state.position = offset + k
            if state.status in TERMINAL:
                continue
            state.status = str(item.get("status"))
            if state.status in TERMINAL:
                done = parse_ts(item.get("updated_at"))
                state.done_s = (
                    done - self.t0_wall if done is not None else time.perf_counter() - self.t0
                )
                err = item.get("error")
                if isinstance(err, dict) and err.get("code"):
                    state.error_code = str(err["code"])
        return ours

    async def _page(self, http: httpx.AsyncClient, offset: int, limit: int) -> dict[str, Any]:
        self.poll_requests += 1
        params: dict[str, str | int] = {"kind": "circuit", "limit": limit, "offset": offset}
        r = await http.get("/jobs", params=params)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def unfinished(self) -> dict[str, JobState]:
        return {jid: j for jid, j in self.jobs.items() if j.status not in TERMINAL}

    async def sweep(self, http: httpx.AsyncClient) -> None:
        """One look at every unfinished job of this window (see the module docstring)."""
        self.sweeps += 1
        todo = self.unfinished()
        positions = [j.position for j in todo.values() if j.position is not None]
        if self.positions_valid and len(positions) == len(todo):
            lo = max(0, min(positions) - SPAN_PAD)
            hi = max(positions) + SPAN_PAD
            seen: set[str] = set()
            offset = lo
            while offset <= hi:
                limit = min(PAGE_LIMIT, hi - offset + 1)
                seen |= self._absorb((await self._page(http, offset, limit))["items"], offset)
                offset += limit
            # Positions moved (a new circuit job appeared) if an unfinished job was not seen
            # where expected: the next sweep scans everything again.
            self.positions_valid = set(todo) <= seen
            return
        # Full sweep: this window's jobs are the newest circuit jobs, so they sit at the top.
        offset, seen_count = 0, 0
        for _ in range(MAX_SWEEP_PAGES):
            page = await self._page(http, offset, PAGE_LIMIT)
            ours = len(self._absorb(page["items"], offset))
            seen_count += ours
            offset += PAGE_LIMIT
            if not page["items"] or offset >= int(page["total"]):
                break
            if seen_count >= len(self.jobs) or (seen_count and not ours):
                break
        self.positions_valid = True

    async def drain(self) -> None:
        """Poll until every accepted job is terminal or the drain deadline; then cancel what
        is left."""
        deadline = self.t0 + self.args.seconds + self.args.drain_seconds
        drained = False
        async with self.client(2) as http:
            while self.jobs and time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    await self.sweep(http)
                except (httpx.HTTPError, ValueError, KeyError):
                    self.positions_valid = False
                if not self.unfinished():
                    drained = True
                    break
                spent = time.perf_counter() - started
                pause = max(self.args.poll_interval, 4 * spent)
                await asyncio.sleep(max(0.0, min(pause, deadline - time.perf_counter())))
            if self.jobs and not drained:
                # Last look at the deadline, so nothing counts as lost just for not being
                # polled recently (its updated_at still decides whether it was in time).
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    await self.sweep(http)
            self.leftovers = [jid for jid, j in self.jobs.items() if j.status not in TERMINAL]
            if self.leftovers and self.args.cancel_leftovers and not self.args.fresh_per_rate:
                await self.cancel(http, self.leftovers)

    async def cancel(self, http: httpx.AsyncClient, job_ids: list[str]) -> None:
        gate = asyncio.Semaphore(CANCEL_CONCURRENCY)

        async def one(job_id: str) -> None:
            async with gate:
                try:
                    r = await http.post(f"/jobs/{job_id}/cancel")
                except httpx.HTTPError as exc:
                    self.cancel_outcomes[type(exc).__name__] += 1
                else:
                    # 200 cancelled; 409 already terminal.
                    self.cancel_outcomes[str(r.status_code)] += 1

        tasks = [asyncio.create_task(one(j)) for j in job_ids]
        _done, pending = await asyncio.wait(tasks, timeout=CANCEL_BUDGET_S)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        self.cancel_outcomes["not_sent_in_budget"] += len(pending)

    # --- figures -----------------------------------------------------------------------------
    def result(self) -> RateResult:
        deadline_s = self.args.seconds + self.args.drain_seconds
        latencies = [s.latency_ms for s in self.submits]
        accepted = [s for s in self.submits if s.outcome == "accepted"]
        errors = [s for s in self.submits if s.outcome == "error"]
        in_time = [j for j in self.jobs.values() if j.done_s is not None and j.done_s <= deadline_s]
        completed = [j for j in in_time if j.status == "COMPLETED" and j.done_s is not None]
        counted = [j for j in completed if (j.done_s or 0.0) >= 0.0]
        failed = [j for j in in_time if j.status == "FAILED"]
        unfinished = len(self.jobs) - len(in_time)
        first = min((s.scheduled_s + s.lag_ms / 1000 for s in self.submits), default=None)
        last = max((j.done_s or 0.0 for j in counted), default=None)
        per_s = 0.0
        if counted and first is not None and last is not None and last > first:
            per_s = len(counted) / (last - first)
        health_lat = [lat for _, lat, _ok in self.health]  # failed probes: elapsed time
        return RateResult(
            offered_per_s=self.rate,
            window_s=self.args.seconds,
            drain_s=self.args.drain_seconds,
            submitted=len(self.submits),
            accepted=len(accepted),
            rejected_429=sum(1 for s in self.submits if s.outcome == "rejected"),
            errors=len(errors),
            submit_errors=dict(Counter(s.error or "?" for s in errors)),
            submit_p50_ms=percentile(latencies, 50),
            submit_p99_ms=percentile(latencies, 99),
            submit_max_ms=max(latencies, default=None),
            gen_lag_p99_ms=percentile([s.lag_ms for s in self.submits], 99),
            gen_cpu_pct=self.gen_cpu_pct,
            health_probes=len(self.health),
            health_errors=sum(1 for _, _, ok in self.health if not ok),
            health_p50_ms=percentile(health_lat, 50),
            health_p99_ms=percentile(health_lat, 99),
            completed=sum(1 for j in self.jobs.values() if j.status == "COMPLETED"),
            completed_in_window=len(counted),
            failed=len(failed),
            cancelled=sum(1 for j in in_time if j.status == "CANCELLED"),
            unfinished=unfinished,
            lost=unfinished + len(errors),
            failed_codes=dict(Counter(j.error_code or "?" for j in failed)),
            first_submit_s=first,
            last_completion_s=last,
            completed_per_s=per_s,
            cpu_ms_per_job=(
                {part: 1000 * spent / len(completed) for part, spent in self.cpu_spent.items()}
                if self.cpu_spent is not None and completed
                else None
            ),
            all_terminal_at_s=None
            if unfinished
            else max((j.done_s or 0.0 for j in in_time), default=None),
            poll_sweeps=self.sweeps,
            poll_requests=self.poll_requests,
            leftovers=len(self.leftovers),
            leftover_cancels=dict(self.cancel_outcomes),
            carried_over=0
            if self.args.fresh_per_rate
            else len(self.leftovers) - self.cancel_outcomes["200"] - self.cancel_outcomes["409"],
            samples={
                "submit": [
                    [round(s.scheduled_s, 4), round(s.latency_ms, 2), s.status, s.outcome, s.error]
                    for s in self.submits
                ],
                "health": [[round(a, 3), round(lat, 2), ok] for a, lat, ok in self.health],
                "jobs": [
                    [jid, j.status, None if j.done_s is None else round(j.done_s, 4), j.error_code]
                    for jid, j in self.jobs.items()
                ],
            },
        )


async def run_rate(
    api: str, rate: float, args: argparse.Namespace, pid: int | None = None
) -> RateResult:
    run = RateRun(api, rate, args, pid)
    await run.window()
    await run.drain()
    if pid is not None and run.cpu_before is not None:
        after = cpu_seconds(pid)
        run.cpu_spent = {part: after[part] - run.cpu_before[part] for part in PARTS}
    return run.result()


async def warm_up(api: str, count: int) -> list[str]:
    """A few sequential Bell jobs, so the first rate does not pay the nodes' cold start."""
    statuses: list[str] = []
    async with httpx.AsyncClient(base_url=api, timeout=30.0) as http:
        for i in range(count):
            body = {"circuit": BELL, "shots": SHOTS, "seed": i}
            job_id = (await http.post("/circuits/submit", json=body)).json()["job_id"]
            deadline = time.perf_counter() + WARMUP_TIMEOUT_S
            status = "TIMEOUT"
            while time.perf_counter() < deadline:
                job = (await http.get(f"/jobs/{job_id}")).json()
                if job["status"] in TERMINAL:
                    status = job["status"]
                    break
                await asyncio.sleep(0.2)
            statuses.append(status)
    return statuses


# --- output ----------------------------------------------------------------------------------
COLUMNS = (
    ("offered/s", 9),
    ("submitted", 9),
    ("accepted", 8),
    ("429", 5),
    ("errors", 6),
    ("p50 ms", 8),
    ("p99 ms", 8),
    ("health p99", 10),
    ("done/s", 7),
    ("FAILED", 6),
    ("lost", 5),
    ("cpu/job", 7),
)


def header() -> str:
    return " ".join(f"{name:>{width}}" for name, width in COLUMNS) + "  codes"


def row(r: RateResult) -> str:
    cells = (
        fmt(r.offered_per_s, 0),
        str(r.submitted),
        str(r.accepted),
        str(r.rejected_429),
        str(r.errors),
        fmt(r.submit_p50_ms),
        fmt(r.submit_p99_ms),
        fmt(r.health_p99_ms),
        fmt(r.completed_per_s, 2),
        str(r.failed),
        str(r.lost),
        fmt(sum(r.cpu_ms_per_job.values()) if r.cpu_ms_per_job else None),
    )
    text = " ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True))
    codes = []
    if r.failed_codes:
        codes.append("failed: " + counts_text(r.failed_codes))
    if r.submit_errors:
        codes.append("submit: " + counts_text(r.submit_errors))
    return text + ("  " + "; ".join(codes) if codes else "")


def summarize(results: list[RateResult]) -> dict[str, Any]:
    if not results:
        return {}
    peak = max(results, key=lambda r: r.completed_per_s)
    far = [r for r in results if r.offered_per_s >= 2 * peak.offered_per_s]
    high = max(far, key=lambda r: r.offered_per_s) if far else None
    ratio = (
        high.completed_per_s / peak.completed_per_s
        if high is not None and peak.completed_per_s > 0
        else None
    )
    clean = [r for r in results if r.failed == 0 and r.lost == 0]
    sustained = max((r.completed_per_s for r in clean), default=0.0)
    at_goal_rate = next((r for r in results if r.offered_per_s == P99_GOAL_RATE), None)
    p99 = at_goal_rate.submit_p99_ms if at_goal_rate else None
    total_failed = sum(r.failed for r in results)
    total_lost = sum(r.lost for r in results)

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    return {
        "peak_completed_per_s": peak.completed_per_s,
        "peak_offered_per_s": peak.offered_per_s,
        "high_offered_per_s": high.offered_per_s if high else None,
        "high_completed_per_s": high.completed_per_s if high else None,
        "high_to_peak_ratio": ratio,
        "sustained_completed_per_s": sustained,
        "total_failed": total_failed,
        "total_lost": total_lost,
        "total_429": sum(r.rejected_429 for r in results),
        "submit_p99_ms_at_200": p99,
        "goals": {
            "no_collapse": verdict(None if ratio is None else ratio >= COLLAPSE_GOAL),
            "no_failed_or_lost": verdict(total_failed == 0 and total_lost == 0),
            "sustained_100_per_s": verdict(sustained >= THROUGHPUT_GOAL),
            "submit_p99_under_25ms_at_200": verdict(None if p99 is None else p99 < P99_GOAL_MS),
        },
    }


def print_summary(s: dict[str, Any]) -> None:
    goals = s["goals"]
    high = (
        f"{fmt(s['high_completed_per_s'], 2)}/s at {fmt(s['high_offered_per_s'], 0)} offered/s,"
        f" ratio {fmt(s['high_to_peak_ratio'], 2)}"
        if s["high_offered_per_s"] is not None
        else "n/a (no offered rate >= 2x the peak's was run)"
    )
    print()
    print(
        f"peak completed jobs/s      {s['peak_completed_per_s']:.2f} "
        f"(at {s['peak_offered_per_s']:.0f} offered/s)"
    )
    print(
        f"at >= 2x peak offered rate {high}  [no collapse >= {COLLAPSE_GOAL:.2f}: "
        f"{goals['no_collapse']}]"
    )
    print(
        f"sustained (0 FAILED/lost)  {s['sustained_completed_per_s']:.2f} jobs/s  "
        f"[>= {THROUGHPUT_GOAL:.0f}/s: {goals['sustained_100_per_s']}]"
    )
    print(
        f"total FAILED / lost        {s['total_failed']} / {s['total_lost']}  "
        f"(429s: {s['total_429']})  [0 / 0: {goals['no_failed_or_lost']}]"
    )
    p99 = s["submit_p99_ms_at_200"]
    p99_text = "n/a (200/s not run)" if p99 is None else f"{p99:.1f} ms"
    print(
        f"submit p99 at 200/s        {p99_text}  "
        f"[< {P99_GOAL_MS:.0f} ms: {goals['submit_p99_under_25ms_at_200']}]"
    )


def log_findings(log: Path) -> dict[str, Any]:
    """Warning and error lines of the coordinator log, by event (the word after the level),
    and its tracebacks (plain or rich-rendered)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return {}

    def events(level: str) -> dict[str, int]:
        found: Counter[str] = Counter()
        for ln in lines:
            head, sep, rest = ln.partition(f"[{level}")
            if sep and head.strip():
                text = rest.partition("]")[2]
                for pattern, repl in LOG_NOISE:
                    text = pattern.sub(repl, text)
                found[" ".join(text.split())[:120] or "?"] += 1
        return dict(found.most_common(10))

    warnings, errors = events("warning"), {**events("error"), **events("critical")}
    return {
        "path": str(log),
        "warning_lines": sum(1 for ln in lines if "[warning" in ln),
        "error_lines": sum(errors.values()),
        "tracebacks": sum(1 for ln in lines if "Traceback (most recent call last)" in ln),
        "warning_events": warnings,
        "error_events": errors,
    }


def code_under_test(env: dict[str, str]) -> dict[str, Any]:
    """The git state of this checkout and where the coordinator imports quantum_mesh from
    (``--env PYTHONPATH=...`` can point it at another tree, e.g. a ``git archive`` of HEAD)."""

    def git(*cmd: str) -> str:
        out = subprocess.run(
            ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.strip()

    probe = subprocess.run(
        [sys.executable, "-c", "import quantum_mesh; print(quantum_mesh.__file__)"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return {
        "head": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain")),
        "quantum_mesh": probe.stdout.strip() or probe.stderr.strip()[-300:],
    }


# --- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rates", default="5,10,20,50,100,200", help="offered submits/s, comma list")
    p.add_argument("--seconds", type=float, default=10.0, help="submit window per rate")
    p.add_argument("--drain-seconds", type=float, default=60.0, help="drain after each window")
    p.add_argument("--pause-seconds", type=float, default=2.0, help="idle time between rates")
    p.add_argument("--nodes", type=int, default=3, help="embedded service nodes")
    p.add_argument("--database-url", help="QMESH_DATABASE_URL (default: embedded SQLite)")
    p.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra coordinator env"
    )
    p.add_argument("--warmup", type=int, default=3, help="sequential Bell jobs before rate 1")
    p.add_argument("--request-timeout", type=float, default=30.0, help="per request, seconds")
    p.add_argument("--max-connections", type=int, default=1024, help="submit connections, in all")
    p.add_argument("--poll-interval", type=float, default=1.0, help="min seconds between sweeps")
    p.add_argument(
        "--no-cancel-leftovers",
        dest="cancel_leftovers",
        action="store_false",
        help="leave jobs unfinished at the drain deadline running",
    )
    p.add_argument(
        "--fresh-per-rate",
        action="store_true",
        help="a new coordinator (and warm-up) for every rate: no backlog carried between rates",
    )
    p.add_argument("--json", help="also write every figure (and raw samples) to this file")
    args = p.parse_args(argv)
    args.rate_list = [float(x) for x in args.rates.split(",") if x.strip()]
    if not args.rate_list or any(r <= 0 for r in args.rate_list):
        p.error("--rates needs positive numbers")
    if args.seconds <= 0 or args.drain_seconds < 0:
        p.error("--seconds must be > 0 and --drain-seconds >= 0")
    return args


#: The coordinator's environment under load: its rate limiter out of the way.
LOAD_ENV = {"QMESH_RATE_LIMIT_PER_MINUTE": "10000000"}


def env_pairs(items: list[str]) -> dict[str, str]:
    """``--env KEY=VALUE`` options as a dict."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env wants KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = dict(LOAD_ENV)
    if args.database_url:
        env["QMESH_DATABASE_URL"] = args.database_url
    env.update(env_pairs(args.env))
    started = time.perf_counter()
    code = code_under_test(env)
    print(
        f"coordinator code: {code['quantum_mesh']} (this checkout: HEAD {code['head'][:10]}, "
        f"dirty={code['dirty']})"
    )
    print(
        f"open loop, {args.seconds:g} s per rate, drain {args.drain_seconds:g} s, "
        f"Bell {SHOTS} shots, {args.nodes} nodes; latencies in ms"
    )
    results: list[RateResult] = []
    logs: list[dict[str, Any]] = []
    coord: LiveCoordinator | None = None
    try:
        for i, rate in enumerate(args.rate_list):
            if coord is None or args.fresh_per_rate:
                if coord is not None:
                    coord.stop()
                    logs.append(log_findings(coord.data_dir / "coordinator.log"))
                coord = start_coordinator(nodes=args.nodes, env=env)
                print(f"coordinator {coord.base_url}, data {coord.data_dir}", flush=True)
                warm = asyncio.run(warm_up(coord.base_url + "/api/v1", args.warmup))
                if any(s != "COMPLETED" for s in warm):
                    print(f"warning: warm-up jobs ended {warm}", file=sys.stderr)
                if i == 0 or args.fresh_per_rate:
                    print(header(), flush=True)
            elif i:
                time.sleep(args.pause_seconds)
            pid = coord.proc.pid if coord.proc is not None else None
            result = asyncio.run(run_rate(coord.base_url + "/api/v1", rate, args, pid))
            results.append(result)
            print(row(result), flush=True)
            if (result.gen_lag_p99_ms or 0.0) > LAG_WARN_MS:
                print(
                    f"  note: generator lag p99 {result.gen_lag_p99_ms:.1f} ms at {rate:g}/s "
                    "(counted in the submit latency)",
                    flush=True,
                )
            print(
                f"  generator CPU {fmt(result.gen_cpu_pct)} % of one core during the window",
                flush=True,
            )
            if result.carried_over and i + 1 < len(args.rate_list):
                print(
                    f"  note: {result.carried_over} unfinished jobs were not confirmed cancelled "
                    f"({counts_text(result.leftover_cancels)}); they overlap the next rate",
                    flush=True,
                )
    finally:
        if coord is not None:
            coord.stop()
            logs.append(log_findings(coord.data_dir / "coordinator.log"))
    summary = summarize(results)
    print()
    print(header())
    for r in results:
        print(row(r))
    if summary:
        print_summary(summary)
    for findings in logs:
        if findings:
            print(
                f"coordinator log: {findings['warning_lines']} warning, "
                f"{findings['error_lines']} error lines, {findings['tracebacks']} tracebacks "
                f"({findings['path']})"
            )
            for level in ("error", "warning"):
                for name, count in list(findings[f"{level}_events"].items())[:3]:
                    print(f"  {level} x{count}: {name}")
    if args.json:
        payload = {
            "config": {
                **{k: v for k, v in vars(args).items() if k not in ("json", "env")},
                "env": env,
                "circuit": BELL,
                "shots": SHOTS,
                "code": code,
                "wall_s": round(time.perf_counter() - started, 1),
            },
            "rates": [asdict(r) for r in results],
            "summary": summary,
            "coordinator_logs": logs,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
