"""Build a job's provenance bundle from the Postgres rows that describe it.

Only rows that are frozen once the job is terminal are read, and events are cut at the
terminal event's ``seq``, so building the bundle again (a replay, a rebuild) gives the same
document.
"""

from __future__ import annotations

import functools
import hashlib
import json
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession

from quantum_mesh.store.mongo.documents import NodeIdentity, ProvenanceBundle
from quantum_mesh.store.tables import (
    ExecutionEvent,
    ExecutionPlan,
    FragmentExecution,
    Job,
    PeerSnapshot,
)

#: Distributions whose versions decide what a job computed.
TRACKED_LIBRARIES = (
    "quantum-mesh",
    "qiskit",
    "qiskit-aer",
    "libp2p",
    "numpy",
    "scipy",
    "qiskit-addon-sqd",
    "pyscf",
    "ffsim",
)
_SEED_DEPTH = 4


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no whitespace, UTF-8 kept.

    NaN/Infinity are written as JSON's usual extensions rather than refused: a result that
    holds one must still get a (deterministic) hash, not block the projector forever.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def result_hash(result: Any) -> str:
    """sha256 (hex) of the canonical JSON of a job result (``null`` for no result)."""
    return hashlib.sha256(canonical_json(result).encode()).hexdigest()


def collect_seeds(value: Any, *, prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """Every ``*seed*`` key in a request, by dotted path (``params.seed``)."""
    found: dict[str, Any] = {}
    if depth > _SEED_DEPTH or not isinstance(value, dict):
        return found
    for key, item in value.items():
        path = f"{prefix}{key}"
        if "seed" in str(key).lower() and not isinstance(item, dict | list):
            found[path] = item
        elif isinstance(item, dict):
            found.update(collect_seeds(item, prefix=path + ".", depth=depth + 1))
    return found


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    # Looking up package metadata reads files: once per process, not once per bundle.
    versions: list[tuple[str, str]] = []
    for name in TRACKED_LIBRARIES:
        try:
            versions.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return tuple(versions)


def installed_versions() -> dict[str, str]:
    return dict(_installed_versions())


def library_versions(result: dict[str, Any] | None) -> dict[str, str]:
    """Versions the job recorded itself (``result.library_versions``), else this process's."""
    recorded = (result or {}).get("library_versions")
    if isinstance(recorded, dict) and recorded:
        return {str(k): str(v) for k, v in recorded.items()}
    return installed_versions()


def event_dict(event: ExecutionEvent | Row[Any]) -> dict[str, Any]:
    """An event as the documents hold it, from its ORM object or a plain row of its columns."""
    return {
        "seq": event.seq,
        "event_type": event.event_type,
        "fragment_id": event.fragment_id,
        "node_id": event.node_id,
        "attempt": event.attempt,
        "payload": event.payload or {},
        "at": as_utc(event.at).isoformat(),
    }


async def _node_identities(session: AsyncSession, node_ids: set[str]) -> list[NodeIdentity]:
    if not node_ids:
        return []
    rows = await session.execute(select(PeerSnapshot).where(PeerSnapshot.peer_id.in_(node_ids)))
    adverts = {r.peer_id: r.advert or {} for r in rows.scalars()}
    return [
        NodeIdentity(
            node_id=node_id,
            name=adverts.get(node_id, {}).get("name"),
            version=adverts.get(node_id, {}).get("version"),
        )
        for node_id in sorted(node_ids)
    ]


async def build_bundle(
    session: AsyncSession, *, job_id: str, upto_seq: int
) -> ProvenanceBundle | None:
    """The bundle of ``job_id`` with its events up to ``upto_seq`` (None if the job is gone)."""
    return (await build_bundles(session, {job_id: upto_seq})).get(job_id)


async def build_bundles(session: AsyncSession, upto: dict[str, int]) -> dict[str, ProvenanceBundle]:
    """Bundles of several jobs (job id -> last event seq each covers), read with one query
    per table rather than one per job and table: under load the projector closes dozens of
    jobs per batch of events. Jobs that are gone are left out."""
    if not upto:
        return {}
    ids = list(upto)
    jobs = {
        j.job_id: j
        for j in (await session.execute(select(Job).where(Job.job_id.in_(ids)))).scalars()
    }
    events: dict[str, list[ExecutionEvent]] = {job_id: [] for job_id in jobs}
    rows = await session.execute(
        select(ExecutionEvent)
        .where(ExecutionEvent.job_id.in_(ids), ExecutionEvent.seq <= max(upto.values()))
        .order_by(ExecutionEvent.seq)
    )
    for e in rows.scalars():
        if e.job_id in events and e.seq <= upto[e.job_id]:
            events[e.job_id].append(e)
    plans: dict[str, list[ExecutionPlan]] = {}
    for plan in (
        await session.execute(
            select(ExecutionPlan)
            .where(ExecutionPlan.job_id.in_(ids))
            .order_by(ExecutionPlan.created_at.desc(), ExecutionPlan.plan_id)
        )
    ).scalars():
        plans.setdefault(plan.job_id, []).append(plan)
    # Only who ran each fragment: the rows' outputs (operators, checkpoints) stay unread.
    ran = await session.execute(
        select(FragmentExecution.job_id, FragmentExecution.node_id).where(
            FragmentExecution.job_id.in_(ids)
        )
    )
    node_ids: dict[str, set[str]] = {job_id: set() for job_id in jobs}
    for job_id, node_id in ran:
        node_ids.setdefault(job_id, set()).add(node_id)
    for job_id, job_events in events.items():
        node_ids[job_id] |= {e.node_id for e in job_events if e.node_id}
    identities = await _node_identities(session, set().union(*node_ids.values()))
    by_node = {n.node_id: n for n in identities}
    bundles = {}
    for job_id, job in jobs.items():
        job_events = events[job_id]
        candidates = plans.get(job_id, [])
        # The plan the job names; else its latest (ordered above).
        plan_row = next((p for p in candidates if p.plan_id == job.plan_id), None) or next(
            iter(candidates), None
        )
        terminal_at = as_utc(job_events[-1].at) if job_events else as_utc(job.updated_at)
        bundles[job_id] = ProvenanceBundle(
            job_id=job.job_id,
            kind=job.kind,
            status=job.status,
            input=job.request or {},
            plan_id=None if plan_row is None else plan_row.plan_id,
            plan=None if plan_row is None else plan_row.plan,
            events=[event_dict(e) for e in job_events],
            nodes=[by_node[n] for n in sorted(node_ids[job_id])],
            seeds=collect_seeds(job.request or {}),
            library_versions=library_versions(job.result),
            result_hash=result_hash(job.result),
            error=job.error,
            job_created_at=as_utc(job.created_at),
            created_at=terminal_at,
            last_seq=upto[job_id],
        )
    return bundles
