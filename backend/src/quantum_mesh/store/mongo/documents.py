"""Beanie documents: read-optimised projections, never the source of truth.

No ``Link`` and no text indexes: the embedded SecantusDB matches nothing on DBRef paths and has
no ``$text``. Cross-references are plain ids (``job_id``, ``peer_id``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from beanie import Document
from pydantic import BaseModel, Field
from pymongo import ASCENDING, DESCENDING, IndexModel

#: Topology snapshots are history for dashboards; a week of it is plenty.
TOPOLOGY_TTL_S = 7 * 24 * 3600


def utcnow() -> datetime:
    return datetime.now(UTC)


class PeerCapability(Document):
    """The latest view of one peer as the registry saw it (``/discovery/peers`` item)."""

    peer_id: str
    name: str = ""
    services: list[str] = Field(default_factory=list)
    fidelity: float | None = None
    qubit_min: int = 0
    qubit_max: int = 0
    load: float = 0.0
    availability: str = "UNKNOWN"
    listen_addrs: list[str] = Field(default_factory=list)
    enrollment: str | None = None
    fresh: bool = False
    latency_ms: float | None = None
    updated_at: datetime
    #: The advert's own sequence number when the view carries one, else 0.
    source_seq: int = 0

    class Settings:
        name = "peer_capabilities"
        indexes = [
            IndexModel([("peer_id", ASCENDING)], unique=True),
            IndexModel([("services", ASCENDING)]),
        ]


class TopologyLink(BaseModel):
    source: str
    target: str
    #: ``coordinator`` (the latency of its calls) or ``node`` (a round trip nodes measured).
    kind: str = "coordinator"
    connected: bool | None = None
    latency_ms: float | None = None
    #: The node that measured a ``node`` link.
    measured_by: str | None = None


class TopologySnapshot(Document):
    """The mesh as the coordinator saw it at ``taken_at``; expires after a week."""

    taken_at: datetime = Field(default_factory=utcnow)
    coordinator: str | None = None
    nodes: list[dict[str, Any]] = Field(default_factory=list)
    links: list[TopologyLink] = Field(default_factory=list)

    class Settings:
        name = "topology_snapshots"
        indexes = [
            IndexModel([("taken_at", DESCENDING)], expireAfterSeconds=TOPOLOGY_TTL_S),
        ]


class BenchmarkResult(Document):
    """One workload compared across execution modes, with the measured figures."""

    benchmark_id: str
    workload: str
    modes: list[str] = Field(default_factory=list)
    figures: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "benchmark_results"
        indexes = [
            IndexModel([("benchmark_id", ASCENDING)], unique=True),
            IndexModel([("created_at", DESCENDING)]),
        ]


class NodeIdentity(BaseModel):
    node_id: str
    name: str | None = None
    version: str | None = None


class ProvenanceBundle(Document):
    """Everything needed to explain and re-run a finished job, built from Postgres rows.

    Every field is derived from rows that no longer change once the job is terminal, so an
    incremental projection and a full rebuild give the same bundle (node names/versions come
    from the last advert of each node, and library versions from the job result when it
    records them, else from the projecting process).
    """

    job_id: str
    kind: str
    status: str
    input: dict[str, Any]
    plan_id: str | None = None
    plan: dict[str, Any] | None = None
    events: list[dict[str, Any]] = Field(default_factory=list)
    nodes: list[NodeIdentity] = Field(default_factory=list)
    seeds: dict[str, Any] = Field(default_factory=dict)
    library_versions: dict[str, str] = Field(default_factory=dict)
    result_hash: str
    error: dict[str, Any] | None = None
    job_created_at: datetime
    #: When the job reached its terminal state (the terminal event's time).
    created_at: datetime
    #: Highest event seq folded into this bundle: re-applying an event at or below it is a no-op.
    last_seq: int
    #: True when the plan and event payloads were left out to fit MongoDB's 16 MB limit.
    truncated: bool = False

    class Settings:
        name = "provenance_bundles"
        indexes = [
            IndexModel([("job_id", ASCENDING)], unique=True),
            IndexModel([("created_at", DESCENDING)]),
        ]


class ProjectionCheckpoint(Document):
    """How far a projection has read an event table (``seq`` of the last applied event)."""

    name: str
    last_seq: int = 0
    updated_at: datetime = Field(default_factory=utcnow)

    class Settings:
        name = "projection_checkpoints"
        indexes = [IndexModel([("name", ASCENDING)], unique=True)]


DOCUMENT_MODELS: list[type[Document]] = [
    PeerCapability,
    TopologySnapshot,
    BenchmarkResult,
    ProvenanceBundle,
    ProjectionCheckpoint,
]
