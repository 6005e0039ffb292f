"""The one node-choice policy: cost-based, deterministic ranking of service nodes.

``rank_nodes`` orders the nodes that can take a unit of work right now (the work scheduler
calls it for every placement; reservations without a node use it too); ``plan_fragments``
applies the same cost model to a whole circuit ahead of time so ``/plans/{id}`` explains the
choice. For a fixed registry snapshot and weights the answer is always the same: candidates
are scored, ties broken by peer ID.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from quantum_mesh.config import Settings
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

    @classmethod
    def from_settings(cls, settings: Settings) -> CostWeights:
        return cls(
            latency=settings.cost_weight_latency,
            failure=settings.cost_weight_failure,
            transfer=settings.cost_weight_transfer,
            load=settings.cost_weight_load,
            fidelity=settings.cost_weight_fidelity,
        )


@dataclass(frozen=True)
class PlannedFragment:
    """One fragment of a circuit plan: where it runs first, where next, and why."""

    fragment_id: str
    service_type: str
    qubits: tuple[int, ...]
    operation_ids: tuple[int, ...]
    depends_on: tuple[str, ...]
    primary_node: str | None
    fallback_nodes: tuple[str, ...]
    cost: Mapping[str, Mapping[str, float]]
    #: Finished before a recovered job was planned again.
    completed_before_replan: bool = False
    #: A fused fragment's services, ``service_type`` first (``()``: only ``service_type``).
    services: tuple[str, ...] = ()

    @property
    def required_services(self) -> tuple[str, ...]:
        return self.services or (self.service_type,)

    @property
    def candidates(self) -> tuple[str, ...]:
        return tuple(n for n in (self.primary_node, *self.fallback_nodes) if n is not None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("qubits", "operation_ids", "depends_on", "fallback_nodes"):
            data[key] = list(data[key])
        data["cost"] = {k: dict(v) for k, v in self.cost.items()}
        if not self.completed_before_replan:
            del data["completed_before_replan"]
        if len(self.required_services) > 1:
            data["services"] = list(self.services)
        else:
            del data["services"]
        return data


@dataclass(frozen=True)
class FragmentSpec:
    """What the planner needs to know about a unit of work."""

    fragment_id: str
    service_type: str
    qubits: tuple[int, ...]
    operation_ids: tuple[int, ...]
    depends_on: tuple[str, ...]
    width: int  # qubits the node must hold (the whole register for statevector fragments)
    #: A fused fragment's services, ``service_type`` first (``()``: only ``service_type``).
    services: tuple[str, ...] = ()

    @property
    def required_services(self) -> tuple[str, ...]:
        return self.services or (self.service_type,)

    @classmethod
    def of(cls, fragment: Any, *, width: int) -> FragmentSpec:
        """The spec of a circuit fragment (anything with its five fields) on ``width``."""
        return cls(
            fragment_id=fragment.fragment_id,
            service_type=fragment.service_type,
            qubits=fragment.qubits,
            operation_ids=fragment.operation_ids,
            depends_on=fragment.depends_on,
            width=width,
            services=getattr(fragment, "services", ()),
        )


def _score(
    peer: PeerView,
    *,
    weights: CostWeights,
    fragment: FragmentSpec,
    assigned: dict[str, int],
    previous_node_of_qubit: dict[int, str],
) -> dict[str, float]:
    # Moving a qubit's state to a node that did not hold it costs a transfer (state + link).
    moved = sum(
        1 for q in fragment.qubits if previous_node_of_qubit.get(q, peer.peer_id) != peer.peer_id
    )
    transfer = moved / max(1, len(fragment.qubits))
    # Load counts both what the node reports and what this plan already gave it, which
    # spreads fragments across nodes.
    load = peer.load + 0.25 * assigned.get(peer.peer_id, 0)
    return _components(peer, weights=weights, transfer=transfer, load=load)


def _components(
    peer: PeerView, *, weights: CostWeights, transfer: float, load: float
) -> dict[str, float]:
    latency_ms = _DEFAULT_LATENCY_MS if peer.latency_s is None else peer.latency_s * 1000.0
    components = {
        "latency": weights.latency * latency_ms / 10.0,
        "failure": weights.failure * peer.failure_rate * 10.0,
        "transfer": weights.transfer * transfer,
        "load": weights.load * load,
        "fidelity": weights.fidelity * (1.0 - peer.fidelity) * 10.0,
    }
    components["total"] = round(sum(components.values()), 6)
    return {k: round(v, 6) for k, v in components.items()}


def offers(peer: PeerView, service_type: str, width: int, *also: str) -> bool:
    """Can ``peer`` run work of this service (and of every service in ``also``: a fused
    fragment) on a register of ``width`` qubits (0: any)?"""
    return (
        service_type in peer.services
        and all(s in peer.services for s in also)
        and (width == 0 or peer.qubit_min <= width <= peer.qubit_max)
    )


def rank_nodes(
    peers: Sequence[PeerView],
    *,
    weights: CostWeights | None = None,
    preferred: Sequence[str] = (),
    min_fidelity: float | None = None,
    failed_on: Mapping[str, int] | None = None,
    in_flight: Mapping[str, int] | None = None,
) -> list[PeerView]:
    """Best first: nodes meeting ``min_fidelity``, then those this unit has failed on least,
    then the plan's order (``preferred``), then the cost model with live load, then peer ID."""
    weights = weights or CostWeights()
    failed_on = failed_on or {}
    in_flight = in_flight or {}
    order = {peer_id: i for i, peer_id in enumerate(preferred)}

    def key(p: PeerView) -> tuple[bool, int, int, float, str]:
        load = p.load + 0.25 * in_flight.get(p.peer_id, 0)
        cost = _components(p, weights=weights, transfer=0.0, load=load)["total"]
        return (
            min_fidelity is not None and p.fidelity < min_fidelity,
            failed_on.get(p.peer_id, 0),
            order.get(p.peer_id, len(order)),
            cost,
            p.peer_id,
        )

    return sorted(peers, key=key)


def plan_fragments(
    fragments: Sequence[FragmentSpec],
    peers: Sequence[PeerView],
    *,
    weights: CostWeights,
    min_fidelity: float | None = None,
) -> list[PlannedFragment]:
    """Assign a primary and ordered fallbacks to each fragment (fragments in topological order)."""
    assigned: dict[str, int] = {}
    previous_node_of_qubit: dict[int, str] = {}
    planned: list[PlannedFragment] = []
    for frag in fragments:
        candidates = [p for p in peers if offers(p, frag.service_type, frag.width, *frag.services)]
        if not candidates:
            wanted = " + ".join(frag.required_services)
            raise NoCapacity(
                f"No fresh enrolled node offers service '{wanted}' for {frag.width} qubits",
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
            PlannedFragment(
                fragment_id=frag.fragment_id,
                service_type=frag.service_type,
                qubits=frag.qubits,
                operation_ids=frag.operation_ids,
                depends_on=frag.depends_on,
                primary_node=primary,
                fallback_nodes=tuple(ordered[1 : 1 + MAX_FALLBACKS]),
                cost={s[1].peer_id: s[0] for s in scored},
                services=frag.services,
            )
        )
    return planned
