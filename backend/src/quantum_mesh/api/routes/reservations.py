"""Reservations negotiated with nodes over the mesh."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from quantum_mesh.api.deps import AdminDep, CoordinatorDep
from quantum_mesh.control.reservations import reservation_to_dict

#: Direct reservations hold node slots that every job needs: admins only, and each admin
#: holds at most QMESH_QUOTA_ACTIVE_RESERVATIONS at once.
router = APIRouter(tags=["reservations"])


class ReservationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    service_type: str = Field(min_length=1, max_length=64)
    node_id: str | None = Field(default=None, max_length=128)
    min_fidelity: float | None = Field(default=None, ge=0.0, le=1.0)
    ttl_s: float = Field(default=30.0, gt=0.0, le=300.0)  # nodes hold at most 300 s


@router.post("/reservations", status_code=201)
async def create_reservation(
    body: ReservationIn, coord: CoordinatorDep, principal: AdminDep
) -> JSONResponse:
    r = await coord.reservations.reserve(
        service_type=body.service_type,
        node_id=body.node_id,
        min_fidelity=body.min_fidelity,
        ttl_s=body.ttl_s,
        owner=principal.name,
        max_active=principal.max_active_reservations,
    )
    return JSONResponse(status_code=201, content=reservation_to_dict(r))


@router.get("/reservations/{reservation_id}")
async def get_reservation(
    reservation_id: str, coord: CoordinatorDep, _admin: AdminDep
) -> dict[str, Any]:
    return reservation_to_dict(await coord.reservations.get(reservation_id))


@router.post("/reservations/{reservation_id}/cancel")
async def cancel_reservation(
    reservation_id: str, coord: CoordinatorDep, _admin: AdminDep
) -> dict[str, Any]:
    return reservation_to_dict(await coord.reservations.cancel(reservation_id))
