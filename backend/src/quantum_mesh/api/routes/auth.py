"""Short-lived WebSocket tokens for clients that cannot set headers on a handshake (browsers)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request

from quantum_mesh.api.deps import PrincipalDep
from quantum_mesh.api.security import WsTokens
from quantum_mesh.schemas.auth import WsTokenOut

router = APIRouter(tags=["auth"])


@router.post("/auth/ws-token", response_model=WsTokenOut)
async def ws_token(request: Request, principal: PrincipalDep) -> WsTokenOut:
    """A token for `WS /jobs/{job_id}/events`, valid `QMESH_WS_TOKEN_TTL_S` (60 s) and bound
    to the caller: pass it as `?token=` or as the subprotocol `bearer.<token>` (offer
    `qmesh` beside it; the server selects `qmesh`). It authenticates handshakes only."""
    tokens: WsTokens = request.app.state.ws_tokens
    token, expires_at = tokens.issue(principal.name)
    return WsTokenOut(
        token=token,
        expires_at=datetime.fromtimestamp(expires_at, UTC).isoformat(),
        expires_in_s=tokens.ttl_s,
        principal=principal.name,
        role=principal.role,
    )
