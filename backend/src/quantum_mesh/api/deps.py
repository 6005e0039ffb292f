"""FastAPI dependencies as composable ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request
from starlette.requests import HTTPConnection

from quantum_mesh.api.security import PRINCIPAL_SCOPE_KEY, Principal
from quantum_mesh.control.coordinator import Coordinator
from quantum_mesh.errors import Forbidden


# Dependencies are ``async def`` although they never wait: FastAPI runs a plain ``def``
# dependency in a worker thread, a thread hop on every request.
async def get_coordinator(request: Request) -> Coordinator:
    return request.app.state.coordinator  # type: ignore[no-any-return]


CoordinatorDep = Annotated[Coordinator, Depends(get_coordinator)]


# --- who is calling (set by api/security.py) ---------------------------------------------------
def principal_of(connection: HTTPConnection) -> Principal | None:
    """The authenticated principal of a request or WebSocket (None on an open path)."""
    principal = connection.scope.get(PRINCIPAL_SCOPE_KEY)
    return principal if isinstance(principal, Principal) else None


async def get_principal(request: Request) -> Principal:
    principal = principal_of(request)
    if principal is None:  # a route that needs a principal was listed in QMESH_OPEN_PATHS
        raise HTTPException(
            status_code=401,
            detail="This endpoint needs an API key even when its path is open",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Forbidden(
            f"{principal.name} may not do this: it needs the admin role",
            details={"principal": principal.name, "required_role": "admin"},
        )
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


def may_see(principal: Principal, owner: str | None) -> bool:
    """Admins see everything; a user sees what it owns (rows without owner: admins only)."""
    return principal.is_admin or (owner is not None and owner == principal.name)


def ensure_owner(principal: Principal, owner: str | None, **details: Any) -> None:
    """Raise 403 ``forbidden`` unless ``principal`` may see what ``owner`` owns."""
    if not may_see(principal, owner):
        what = ", ".join(f"{k} {v}" for k, v in details.items()) or "this resource"
        raise Forbidden(
            f"{what} belongs to another principal", details={**details, "principal": principal.name}
        )


def owner_filter(principal: Principal) -> str | None:
    """The ``owner`` a list is restricted to: None (everything) for admins."""
    return None if principal.is_admin else principal.name


#: Page size bounds of every list endpoint (docs/api.md, "Parameter bounds").
MAX_LIMIT = 500
#: Largest ``offset`` a list accepts: far past any real table, far inside the 64-bit integers
#: PostgreSQL, SQLite and MongoDB take, so an absurd offset is a 422 and never reaches a query.
MAX_OFFSET = 10**9
LimitQ = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"page size, 1..{MAX_LIMIT}")]
OffsetQ = Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"items to skip, 0..{MAX_OFFSET}")]


def page(items: list[Any], total: int, limit: int, offset: int) -> dict[str, Any]:
    """The contract's list shape."""
    return {"items": items, "total": total, "limit": limit, "offset": offset}
