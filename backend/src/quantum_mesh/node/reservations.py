"""Node-side capacity reservations: a short promise to run one piece of work soon.

Pure bookkeeping with the clock passed in, so it is testable without sleeping; the node calls
it from its Trio loop. A reservation counts against capacity until it expires, is released,
or is consumed by the execution request that carries its ``reservation_id`` (from then on
that request counts as in-flight work instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from quantum_mesh.mesh.protocol import (
    MAX_PARAM_ID_CHARS,
    REASON_FIDELITY_BELOW_MINIMUM,
    REASON_SATURATED,
    REASON_SERVICE_NOT_OFFERED,
    REASON_UNKNOWN_RESERVATION,
)

#: Longest reservation a node grants, whatever the caller asks for.
MAX_TTL_S = 300.0
#: Capacity per worker: reservations + in-flight requests may reach ``workers * SLOTS``. The
#: coordinator uses as many as keep a worker busy while it is still persisting the next units'
#: reservations (``control/sizing.py``, ``PipelineDepth``): up to 16 for millisecond units,
#: 2 for long ones. Units wait in the worker pool's queue, never on the network.
SLOTS_PER_WORKER = 16


def check_id(value: object, name: str) -> str:
    """A non-empty string of at most ``MAX_PARAM_ID_CHARS`` characters.

    Raises:
        ValueError: anything else (the node answers ``bad_request``).
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name!r} must be a non-empty string")
    if len(value) > MAX_PARAM_ID_CHARS:
        raise ValueError(f"{name!r} is longer than {MAX_PARAM_ID_CHARS} characters")
    return value


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name!r} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name!r} must be finite")
    return number


def check_ttl(value: object) -> float:
    """A finite number of seconds > 0 (NaN never compares as expired, so it would hold a
    slot for ever); values above ``MAX_TTL_S`` are capped by ``reserve``, not refused."""
    ttl = _number(value, "ttl_s")
    if ttl <= 0:
        raise ValueError("'ttl_s' must be positive")
    return ttl


def check_fidelity(value: object) -> float:
    """A finite number in [0, 1]."""
    fidelity = _number(value, "min_fidelity")
    if not 0.0 <= fidelity <= 1.0:
        raise ValueError("'min_fidelity' must lie in [0, 1]")
    return fidelity


@dataclass(slots=True)
class Reservation:
    reservation_id: str
    service_type: str
    ttl_s: float
    expires_at: float
    committed: bool = False


class ReservationBook:
    """Reservations of one node."""

    def __init__(self, *, services: tuple[str, ...], fidelity: float, workers: int) -> None:
        self._services = frozenset(services)
        self._fidelity = fidelity
        self._capacity = workers * SLOTS_PER_WORKER
        self._active: dict[str, Reservation] = {}

    def expire(self, *, now: float) -> int:
        """Drop expired reservations; returns how many were dropped."""
        dead = [rid for rid, r in self._active.items() if r.expires_at <= now]
        for rid in dead:
            del self._active[rid]
        return len(dead)

    def active_count(self, *, now: float) -> int:
        self.expire(now=now)
        return len(self._active)

    def reserve(
        self,
        *,
        reservation_id: str,
        service_type: str,
        min_fidelity: float,
        ttl_s: float,
        in_flight: int,
        now: float,
    ) -> dict[str, Any]:
        """Accept or refuse; the reply is the wire shape of the ``reserve`` method.

        Raises:
            ValueError: an id that is not a bounded string, a ``ttl_s`` that is not a finite
                positive number, a ``min_fidelity`` outside [0, 1] (or not finite).
        """
        check_id(reservation_id, "reservation_id")
        check_id(service_type, "service_type")
        min_fidelity = check_fidelity(min_fidelity)
        ttl_s = check_ttl(ttl_s)
        self.expire(now=now)
        existing = self._active.get(reservation_id)
        if existing is not None:  # a retried reserve: same answer, no double booking
            return {"accepted": True, "reason": None, "expires_at": existing.expires_at}
        reason: str | None = None
        if service_type not in self._services:
            reason = REASON_SERVICE_NOT_OFFERED
        elif self._fidelity < min_fidelity:
            reason = REASON_FIDELITY_BELOW_MINIMUM
        elif len(self._active) + in_flight >= self._capacity:
            reason = REASON_SATURATED
        if reason is not None:
            return {"accepted": False, "reason": reason, "expires_at": now}
        ttl = min(ttl_s, MAX_TTL_S)
        self._active[reservation_id] = Reservation(
            reservation_id=reservation_id,
            service_type=service_type,
            ttl_s=ttl,
            expires_at=now + ttl,
        )
        return {"accepted": True, "reason": None, "expires_at": now + ttl}

    def commit(self, *, reservation_id: str, now: float) -> dict[str, Any]:
        """Confirm a reservation and restart its TTL (the work is about to be sent)."""
        check_id(reservation_id, "reservation_id")
        self.expire(now=now)
        reservation = self._active.get(reservation_id)
        if reservation is None:
            return {"committed": False, "reason": REASON_UNKNOWN_RESERVATION, "expires_at": now}
        reservation.committed = True
        reservation.expires_at = now + reservation.ttl_s
        return {"committed": True, "reason": None, "expires_at": reservation.expires_at}

    def release(self, *, reservation_id: str) -> dict[str, Any]:
        check_id(reservation_id, "reservation_id")
        return {"released": self._active.pop(reservation_id, None) is not None}

    def consume(self, *, reservation_id: str) -> bool:
        """The execution request carrying this reservation has arrived."""
        return self._active.pop(reservation_id, None) is not None
