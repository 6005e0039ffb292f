"""Wire-level constants of the quantum-mesh protocols (see docs/wire-protocol.md).

Everything both sides of the mesh must agree on lives here, so a version bump is one edit:
protocol ids, limits and timeouts, method names, advertised service types, reservation
reasons and remote error codes. Code in ``mesh/``, ``node/`` and ``control/`` uses these
names, never the string literals.
"""

from __future__ import annotations

from typing import Final

#: Stream protocol for one request/response exchange (one new stream per call, JSON bodies).
#: Kept for simple peers (a js-libp2p ``ping``, a shell tool); the coordinator uses 2.
INVOKE_PROTOCOL: Final = "/qmesh/invoke/1.0.0"
#: Invoke protocol 2: one long-lived stream per peer carrying many calls with ids, replies in
#: the order they finish, msgpack bodies with arrays as raw bytes (``mesh/channel.py``).
CHANNEL_PROTOCOL: Final = "/qmesh/invoke/2.0.0"
#: GossipSub topic on which nodes publish their capability adverts.
ADVERT_TOPIC: Final = "qmesh/adverts/1.0.0"
#: The ``v`` field of protocol-1 requests and responses, and of adverts.
PROTOCOL_VERSION: Final = 1
#: The ``v`` field of protocol-2 (channel) requests and responses.
CHANNEL_VERSION: Final = 2

#: Largest invoke frame body accepted by default (the 4-byte prefix is not counted).
DEFAULT_MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
#: Largest encoded advert; anything bigger is rejected before it is parsed.
MAX_ADVERT_BYTES: Final = 16 * 1024
#: Length prefix of an invoke frame: unsigned 32-bit big-endian.
FRAME_HEADER_BYTES: Final = 4
#: Invoke streams one trusted remote peer may have in flight on a host at once; one more is
#: answered ``busy`` before a byte of it is read. A node allows its pool limit on top.
MAX_STREAMS_PER_PEER: Final = 16
#: Longest id-like string param a node accepts (``reservation_id``, ``service_type``).
MAX_PARAM_ID_CHARS: Final = 128

# --- timeouts (seconds) --------------------------------------------------------------------
#: Dialling a peer that is not connected yet (a dead peer fails well before this).
DIAL_TIMEOUT_S: Final = 5.0
#: Default budget of a whole invocation when the caller gives none.
DEFAULT_INVOKE_TIMEOUT_S: Final = 30.0
#: Default budget of a ``ping`` invocation.
PING_TIMEOUT_S: Final = 5.0
#: Bound on an empty asyncio -> Trio -> asyncio hop. Invocations are bounded by their own
#: timeout on the asyncio side, so a wedged Trio thread can never hang a caller.
BRIDGE_GRACE_S: Final = 2.0
#: How long a node waits to read one request frame from a new inbound stream.
INBOUND_READ_TIMEOUT_S: Final = 30.0
#: Adverts older than this (by their ``sent_at``) are stale.
ADVERT_MAX_AGE_S: Final = 5.0
#: A node re-advertises at least this often (GossipSub allows ~10 msg/s per peer and topic).
ADVERT_INTERVAL_S: Final = 1.0
#: Minimum spacing between two adverts of one node, including "on change" adverts. Under load
#: a node flips between BUSY and AVAILABLE many times a second; the coordinator counts its own
#: in-flight work, so more adverts would only flood gossipsub (measured: thousands of dropped
#: relay messages per minute at 0.2 s).
ADVERT_MIN_SPACING_S: Final = 0.5
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
#: A work call's inline reservation (``ENVELOPE_RESERVE``) was refused; the message is the
#: refusal's reason (``REASON_*``), and the work was not run.
ERR_RESERVATION_REFUSED: Final = "reservation_refused"
#: A host refuses streams from peers it does not serve (the coordinator: peers not enrolled
#: and approved; a node: anyone but its coordinator and allowed peers), before reading them.
ERR_NOT_ENROLLED: Final = "not_enrolled"

#: Codes that no retry can fix, on this node or another: the request itself is wrong, or no
#: node of this build can serve it.
NON_RETRYABLE_CODES: Final = frozenset(
    {ERR_BAD_REQUEST, ERR_UNKNOWN_METHOD, ERR_HANDLER_UNAVAILABLE}
)
#: Codes that mean "this node is full right now": retry later or elsewhere.
BUSY_CODES: Final = frozenset({ERR_BUSY})

