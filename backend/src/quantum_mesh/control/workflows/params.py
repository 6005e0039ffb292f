"""Small checks every workflow's parameters share.

Each raises :class:`InvalidInput` (422) whose message starts with ``params.<name>`` and whose
``details.field`` is ``<name>``, so a client sees which parameter to fix.
"""

from __future__ import annotations

import math
from typing import Any

from quantum_mesh.errors import InvalidInput


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def seed_of(params: dict[str, Any]) -> int:
    seed = params.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise InvalidInput(
            f"params.seed must be an integer in [0, 2**32). Instead, got {_short(seed)}.",
            details={"field": "seed", "seed": _short(seed)},
        )
    return seed


def reject_unknown(params: dict[str, Any], known: set[str] | frozenset[str], kind: str) -> None:
    """A misspelled setting must not run silently with its default (``"sed": 5`` with seed
    0): any key outside ``known`` is refused, naming it and every valid one."""
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise InvalidInput(
            f"params.{unknown[0]} is not a parameter of {kind}"
            + (f" (nor are {', '.join(unknown[1:])})" if len(unknown) > 1 else "")
            + f". Valid: {', '.join(sorted(known))}.",
            details={"field": unknown[0], "unknown": unknown, "valid": sorted(known)},
        )


def require_keys(params: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if key not in params:
            raise InvalidInput(f"params.{key} is required", details={"field": key})


def int_param(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    """``params[name]`` (or ``default``): an integer (not a bool, not 2.5) in [low, high]."""
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(
            f"params.{name} must be an integer in [{low}, {high}]. Instead, got {_short(value)}.",
            details={"field": name, "minimum": low, "maximum": high},
        )
    return value


def finite_number(value: Any, bound: float) -> float | None:
    """``value`` as a float when it is a JSON number (not a bool) with ``|value| <= bound``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and abs(value) > bound:  # float(10**400) would overflow
        return None
    number = float(value)
    return number if math.isfinite(number) and abs(number) <= bound else None


def number_param(params: dict[str, Any], name: str, default: float, bound: float) -> float:
    """``params[name]`` (or ``default``): a finite number with ``|value| <= bound``."""
    value = params.get(name, default)
    number = finite_number(value, bound)
    if number is None:
        raise InvalidInput(
            f"params.{name} must be a finite number in [-{bound:g}, {bound:g}]. "
            f"Instead, got {_short(value)}.",
            details={"field": name, "bound": bound},
        )
    return number


MAX_NESTING = 32


def check_storable(value: Any, path: str = "params", depth: int = 0) -> None:
    """``path`` names ``value`` in messages ("" for a request body's top level).

    Refuse what the job's JSON column cannot store: ``NaN``/``Infinity`` (Python's JSON
    parser accepts them, PostgreSQL's ``jsonb`` does not) and NUL characters in strings or
    keys (PostgreSQL text refuses them), at any depth, plus absurd nesting.

    Raises:
        InvalidInput: naming the first offending path (``params.foo[2]``).
    """
    field = path.removeprefix("params.").split("[", 1)[0].split(".", 1)[0] or "body"
    if depth > MAX_NESTING:
        raise InvalidInput(
            f"{path} is nested more than {MAX_NESTING} levels deep.", details={"field": field}
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(
            f"{path} must be a finite number (NaN and Infinity are refused).",
            details={"field": field},
        )
    if isinstance(value, str) and "\x00" in value:
        raise InvalidInput(f"{path} must not contain NUL characters.", details={"field": field})
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                raise InvalidInput(
                    f"{path} has a key with a NUL character.", details={"field": field}
                )
            check_storable(item, f"{path}.{key}" if path else str(key), depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_storable(item, f"{path}[{index}]", depth + 1)
