"""FastAPI dependencies as composable ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request

from quantum_mesh.control.coordinator import Coordinator


def get_coordinator(request: Request) -> Coordinator:
    return request.app.state.coordinator  # type: ignore[no-any-return]


CoordinatorDep = Annotated[Coordinator, Depends(get_coordinator)]
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
