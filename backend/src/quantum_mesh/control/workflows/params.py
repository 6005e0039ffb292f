"""Small checks every workflow's parameters share."""

from __future__ import annotations

from typing import Any

from quantum_mesh.errors import InvalidInput


def seed_of(params: dict[str, Any]) -> int:
    seed = params.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise InvalidInput("seed must be an integer in [0, 2**32)", details={"seed": seed})
    return seed


def require_keys(params: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if key not in params:
            raise InvalidInput(f"params.{key} is required", details={"field": key})
