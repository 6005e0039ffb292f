"""Peer enrollment and trust actions."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from quantum_mesh.api.deps import AdminDep, CoordinatorDep, LimitQ, OffsetQ, page
from quantum_mesh.control.enrollment import enrollment_to_dict

router = APIRouter(tags=["enrollment"])

PEER_ID_PATTERN = r"^[1-9A-HJ-NP-Za-km-z]{30,128}$"  # base58btc multihash


class EnrollIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    peer_id: str = Field(pattern=PEER_ID_PATTERN)
    name: str | None = Field(default=None, max_length=200)


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["approve", "suspend", "revoke"]


@router.post(
    "/enrollment/peers",
    status_code=201,
    responses={200: {"description": "the peer was already enrolled: its record, unchanged"}},
)
async def enroll(body: EnrollIn, coord: CoordinatorDep, _admin: AdminDep) -> JSONResponse:
    """Enroll a peer (admins only; reading enrollment records is open to every principal)."""
    e, created = await coord.enrollment.create(peer_id=body.peer_id, name=body.name)
    return JSONResponse(status_code=201 if created else 200, content=enrollment_to_dict(e))


@router.get("/enrollment/peers")
async def list_enrollments(
    coord: CoordinatorDep, limit: LimitQ = 100, offset: OffsetQ = 0
) -> dict[str, Any]:
    rows, total = await coord.enrollment.list(limit=limit, offset=offset)
    return page([enrollment_to_dict(e) for e in rows], total, limit, offset)


@router.get("/enrollment/peers/{peer_id}")
async def get_enrollment(peer_id: str, coord: CoordinatorDep) -> dict[str, Any]:
    return enrollment_to_dict(await coord.enrollment.get(peer_id))


@router.post("/enrollment/peers/{peer_id}/action")
async def enrollment_action(
    peer_id: str, body: ActionIn, coord: CoordinatorDep, _admin: AdminDep
) -> dict[str, Any]:
    """Approve, suspend or revoke a peer (admins only)."""
    return enrollment_to_dict(await coord.enrollment.act(peer_id=peer_id, action=body.action))
