"""What a handler running in a node's worker process knows about the node it runs on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NodeContext:
    """Identity and configured behaviour of the service node executing a request.

    ``noise_level`` is the node's configured coherent-error strength (0 = ideal). Handlers
    that execute quantum operations must really apply it, so that a noisy node's observed
    fidelity is genuinely lower.
    """

    peer_id: str
    name: str
    noise_level: float = 0.0
    blas_threads: int = 1
    #: Workers held this many times as long as a method took (a degraded node, 1 = normal).
    slowdown: float = 1.0
