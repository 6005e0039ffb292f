"""Wire-level constants of the quantum-mesh protocols (see docs/wire-protocol.md).

Everything both sides of the mesh must agree on lives here, so a version bump is one edit.
"""

from __future__ import annotations

from typing import Final

#: Stream protocol for one request/response exchange (one new stream per call).
INVOKE_PROTOCOL: Final = "/qmesh/invoke/1.0.0"
#: GossipSub topic on which nodes publish their capability adverts.
ADVERT_TOPIC: Final = "qmesh/adverts/1.0.0"
#: The ``v`` field of every request, response and advert this build speaks.
PROTOCOL_VERSION: Final = 1

#: Largest invoke frame body accepted by default (the 4-byte prefix is not counted).
DEFAULT_MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
#: Largest encoded advert; anything bigger is rejected before it is parsed.
MAX_ADVERT_BYTES: Final = 16 * 1024
#: Length prefix of an invoke frame: unsigned 32-bit big-endian.
FRAME_HEADER_BYTES: Final = 4

# --- timeouts (seconds) --------------------------------------------------------------------
#: Dialling a peer that is not connected yet (a dead peer fails well before this).
DIAL_TIMEOUT_S: Final = 5.0
#: Default budget of a whole invocation when the caller gives none.
DEFAULT_INVOKE_TIMEOUT_S: Final = 30.0
#: Default budget of a ``ping`` invocation.
PING_TIMEOUT_S: Final = 5.0
#: Extra time the asyncio side waits beyond the Trio-side timeout before giving up on a
#: reply, so a wedged Trio thread can never hang a caller.
BRIDGE_GRACE_S: Final = 2.0
#: How long a node waits to read one request frame from a new inbound stream.
INBOUND_READ_TIMEOUT_S: Final = 30.0
#: Adverts older than this (by their ``sent_at``) are stale.
ADVERT_MAX_AGE_S: Final = 5.0
#: A node re-advertises at least this often (GossipSub allows ~10 msg/s per peer and topic).
ADVERT_INTERVAL_S: Final = 1.0
#: Minimum spacing between two adverts of one node, including "on change" adverts.
ADVERT_MIN_SPACING_S: Final = 0.2
#: Bounded exponential backoff for a node dialling its bootstrap coordinator.
BOOTSTRAP_RETRY_INITIAL_S: Final = 0.2
BOOTSTRAP_RETRY_MAX_S: Final = 5.0
#: How long ``MeshBridge.stop`` waits for the Trio thread to finish.
BRIDGE_STOP_TIMEOUT_S: Final = 10.0

# --- remote error codes ---------------------------------------------------------------------
ERR_UNSUPPORTED_VERSION: Final = "unsupported_version"
ERR_BAD_REQUEST: Final = "bad_request"
ERR_UNKNOWN_METHOD: Final = "unknown_method"
ERR_HANDLER_UNAVAILABLE: Final = "handler_unavailable"
ERR_HANDLER_ERROR: Final = "handler_error"
ERR_BUSY: Final = "busy"
ERR_FRAME_TOO_LARGE: Final = "frame_too_large"
ERR_PROTOCOL: Final = "protocol_error"
ERR_WORKER_CRASHED: Final = "worker_crashed"
