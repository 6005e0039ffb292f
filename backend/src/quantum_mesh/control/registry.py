"""The coordinator's freshness-aware view of the service nodes heard on the mesh.

Planning reads a snapshot of this registry, never the network, so a plan is deterministic for
a given snapshot and configuration.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from quantum_mesh.control.states import EnrollmentStatus

# Observed failure rate starts from a weak prior so one early failure does not ban a node.
_PRIOR_SUCCESSES = 4.0
_LATENCY_EWMA = 0.3


@dataclass
class PeerEntry:
    peer_id: str
    advert: dict[str, Any]
    last_seen_mono: float
    updated_at: datetime
    connected: bool = True
    latency_s: float | None = None
    successes: int = 0
    failures: int = 0
    observed_fidelity: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failure_rate(self) -> float:
        return self.failures / (self.successes + self.failures + _PRIOR_SUCCESSES)


@dataclass(frozen=True)
class PeerView:
    """An immutable snapshot of one peer, as the planner and the API see it."""

    peer_id: str
    name: str
    services: tuple[str, ...]
    listen_addrs: tuple[str, ...]
    fidelity: float
    qubit_min: int
    qubit_max: int
    load: float
    availability: str
    updated_at: datetime
    fresh: bool
    connected: bool
    enrollment: str | None
    latency_s: float | None
    failure_rate: float
    observed_fidelity: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "name": self.name,
            "listen_addrs": list(self.listen_addrs),
            "services": list(self.services),
            "fidelity": self.fidelity,
            "qubit_min": self.qubit_min,
            "qubit_max": self.qubit_max,
            "availability": self.availability,
            "load": self.load,
            "updated_at": self.updated_at.isoformat(),
            "fresh": self.fresh,
            "connected": self.connected,
            "enrollment": self.enrollment,
            "latency_ms": None if self.latency_s is None else round(self.latency_s * 1000, 3),
            "failure_rate": round(self.failure_rate, 4),
            "observed_fidelity": self.observed_fidelity,
        }


class PeerRegistry:
    def __init__(self, *, stale_after_s: float, require_enrollment: bool) -> None:
        self.stale_after_s = stale_after_s
        self.require_enrollment = require_enrollment
        self._peers: dict[str, PeerEntry] = {}
        self._enrollment: dict[str, str] = {}

    # --- ingest --------------------------------------------------------------------------
    def observe_advert(self, advert: Mapping[str, Any]) -> PeerEntry:
        peer_id = str(advert["peer_id"])
        now = time.monotonic()
        entry = self._peers.get(peer_id)
        if entry is None:
            entry = PeerEntry(peer_id, dict(advert), now, datetime.now(UTC))
            self._peers[peer_id] = entry
        else:
            entry.advert = dict(advert)
            entry.last_seen_mono = now
            entry.updated_at = datetime.now(UTC)
            entry.connected = True
        return entry

    def restore(self, peer_id: str, advert: Mapping[str, Any], updated_at: datetime) -> None:
        """Load a persisted advert at start-up; it stays stale until the peer is heard again."""
        if peer_id not in self._peers:
            self._peers[peer_id] = PeerEntry(
                peer_id, dict(advert), time.monotonic() - 1e9, updated_at, connected=False
            )

    def mark_disconnected(self, peer_id: str) -> None:
        entry = self._peers.get(peer_id)
        if entry is not None:
            entry.connected = False

    def record_latency(self, peer_id: str, seconds: float) -> None:
        entry = self._peers.get(peer_id)
        if entry is not None:
            prev = entry.latency_s
            entry.latency_s = (
                seconds if prev is None else (1 - _LATENCY_EWMA) * prev + _LATENCY_EWMA * seconds
            )

    def record_outcome(
        self, peer_id: str, *, ok: bool, observed_fidelity: float | None = None
    ) -> None:
        entry = self._peers.get(peer_id)
        if entry is None:
            return
        if ok:
            entry.successes += 1
        else:
            entry.failures += 1
        if observed_fidelity is not None:
            entry.observed_fidelity = observed_fidelity

    def forget_stale(self, *, older_than_s: float) -> list[str]:
        """Drop peers not heard for ``older_than_s`` (their last advert stays in the database)."""
        cutoff = time.monotonic() - older_than_s
        gone = [p for p, e in self._peers.items() if e.last_seen_mono < cutoff]
        for peer_id in gone:
            del self._peers[peer_id]
        return gone

    def set_enrollment(self, peer_id: str, status: str) -> None:
        self._enrollment[peer_id] = status

    def enrollment_of(self, peer_id: str) -> str | None:
        return self._enrollment.get(peer_id)

    # --- queries -------------------------------------------------------------------------
    def is_fresh(self, entry: PeerEntry, now_mono: float | None = None) -> bool:
        now = time.monotonic() if now_mono is None else now_mono
        return entry.connected and (now - entry.last_seen_mono) <= self.stale_after_s

    def is_trusted(self, peer_id: str) -> bool:
        if not self.require_enrollment:
            return self._enrollment.get(peer_id) not in {
                EnrollmentStatus.SUSPENDED,
                EnrollmentStatus.REVOKED,
            }
        return self._enrollment.get(peer_id) == EnrollmentStatus.APPROVED

    def is_usable(self, peer_id: str) -> bool:
        entry = self._peers.get(peer_id)
        return entry is not None and self.is_fresh(entry) and self.is_trusted(peer_id)

    def last_seen(self, peer_id: str) -> float:
        """Monotonic time of the peer's last advert (``-inf`` when never heard)."""
        entry = self._peers.get(peer_id)
        return entry.last_seen_mono if entry else float("-inf")

    def advert_of(self, peer_id: str) -> dict[str, Any]:
        entry = self._peers.get(peer_id)
        return dict(entry.advert) if entry else {}

    def addrs_of(self, peer_id: str) -> list[str]:
        entry = self._peers.get(peer_id)
        return list(entry.advert.get("listen_addrs", [])) if entry else []

    def view(self, peer_id: str) -> PeerView | None:
        entry = self._peers.get(peer_id)
        return None if entry is None else self._view(entry, time.monotonic())

    def snapshot(self) -> list[PeerView]:
        now = time.monotonic()
        return [self._view(e, now) for e in sorted(self._peers.values(), key=lambda e: e.peer_id)]

    def usable_snapshot(self) -> list[PeerView]:
        return [v for v in self.snapshot() if v.fresh and self.is_trusted(v.peer_id)]

    def _view(self, entry: PeerEntry, now: float) -> PeerView:
        ad = entry.advert
        return PeerView(
            peer_id=entry.peer_id,
            name=str(ad.get("name", "")),
            services=tuple(ad.get("services", ())),
            listen_addrs=tuple(ad.get("listen_addrs", ())),
            fidelity=float(ad.get("fidelity", 0.0)),
            qubit_min=int(ad.get("qubit_min", 1)),
            qubit_max=int(ad.get("qubit_max", 0)),
            load=float(ad.get("load", 0.0)),
            availability=str(ad.get("availability", "UNKNOWN")),
            updated_at=entry.updated_at,
            fresh=self.is_fresh(entry, now),
            connected=entry.connected,
            enrollment=self._enrollment.get(entry.peer_id),
            latency_s=entry.latency_s,
            failure_rate=entry.failure_rate,
            observed_fidelity=entry.observed_fidelity,
        )
