"""Prometheus metrics on a dedicated registry, plus the ``GET /metrics`` router.

The control plane calls the small functions below at the points where things happen; nothing
here reads state by itself, so importing this module has no side effects beyond creating the
metric objects. The registry is private (not the process-global default one) so that library
metrics and repeated app factories in tests never collide.
"""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)

INVOKE_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Fragments take milliseconds (small circuits) to minutes (SQD batches).
FRAGMENT_BUCKETS_S = (*INVOKE_BUCKETS_S[2:], 120.0, 300.0)

JOB_TRANSITIONS = Counter(
    "qmesh_job_transitions_total",
    "Job state transitions committed by the job manager.",
    ["kind", "status"],
    registry=REGISTRY,
)
JOBS_BY_STATE = Gauge(
    "qmesh_jobs",
    "Jobs currently in each state, by kind.",
    ["kind", "status"],
    registry=REGISTRY,
)
FRAGMENT_SECONDS = Histogram(
    "qmesh_fragment_duration_seconds",
    "Wall time of one fragment execution on a node.",
    ["outcome"],
    buckets=FRAGMENT_BUCKETS_S,
    registry=REGISTRY,
)
FRAGMENTS = Counter(
    "qmesh_fragments_total",
    "Fragment executions finished, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "qmesh_retries_total",
    "Fragment or block retries, by reason.",
    ["reason"],
    registry=REGISTRY,
)
MESH_INVOKE_SECONDS = Histogram(
    "qmesh_mesh_invoke_duration_seconds",
    "Round-trip time of one invocation over the mesh.",
    ["method", "outcome"],
    buckets=INVOKE_BUCKETS_S,
    registry=REGISTRY,
)
MESH_INVOKES = Counter(
    "qmesh_mesh_invokes_total",
    "Invocations over the mesh, by method and outcome.",
    ["method", "outcome"],
    registry=REGISTRY,
)
NODE_ADVERT_AGE = Gauge(
    "qmesh_node_advert_age_seconds",
    "Seconds since the node's last advert was heard.",
    ["peer_id"],
    registry=REGISTRY,
)
NODE_FRESH = Gauge(
    "qmesh_node_fresh",
    "1 while the node's advert is fresh enough to plan on, else 0.",
    ["peer_id"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "qmesh_work_queue_depth",
    "Units of mesh work waiting for a node with a free slot.",
    registry=REGISTRY,
)
QUEUE_WAIT_SECONDS = Histogram(
    "qmesh_work_queue_wait_seconds",
    "Time a unit of mesh work waited in the queue.",
    buckets=INVOKE_BUCKETS_S,
    registry=REGISTRY,
)
JOB_START_WAIT_SECONDS = Histogram(
    "qmesh_job_start_wait_seconds",
    "Time an accepted job waited QUEUED for one of QMESH_MAX_RUNNING_JOBS places.",
    buckets=FRAGMENT_BUCKETS_S,
    registry=REGISTRY,
)
UNIT_OVERHEAD_SECONDS = Gauge(
    "qmesh_unit_overhead_seconds",
    "Running estimate of a unit's coordinator-side time beyond its compute, by method.",
    ["method"],
    registry=REGISTRY,
)
UNIT_JOB_COMPUTE_SECONDS = Gauge(
    "qmesh_unit_job_compute_seconds",
    "Running estimate of one job's compute on a node, by method (sizes grouped units).",
    ["method"],
    registry=REGISTRY,
)
UNIT_LONG = Gauge(
    "qmesh_unit_long",
    "1 where a method's units are long (placed only on an idle node worker), by method.",
    ["method"],
    registry=REGISTRY,
)
JOBS_REJECTED = Counter(
    "qmesh_jobs_rejected_total",
    "Submits refused with 429 because the job queue was full.",
    registry=REGISTRY,
)
DB_WRITE_SECONDS = Histogram(
    "qmesh_db_write_seconds",
    "Time from a state change handed to the group-commit writer to its commit.",
    buckets=INVOKE_BUCKETS_S,
    registry=REGISTRY,
)
DB_COMMIT_GROUP_SIZE = Histogram(
    "qmesh_db_commit_group_size",
    "Writes committed together in one transaction by the group-commit writer.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
DB_COMMIT_GROUP_SECONDS = Histogram(
    "qmesh_db_commit_group_seconds",
    "Time the group-commit writer spent on one transaction (its writes and the commit).",
    buckets=INVOKE_BUCKETS_S,
    registry=REGISTRY,
)
ADVERTS_DROPPED = Counter(
    "qmesh_adverts_dropped_total",
    "Adverts received and ignored, by reason.",
    ["reason"],
    registry=REGISTRY,
)

METRIC_NAMES = (
    "qmesh_unit_overhead_seconds",
    "qmesh_unit_job_compute_seconds",
    "qmesh_job_transitions_total",
    "qmesh_jobs",
    "qmesh_fragment_duration_seconds",
    "qmesh_fragments_total",
    "qmesh_retries_total",
    "qmesh_mesh_invoke_duration_seconds",
    "qmesh_mesh_invokes_total",
    "qmesh_node_advert_age_seconds",
    "qmesh_node_fresh",
    "qmesh_adverts_dropped_total",
    "qmesh_work_queue_depth",
    "qmesh_work_queue_wait_seconds",
    "qmesh_jobs_rejected_total",
)


def _outcome(ok: bool) -> str:
    return "ok" if ok else "error"


def job_transition(kind: str, status: str) -> None:
    """One committed transition of a job of ``kind`` into ``status``."""
    JOB_TRANSITIONS.labels(kind=kind, status=status).inc()


def set_jobs_by_state(counts: dict[tuple[str, str], int]) -> None:
    """Replace the per-(kind, status) job gauge; pairs absent from ``counts`` drop to 0."""
    for labels in _gauge_label_sets(JOBS_BY_STATE):
        if labels not in counts:
            JOBS_BY_STATE.labels(*labels).set(0)
    for (kind, status), n in counts.items():
        JOBS_BY_STATE.labels(kind=kind, status=status).set(n)


def fragment_finished(seconds: float, ok: bool) -> None:
    """A fragment (or block/batch) execution finished after ``seconds``."""
    outcome = _outcome(ok)
    FRAGMENT_SECONDS.labels(outcome=outcome).observe(max(0.0, seconds))
    FRAGMENTS.labels(outcome=outcome).inc()


def set_queue_depth(depth: int) -> None:
    QUEUE_DEPTH.set(depth)


def queue_wait(seconds: float) -> None:
    QUEUE_WAIT_SECONDS.observe(max(0.0, seconds))


def job_start_wait(seconds: float) -> None:
    JOB_START_WAIT_SECONDS.observe(max(0.0, seconds))


def unit_cost(method: str, *, overhead_s: float, job_compute_s: float) -> None:
    UNIT_OVERHEAD_SECONDS.labels(method=method).set(overhead_s)
    UNIT_JOB_COMPUTE_SECONDS.labels(method=method).set(job_compute_s)


def unit_long(method: str, long: bool) -> None:
    UNIT_LONG.labels(method=method).set(1 if long else 0)


def db_write(seconds: float) -> None:
    DB_WRITE_SECONDS.observe(max(0.0, seconds))


def db_write_group(size: int, seconds: float) -> None:
    DB_COMMIT_GROUP_SIZE.observe(size)
    DB_COMMIT_GROUP_SECONDS.observe(max(0.0, seconds))


def job_rejected(count: int = 1) -> None:
    JOBS_REJECTED.inc(count)


def retry(reason: str) -> None:
    """Work was retried (on the same or a fallback node) because of ``reason``."""
    RETRIES.labels(reason=reason).inc()


def mesh_invoke(method: str, seconds: float, ok: bool) -> None:
    """One invocation of ``method`` on a node took ``seconds`` round trip."""
    outcome = _outcome(ok)
    MESH_INVOKE_SECONDS.labels(method=method, outcome=outcome).observe(max(0.0, seconds))
    MESH_INVOKES.labels(method=method, outcome=outcome).inc()


def set_node_freshness(peer_id: str, age_s: float, fresh: bool) -> None:
    """Age of the node's last advert and whether it is fresh."""
    NODE_ADVERT_AGE.labels(peer_id=peer_id).set(max(0.0, age_s))
    NODE_FRESH.labels(peer_id=peer_id).set(1 if fresh else 0)


def forget_node(peer_id: str) -> None:
    """Drop a node's series (e.g. after it was revoked or pruned from the registry)."""
    for gauge in (NODE_ADVERT_AGE, NODE_FRESH):
        with contextlib.suppress(KeyError):
            gauge.remove(peer_id)


def advert_dropped(reason: str) -> None:
    """An advert was ignored (``malformed``, ``stale``, ``unknown_peer``, …): never a peer label."""
    ADVERTS_DROPPED.labels(reason=reason).inc()


def render() -> tuple[bytes, str]:
    """The registry in Prometheus text exposition format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def _gauge_label_sets(gauge: Gauge) -> list[tuple[str, ...]]:
    return [
        tuple(sample.labels[name] for name in ("kind", "status"))
        for metric in gauge.collect()
        for sample in metric.samples
    ]


metrics_router = APIRouter(tags=["observability"])


@metrics_router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    payload, content_type = render()
    return Response(content=payload, media_type=content_type)
