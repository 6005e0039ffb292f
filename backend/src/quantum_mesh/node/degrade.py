"""A node degraded on purpose, for a while: the benchmarks' ``degraded_node`` scenario.

The coordinator (and only it) sends ``degrade`` with a profile; until it sends
``{"restore": true}`` or the profile's ``ttl_s`` runs out, the node

- refuses ``refuse_share`` of its ``reserve`` calls as ``saturated`` (deterministically: a
  running sum of the share, one refusal each time it passes a whole number);
- runs its workers ``slowdown`` times slower: after each work method the worker process
  itself sleeps ``(slowdown - 1)`` times what the method took, so it is held, as a slower
  machine's worker would be (``node/handlers.py`` ``run_method``);
- applies ``noise_level`` (when given) in place of its configured coherent-error strength.

Pure bookkeeping with the clock passed in (the node calls it from its Trio loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Longest a degradation lasts without a restore (a coordinator that crashed mid-run).
MAX_TTL_S = 900.0
MAX_SLOWDOWN = 20.0


def _number(params: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name!r} must be a number")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{name!r} must lie in [{low:g}, {high:g}]")
    return number


@dataclass
class Degradation:
    refuse_share: float
    slowdown: float
    noise_level: float | None
    until: float
    refused: int = 0
    slowed: int = 0
    _debt: float = 0.0

    @classmethod
    def from_params(cls, params: dict[str, Any], *, now: float) -> Degradation:
        """Raises ValueError for a share outside [0, 1], a slowdown outside [1, 20], a noise
        level outside [0, 1], a TTL that is not positive (capped at ``MAX_TTL_S``)."""
        noise = params.get("noise_level")
        ttl = _number(params, "ttl_s", MAX_TTL_S, 0.0, math.inf)
        if ttl <= 0:
            raise ValueError("'ttl_s' must be positive")
        return cls(
            refuse_share=_number(params, "refuse_share", 0.0, 0.0, 1.0),
            slowdown=_number(params, "slowdown", 1.0, 1.0, MAX_SLOWDOWN),
            noise_level=None if noise is None else _number(params, "noise_level", 0, 0.0, 1.0),
            until=now + min(ttl, MAX_TTL_S),
        )

    def active(self, now: float) -> bool:
        return now < self.until

    def refuse_next(self) -> bool:
        """Whether this ``reserve`` is one of the refused share."""
        self._debt += self.refuse_share
        if self._debt >= 1.0 - 1e-9:
            self._debt -= 1.0
            self.refused += 1
            return True
        return False

    def report(self, *, now: float) -> dict[str, Any]:
        return {
            "degraded": self.active(now),
            "refuse_share": self.refuse_share,
            "slowdown": self.slowdown,
            "noise_level": self.noise_level,
            "reservations_refused": self.refused,
            "calls_slowed": self.slowed,
            "expires_in_s": round(max(0.0, self.until - now), 3),
        }
