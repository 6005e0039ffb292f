"""Capability adverts: what a node offers, published on ``ADVERT_TOPIC`` about once a second.

Adverts are latest-wins *state*, not a log: GossipSub may drop or delay any single one, so
consumers keep the newest per peer and treat a peer as gone once its adverts go stale.
Validation is strict and reason-coded so the coordinator can count, not crash on, bad input.
"""

from __future__ import annotations

import json
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quantum_mesh.mesh.codec import dumps
from quantum_mesh.mesh.errors import AdvertRejected
from quantum_mesh.mesh.protocol import MAX_ADVERT_BYTES

Availability = Literal["AVAILABLE", "BUSY", "DRAINING"]

#: Rejection reasons, in the order they are checked; also the keys of ``advert_stats``.
REASON_OVERSIZED = "oversized"
REASON_MALFORMED = "malformed"
REASON_STALE = "stale"
REASON_PEER_MISMATCH = "peer_mismatch"
REJECTION_REASONS = (REASON_MALFORMED, REASON_OVERSIZED, REASON_STALE, REASON_PEER_MISMATCH)
#: A valid advert from a peer the coordinator has no enrollment for: dropped by the
#: coordinator (not the bridge), counted without a peer label.
REASON_UNKNOWN_PEER = "unknown_peer"


class Advert(BaseModel):
    """One node's self-description. ``load`` is in-flight work divided by worker count."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    peer_id: str = Field(min_length=1, max_length=128)
    name: str = Field(max_length=128)
    services: list[str] = Field(max_length=64)
    qubit_min: int = Field(ge=0)
    qubit_max: int = Field(ge=0)
    fidelity: float = Field(ge=0.0, le=1.0)
    noise_level: float = Field(ge=0.0, le=1.0)
    load: float = Field(ge=0.0, le=1.0)
    availability: Availability
    workers: int = Field(ge=1)
    listen_addrs: list[str] = Field(max_length=16)
    version: str = Field(max_length=64)
    sent_at: float
    seq: int = Field(ge=0)
    #: Round trips (ms) this node measured to other nodes (``node/links.py``); empty from a
    #: node that measures none (and from nodes older than the field).
    links: dict[str, float] = Field(default_factory=dict, max_length=16)
    #: Optional protocol features this node serves (``protocol.NODE_FEATURES``); empty from
    #: nodes older than the field.
    features: list[str] = Field(default_factory=list, max_length=16)


def encode_advert(advert: Advert) -> bytes:
    """Serialise an advert for publishing; refuses one that peers would reject as oversized."""
    data = dumps(advert.model_dump(mode="json"))
    if len(data) > MAX_ADVERT_BYTES:
        raise AdvertRejected(
            REASON_OVERSIZED, f"advert of {len(data)} bytes exceeds {MAX_ADVERT_BYTES}"
        )
    return data


def validate_advert(data: bytes, *, from_peer: str, now: float, max_age_s: float) -> Advert:
    """Parse and check an advert received from pubsub.

    ``from_peer`` must be the pubsub message's signed ``from_id`` (strict signing verifies the
    signature), so a node can only speak for itself.

    Raises:
        AdvertRejected: with ``reason`` one of ``REJECTION_REASONS``.
    """
    if len(data) > MAX_ADVERT_BYTES:
        raise AdvertRejected(
            REASON_OVERSIZED, f"advert of {len(data)} bytes exceeds {MAX_ADVERT_BYTES}"
        )
    try:
        advert = Advert.model_validate(json.loads(data))
    except (UnicodeDecodeError, ValueError, ValidationError) as error:
        raise AdvertRejected(REASON_MALFORMED, f"advert does not parse: {error}") from error
    if advert.qubit_min > advert.qubit_max or not math.isfinite(advert.sent_at):
        raise AdvertRejected(REASON_MALFORMED, "advert has an empty qubit range or bad time")
    age = now - advert.sent_at
    if abs(age) > max_age_s:
        raise AdvertRejected(REASON_STALE, f"advert is {age:.1f} s old (limit {max_age_s} s)")
    if advert.peer_id != from_peer:
        raise AdvertRejected(
            REASON_PEER_MISMATCH,
            f"advert claims peer {advert.peer_id} but was signed by {from_peer}",
        )
    return advert
