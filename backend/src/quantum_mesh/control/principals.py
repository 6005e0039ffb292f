"""The ``principals`` and ``api_keys`` tables, loaded from the settings at every start.

The settings are the source (``QMESH_API_KEYS``, ``QMESH_PRINCIPALS``); the tables record who
the owners of jobs and reservations are, their roles and quota overrides, and the SHA-256
digests of their keys (never a key). A principal that is no longer configured keeps its row,
inactive and without keys, so the owner of its jobs still names a known principal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select

from quantum_mesh.store.database import Database
from quantum_mesh.store.tables import ApiKey, Principal, utcnow


@dataclass(frozen=True)
class PrincipalRecord:
    name: str
    role: str
    key_sha256: tuple[str, ...]
    max_active_jobs: int | None = None
    max_active_reservations: int | None = None


async def sync_principals(db: Database, records: Sequence[PrincipalRecord]) -> dict[str, int]:
    """Make the tables match ``records``; returns counts (``active``, ``inactive``, ``keys``)."""
    wanted = {r.name: r for r in records}
    async with db.transaction() as session:
        existing = {p.name: p for p in (await session.execute(select(Principal))).scalars()}
        await session.execute(delete(ApiKey))
        now = utcnow()
        for name, row in existing.items():
            if name not in wanted and row.active:
                row.active = False
                row.updated_at = now
        for r in records:
            found = existing.get(r.name)
            row = found if found is not None else Principal(name=r.name, created_at=now)
            if found is None:
                session.add(row)
            row.role = r.role
            row.max_active_jobs = r.max_active_jobs
            row.max_active_reservations = r.max_active_reservations
            row.active = True
            row.updated_at = now
        await session.flush()
        for r in records:
            for digest in r.key_sha256:
                session.add(ApiKey(key_sha256=digest, principal=r.name, created_at=now))
    inactive = sum(1 for name in existing if name not in wanted)
    return {
        "active": len(records),
        "inactive": inactive,
        "keys": sum(len(r.key_sha256) for r in records),
    }
