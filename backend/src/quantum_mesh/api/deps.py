"""FastAPI dependencies as composable ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request

from quantum_mesh.control.coordinator import Coordinator


def get_coordinator(request: Request) -> Coordinator:
    return request.app.state.coordinator  # type: ignore[no-any-return]


CoordinatorDep = Annotated[Coordinator, Depends(get_coordinator)]
LimitQ = Annotated[int, Query(ge=1, le=500)]
OffsetQ = Annotated[int, Query(ge=0)]


def page(items: list[Any], total: int, limit: int, offset: int) -> dict[str, Any]:
    """The contract's list shape."""
    return {"items": items, "total": total, "limit": limit, "offset": offset}
