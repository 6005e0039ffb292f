"""Enrollment: which peers the coordinator trusts with work."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from quantum_mesh.control.registry import PeerRegistry
from quantum_mesh.control.reservations import ReservationService
from quantum_mesh.control.states import ENROLLMENT_ACTIONS, EnrollmentStatus
from quantum_mesh.errors import Conflict, InvalidInput, NotFound
from quantum_mesh.store.database import Database
from quantum_mesh.store.tables import Enrollment, utcnow


def enrollment_to_dict(e: Enrollment) -> dict[str, Any]:
    return {
        "peer_id": e.peer_id,
        "name": e.name,
        "status": e.status,
        "embedded": e.embedded,
        "created_at": e.created_at.isoformat(),
        "updated_at": e.updated_at.isoformat(),
    }


class EnrollmentService:
    def __init__(
        self, *, db: Database, registry: PeerRegistry, reservations: ReservationService
    ) -> None:
        self.db = db
        self.registry = registry
        self.reservations = reservations

    async def load_into_registry(self) -> None:
        async with self.db.transaction() as session:
            for e in (await session.execute(select(Enrollment))).scalars():
                self.registry.set_enrollment(e.peer_id, e.status)

    async def create(
        self,
        *,
        peer_id: str,
        name: str | None,
        status: EnrollmentStatus = EnrollmentStatus.PENDING,
        embedded: bool = False,
    ) -> tuple[Enrollment, bool]:
        """Create an enrollment; an existing one is returned unchanged (idempotent)."""
        async with self.db.transaction() as session:
            existing = await session.get(Enrollment, peer_id)
            if existing is not None:
                if embedded and existing.status != status:
                    existing.status = status.value
                    existing.embedded = True
                    existing.updated_at = utcnow()
                self.registry.set_enrollment(peer_id, existing.status)
                return existing, False
            e = Enrollment(
                peer_id=peer_id,
                name=name,
                status=status.value,
                embedded=embedded,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
            session.add(e)
        self.registry.set_enrollment(peer_id, e.status)
        return e, True

    async def get(self, peer_id: str) -> Enrollment:
        async with self.db.transaction() as session:
            e = await session.get(Enrollment, peer_id)
        if e is None:
            raise NotFound(f"Peer {peer_id} is not enrolled", details={"peer_id": peer_id})
        return e

    async def list(self, *, limit: int, offset: int) -> tuple[list[Enrollment], int]:
        async with self.db.transaction() as session:
            rows = await session.execute(
                select(Enrollment)
                .order_by(Enrollment.created_at.desc())
                .limit(limit)
                .offset(offset)
            )
            total = (
                await session.execute(select(func.count()).select_from(Enrollment))
            ).scalar_one()
        return list(rows.scalars()), int(total)

    async def act(self, *, peer_id: str, action: str) -> Enrollment:
        target = ENROLLMENT_ACTIONS.get(action)
        if target is None:
            raise InvalidInput(
                f"Unknown action '{action}'; use one of {sorted(ENROLLMENT_ACTIONS)}",
                details={"action": action},
            )
        async with self.db.transaction() as session:
            e = await session.get(Enrollment, peer_id, with_for_update=True)
            if e is None:
                raise NotFound(f"Peer {peer_id} is not enrolled", details={"peer_id": peer_id})
            if e.status == EnrollmentStatus.REVOKED and target != EnrollmentStatus.REVOKED:
                raise Conflict(
                    f"Peer {peer_id} is revoked; enroll it under a new identity",
                    details={"peer_id": peer_id, "status": e.status},
                )
            e.status = target.value
            e.updated_at = utcnow()
        self.registry.set_enrollment(peer_id, e.status)
        if target in (EnrollmentStatus.SUSPENDED, EnrollmentStatus.REVOKED):
            await self.reservations.cancel_for_node(peer_id, reason=f"peer {target.value.lower()}")
        return e