# --- work-request envelope ---------------------------------------------------------------------
# Keys the coordinator adds to a work method's params for the node itself; the node reads and
# removes them before the handler runs, so handlers see only their own payload.
ENVELOPE_RESERVATION_ID: Final = "reservation_id"
ENVELOPE_UNIT_ID: Final = "unit_id"
ENVELOPE_JOB_ID: Final = "coordinator_job_id"
#: ``{"service_type", "min_fidelity"?, "ttl_s"?}``: reserve (and commit) ``reservation_id`` with
#: the work itself, one round trip instead of two; only sent to nodes advertising
#: ``FEATURE_INLINE_RESERVE``.
ENVELOPE_RESERVE: Final = "reserve"
ENVELOPE_KEYS: Final = frozenset(
    {ENVELOPE_RESERVATION_ID, ENVELOPE_UNIT_ID, ENVELOPE_JOB_ID, ENVELOPE_RESERVE}
)

# --- node features (``Advert.features``): what a caller may rely on beyond protocol 1 ---------
FEATURE_INLINE_RESERVE: Final = "inline_reserve"
NODE_FEATURES: Final[tuple[str, ...]] = (FEATURE_INLINE_RESERVE,)

# --- methods ----------------------------------------------------------------------------------
# Answered on the node's network loop (``node/service.py``).
METHOD_PING: Final = "ping"
METHOD_NODE_STATUS: Final = "node_status"
METHOD_RESERVE: Final = "reserve"
METHOD_COMMIT: Final = "commit"
METHOD_RELEASE: Final = "release"
#: Coordinator only: degrade this node for a while, or restore it (``node/degrade.py``).
METHOD_DEGRADE: Final = "degrade"
# Run in the node's worker pool (``node/handlers.py``).
METHOD_EXECUTE_FRAGMENT: Final = "execute_fragment"
METHOD_EXECUTE_DYNAMIC: Final = "execute_dynamic"
METHOD_QAOA_BLOCK: Final = "qaoa_block"
METHOD_QAOA_SCHEDULES: Final = "qaoa_schedules"
METHOD_SQD_BATCH: Final = "sqd_batch"
# Tests and benchmarks only.
METHOD_ECHO: Final = "echo"
METHOD_DEBUG_SLEEP: Final = "debug_sleep"

# --- service types a node advertises (``Advert.services``, ``reserve``'s ``service_type``) ----
SERVICE_SINGLE_QUBIT: Final = "single_qubit"
SERVICE_TWO_QUBIT: Final = "two_qubit"
SERVICE_MULTI_QUBIT: Final = "multi_qubit"
SERVICE_BELL_PAIR: Final = "bell_pair"
SERVICE_CNOT: Final = "cnot"
SERVICE_CZ: Final = "cz"
SERVICE_TELEPORTATION: Final = "teleportation"
SERVICE_SYNDROME_EXTRACTION: Final = "syndrome_extraction"
SERVICE_DISTILLATION: Final = "distillation"
SERVICE_MEASUREMENT_FEEDFORWARD: Final = "measurement_feedforward"
SERVICE_QAOA_BLOCK: Final = "qaoa_block"
SERVICE_SQD_BATCH: Final = "sqd_batch"
#: What a node offers unless configured otherwise.
DEFAULT_SERVICES: Final[tuple[str, ...]] = (
    SERVICE_SINGLE_QUBIT,
    SERVICE_TWO_QUBIT,
    SERVICE_MULTI_QUBIT,
    SERVICE_BELL_PAIR,
    SERVICE_CNOT,
    SERVICE_CZ,
    SERVICE_TELEPORTATION,
    SERVICE_SYNDROME_EXTRACTION,
    SERVICE_DISTILLATION,
    SERVICE_MEASUREMENT_FEEDFORWARD,
    SERVICE_QAOA_BLOCK,
    SERVICE_SQD_BATCH,
)

# --- reservation reasons (the ``reason`` of a refused ``reserve`` or failed ``commit``) -------
REASON_SERVICE_NOT_OFFERED: Final = "service_not_offered"
REASON_FIDELITY_BELOW_MINIMUM: Final = "fidelity_below_minimum"
REASON_SATURATED: Final = "saturated"
REASON_UNKNOWN_RESERVATION: Final = "unknown_reservation"
#: Refusals that mean "full right now", not "never here".
BUSY_REASONS: Final = frozenset({REASON_SATURATED})
