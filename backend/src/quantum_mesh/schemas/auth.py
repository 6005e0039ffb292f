"""Authentication shapes: the WebSocket token (docs/security.md, "Authentication")."""

from __future__ import annotations

from pydantic import BaseModel, Field


class WsTokenOut(BaseModel):
    token: str = Field(
        description="HMAC-signed, bound to the principal; for WebSocket handshakes only: "
        "`?token=<token>` or the subprotocols `qmesh, bearer.<token>`"
    )
    expires_at: str = Field(description="ISO 8601, UTC")
    expires_in_s: float
    principal: str
    role: str
