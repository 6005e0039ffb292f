"""Cost-based, deterministic assignment of fragments to service nodes.

For a fixed registry snapshot and weights the plan is always the same: candidates are scored,
ties broken by peer ID. Every cost component is recorded so ``/plans/{id}`` explains the choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quantum_mesh.control.registry import PeerView
from quantum_mesh.errors import NoCapacity

MAX_FALLBACKS = 3
# Unmeasured latency is priced like a slow-ish LAN link so measured peers are preferred.
_DEFAULT_LATENCY_MS = 20.0


@dataclass(frozen=True)
class CostWeights:
    latency: float = 1.0
    failure: float = 2.0
    transfer: float = 0.5
    load: float = 1.0
    fidelity: float = 3.0


@dataclass(frozen=True)
class FragmentSpec:
    """What the planner needs to know about a unit of work."""

    fragment_id: str
    service_type: str
    qubits: tuple[int, ...]
    operation_ids: tuple[int, ...]
    depends_on: tuple[str, ...]
    width: int  # qubits the node must hold (the whole register for statevector fragments)


def _score(
    peer: PeerView,
    *,
    weights: CostWeights,
    fragment: FragmentSpec,
    assigned: dict[str, int],
    previous_node_of_qubit: dict[int, str],
) -> dict[str, float]:
    latency_ms = _DEFAULT_LATENCY_MS if peer.latency_s is None else peer.latency_s * 1000.0
    # Moving a qubit's state to a node that did not hold it costs a transfer (state + link).
    moved = sum(
        1 for q in fragment.qubits if previous_node_of_qubit.get(q, peer.peer_id) != peer.peer_id
    )
    transfer = moved / max(1, len(fragment.qubits))
    # Load counts both what the node reports and what this plan already gave it, which
    # spreads fragments across nodes.
    load = peer.load + 0.25 * assigned.get(peer.peer_id, 0)
    components = {
        "latency": weights.latency * latency_ms / 10.0,
        "failure": weights.failure * peer.failure_rate * 10.0,
        "transfer": weights.transfer * transfer,
        "load": weights.load * load,
        "fidelity": weights.fidelity * (1.0 - peer.fidelity) * 10.0,
    }
    components["total"] = round(sum(components.values()), 6)
    return {k: round(v, 6) for k, v in components.items()}


def plan_fragments(
    fragments: Sequence[FragmentSpec],
    peers: Sequence[PeerView],
    *,
    weights: CostWeights,
    min_fidelity: float | None = None,
) -> list[dict[str, Any]]:
    """Assign a primary and ordered fallbacks to each fragment (fragments in topological order)."""
    assigned: dict[str, int] = {}
    previous_node_of_qubit: dict[int, str] = {}
    planned: list[dict[str, Any]] = []
    for frag in fragments:
        candidates = [
            p
            for p in peers
            if frag.service_type in p.services and p.qubit_min <= frag.width <= p.qubit_max
        ]
        if not candidates:
            raise NoCapacity(
                f"No fresh enrolled node offers service '{frag.service_type}' for "
                f"{frag.width} qubits",
                details={"fragment_id": frag.fragment_id, "service_type": frag.service_type},
            )
        scored = sorted(
            (
                (
                    _score(
                        p,
                        weights=weights,
                        fragment=frag,
                        assigned=assigned,
                        previous_node_of_qubit=previous_node_of_qubit,
                    ),
                    p,
                )
                for p in candidates
            ),
            # Nodes advertising less than the job's minimum fidelity go last, never first.
            key=lambda sp: (
                min_fidelity is not None and sp[1].fidelity < min_fidelity,
                sp[0]["total"],
                sp[1].peer_id,
            ),
        )
        ordered = [p.peer_id for _, p in scored]
        primary = ordered[0]
        assigned[primary] = assigned.get(primary, 0) + 1
        for q in frag.qubits:
            previous_node_of_qubit[q] = primary
        planned.append(
            {
                "fragment_id": frag.fragment_id,
                "service_type": frag.service_type,
                "qubits": list(frag.qubits),
                "operation_ids": list(frag.operation_ids),
                "depends_on": list(frag.depends_on),
                "primary_node": primary,
                "fallback_nodes": ordered[1 : 1 + MAX_FALLBACKS],
                "cost": {s[1].peer_id: s[0] for s in scored},
            }
        )
    return planned
