"""How many small jobs go into one unit of mesh work, from what calls have cost so far.

Every unit pays a fixed overhead (a reservation, an invocation, its records) on top of its
compute. Sending each QAOA block job alone made that overhead 20-30 % of a knapsack run's
wall time; packing every job of a round into one unit per worker removes it, but leaves a
worker idle when its group finishes early. The sizer takes the middle road from measurements,
per method: groups just large enough that the measured per-unit overhead is at most
``TARGET_OVERHEAD_SHARE`` of the group's measured compute, and never larger than one group
per free worker slot (so every worker still gets work). Before anything is measured it
starts from one group per slot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quantum_mesh.observability import metrics

#: Overhead a group may add on top of its compute.
TARGET_OVERHEAD_SHARE = 0.05
#: Weight of the newest observation in the running averages.
SMOOTHING = 0.3


@dataclass
class _Estimate:
    overhead_s: float
    job_compute_s: float
    calls: int = 1


class _RunningCosts:
    """Per-method running averages (``SMOOTHING``) of a unit's overhead and of a job's
    compute."""

    def __init__(self) -> None:
        self._by_method: dict[str, _Estimate] = {}

    def _update(self, method: str, *, overhead_s: float, job_compute_s: float) -> _Estimate:
        known = self._by_method.get(method)
        if known is None:
            known = self._by_method[method] = _Estimate(overhead_s, job_compute_s, calls=0)
        else:
            known.overhead_s += SMOOTHING * (overhead_s - known.overhead_s)
            known.job_compute_s += SMOOTHING * (job_compute_s - known.job_compute_s)
        known.calls += 1
        return known

    def estimate(self, method: str) -> dict[str, float] | None:
        known = self._by_method.get(method)
        if known is None:
            return None
        return {
            "overhead_s": known.overhead_s,
            "job_compute_s": known.job_compute_s,
            "calls": known.calls,
        }


class CallSizer(_RunningCosts):
    """Running per-method estimates of per-unit overhead and per-job compute."""

    def observe(self, method: str, *, jobs: int, wall_s: float, compute_s: float) -> None:
        """One finished unit of ``jobs`` jobs: its wall time on the coordinator's side
        (reservation to recorded result, queue wait excluded) and the compute its node
        reported for them."""
        if jobs < 1 or wall_s <= 0:
            return
        known = self._update(
            method,
            overhead_s=max(0.0, wall_s - compute_s),
            job_compute_s=max(0.0, compute_s) / jobs,
        )
        metrics.unit_cost(method, overhead_s=known.overhead_s, job_compute_s=known.job_compute_s)

    def group_size(self, method: str, *, jobs: int, slots: int, max_group: int) -> int:
        """Jobs per unit for a round of ``jobs`` jobs over ``slots`` free worker slots."""
        if jobs <= 1:
            return 1
        widest = max(1, min(max_group, math.ceil(jobs / max(1, slots))))
        known = self._by_method.get(method)
        if known is None or known.job_compute_s <= 0:
            return widest
        wanted = math.ceil(known.overhead_s / (TARGET_OVERHEAD_SHARE * known.job_compute_s))
        return max(1, min(widest, wanted))


def compute_seconds(reply: Mapping[str, Any]) -> float:
    """Seconds of compute a node reports in a reply (``seconds``, or ``diagnostics.seconds``;
    summed over ``results`` of a grouped reply); 0 when it reports none."""
    results = reply.get("results")
    if isinstance(results, list):
        return sum(compute_seconds(r) for r in results if isinstance(r, Mapping))
    diagnostics = reply.get("diagnostics")
    value = diagnostics.get("seconds") if isinstance(diagnostics, Mapping) else None
    if value is None:
        value = reply.get("seconds")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


#: A method's units count as long once the coordinator's own time per unit (placing,
#: sending, taking the answer) is at most this share of the unit's compute (``UnitLengths``).
LONG_UNIT_OVERHEAD_SHARE = 0.02


class UnitLengths(_RunningCosts):
    """Which methods' units are long enough to go only to a node with an idle worker.

    A second slot per worker hides the coordinator's time between two units, which pays for
    millisecond units. For units of seconds (SQD batches) that time is a fraction of a
    percent of the unit, and the second slot costs more than it saves: a unit placed behind
    a busy worker stays there when another node's worker goes idle first, so a round of
    batches is split between nodes in advance and ends with one worker idle while the other
    still has one to do (a process pool hands the next batch to whichever worker is free).
    Measured per method, from each unit's coordinator time and the compute its node reported
    (a unit counts as one job here); a method with no measurement yet is not long.
    """

    def observe(self, method: str, *, overhead_s: float, compute_s: float) -> None:
        if compute_s <= 0:
            return
        self._update(method, overhead_s=max(0.0, overhead_s), job_compute_s=compute_s)
        metrics.unit_long(method, self.is_long(method))

    def is_long(self, method: str) -> bool:
        known = self._by_method.get(method)
        return known is not None and (
            known.overhead_s <= LONG_UNIT_OVERHEAD_SHARE * known.job_compute_s
        )


#: Units placed per worker before any was measured (and the fewest: one running, one ready).
DEFAULT_DEPTH = 4
#: Longest a unit should wait in a node's queue behind the coordinator's other units there,
#: for the sake of keeping the node's worker busy (``PipelineDepth``).
NODE_QUEUE_BUDGET_S = 0.005
MIN_DEPTH = 2


class PipelineDepth:
    """How many units to keep placed per node worker.

    A unit holds its node slot from placement to the node's answer, and part of that is the
    coordinator's own work (negotiating the reservation, committing it). With one unit per
    worker the worker idles meanwhile; with ``1 + ceil(coordinator time / node round trip)``
    units it does not. The node round trip includes waiting in the node's queue, so a queue
    that already keeps the worker busy asks for no deeper pipeline. Millisecond units (circuit
    fragments) get deep pipelines, long units (SQD batches) shallow ones, so long units are
    not queued on one node while another could start them. One depth for every method: a
    per-method depth would let a method with a deep pipeline keep a node too full, forever,
    for one with a shallow one.

    Where the reply says how long the node's worker computed (``node_s``, circuit
    fragments), the round trip is not all work: under load most of a millisecond unit's
    round trip is transport and the coordinator's own latency, while the worker idles. Then
    the depth also covers the whole slot time with worker time, ``ceil((coordinator time +
    round trip) / node_s)``, but never more than a unit could wait in the node's queue
    within ``NODE_QUEUE_BUDGET_S`` (``1 + budget / node_s``), so this only ever deepens the
    pipeline for units far shorter than the budget.
    """

    def __init__(self, *, most: int, least: int = MIN_DEPTH) -> None:
        self.most = most
        self.least = min(least, most)
        self._measured: tuple[float, float] | None = None
        self._node_s: float | None = None

    def observe(
        self, *, coordinator_s: float, round_trip_s: float, node_s: float | None = None
    ) -> None:
        if node_s is not None and node_s > 0:
            known = self._node_s
            self._node_s = node_s if known is None else known + SMOOTHING * (node_s - known)
        if self._measured is None:
            self._measured = (coordinator_s, round_trip_s)
            return
        own, trip = self._measured
        self._measured = (
            own + SMOOTHING * (coordinator_s - own),
            trip + SMOOTHING * (round_trip_s - trip),
        )

    def per_worker(self) -> int:
        if self._measured is None:
            return max(self.least, min(self.most, DEFAULT_DEPTH))
        own, trip = self._measured
        wanted = 1 + math.ceil(own / max(trip, 1e-4))
        work = self._node_s
        if work is not None:
            busy = math.ceil((own + trip) / max(work, 1e-4))
            queue_bound = 1 + math.floor(NODE_QUEUE_BUDGET_S / max(work, 1e-4))
            wanted = max(wanted, min(busy, queue_bound))
        return max(self.least, min(self.most, wanted))
