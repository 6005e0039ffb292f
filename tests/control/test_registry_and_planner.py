"""Registry freshness and trust, and the planner's cost model: deterministic, explained,
spreading work, honouring enrollment and minimum fidelity."""

from __future__ import annotations

import time

import pytest

from quantum_mesh.control.planner import CostWeights, FragmentSpec, plan_fragments
from quantum_mesh.control.registry import PeerRegistry
from quantum_mesh.errors import NoCapacity

SERVICES = ["single_qubit", "cnot"]


def _advert(peer_id: str, *, fidelity: float = 0.99, load: float = 0.0, services=SERVICES) -> dict:
    return {
        "peer_id": peer_id,
        "name": peer_id,
        "services": list(services),
        "fidelity": fidelity,
        "qubit_min": 1,
        "qubit_max": 20,
        "load": load,
        "availability": "AVAILABLE",
        "listen_addrs": [f"/ip4/127.0.0.1/tcp/1/p2p/{peer_id}"],
    }


def _registry(*adverts: dict, require_enrollment: bool = True) -> PeerRegistry:
    reg = PeerRegistry(stale_after_s=5.0, require_enrollment=require_enrollment)
    for ad in adverts:
        reg.observe_advert(ad)
        reg.set_enrollment(ad["peer_id"], "APPROVED")
    return reg


def _fragments() -> list[FragmentSpec]:
    return [
        FragmentSpec("f0", "single_qubit", (0,), (0,), (), 2),
        FragmentSpec("f1", "single_qubit", (1,), (1,), (), 2),
        FragmentSpec("f2", "cnot", (0, 1), (2,), ("f0", "f1"), 2),
    ]


def test_plan_is_deterministic_and_records_costs() -> None:
    reg = _registry(_advert("nodeA"), _advert("nodeB"), _advert("nodeC"))
    first = plan_fragments(_fragments(), reg.usable_snapshot(), weights=CostWeights())
    second = plan_fragments(
        _fragments(), list(reversed(reg.usable_snapshot())), weights=CostWeights()
    )
    assert first == second
    for frag in first:
        assert frag.primary_node not in frag.fallback_nodes
        assert set(frag.cost) == {"nodeA", "nodeB", "nodeC"}
        assert {"latency", "failure", "transfer", "load", "fidelity", "total"} <= set(
            frag.cost[frag.primary_node]
        )
        chosen = frag.cost[frag.primary_node]["total"]
        assert all(chosen <= c["total"] for c in frag.cost.values())
    # Independent fragments are spread over different nodes.
    assert first[0].primary_node != first[1].primary_node


def test_each_cost_component_moves_the_choice() -> None:
    reg = _registry(_advert("lowfid", fidelity=0.80), _advert("busy", load=1.0), _advert("good"))
    reg.record_latency("good", 0.001)
    reg.record_latency("lowfid", 0.001)
    reg.record_latency("busy", 0.001)
    plan = plan_fragments(_fragments()[:1], reg.usable_snapshot(), weights=CostWeights())
    assert plan[0].primary_node == "good"
    for _ in range(5):
        reg.record_outcome("good", ok=False)
    plan = plan_fragments(
        _fragments()[:1], reg.usable_snapshot(), weights=CostWeights(failure=50.0)
    )
    assert plan[0].primary_node != "good"


def test_min_fidelity_puts_weak_nodes_last() -> None:
    reg = _registry(_advert("weak", fidelity=0.5), _advert("strong", fidelity=0.95))
    plan = plan_fragments(
        _fragments()[:1], reg.usable_snapshot(), weights=CostWeights(fidelity=0.0), min_fidelity=0.9
    )
    assert plan[0].primary_node == "strong"
    assert plan[0].fallback_nodes == ("weak",)


def test_enrollment_and_freshness_gate_the_snapshot() -> None:
    reg = _registry(_advert("ok"))
    reg.observe_advert(_advert("stranger"))
    reg.observe_advert(_advert("suspended"))
    reg.set_enrollment("suspended", "SUSPENDED")
    assert [v.peer_id for v in reg.usable_snapshot()] == ["ok"]
    assert {v.peer_id for v in reg.snapshot()} == {"ok", "stranger", "suspended"}
    reg.mark_disconnected("ok")
    assert reg.usable_snapshot() == []
    with pytest.raises(NoCapacity):
        plan_fragments(_fragments(), reg.usable_snapshot(), weights=CostWeights())
    open_reg = _registry(require_enrollment=False)
    open_reg.observe_advert(_advert("stranger"))
    assert [v.peer_id for v in open_reg.usable_snapshot()] == ["stranger"]


def test_stale_peers_expire_and_are_forgotten() -> None:
    reg = PeerRegistry(stale_after_s=0.05, require_enrollment=False)
    reg.observe_advert(_advert("n1"))
    assert reg.view("n1").fresh  # type: ignore[union-attr]
    time.sleep(0.1)
    assert not reg.view("n1").fresh  # type: ignore[union-attr]
    assert reg.usable_snapshot() == []
    assert reg.forget_stale(older_than_s=0.05) == ["n1"]
    assert reg.view("n1") is None


def test_service_and_width_must_match() -> None:
    reg = _registry(_advert("only1q", services=["single_qubit"]))
    with pytest.raises(NoCapacity) as info:
        plan_fragments(_fragments(), reg.usable_snapshot(), weights=CostWeights())
    assert info.value.details["service_type"] == "cnot"


def test_a_fused_fragment_goes_only_to_nodes_offering_all_its_services() -> None:
    reg = _registry(
        _advert("gates", services=["single_qubit"], fidelity=0.999),
        _advert("both", services=["single_qubit", "cnot"], fidelity=0.95),
    )
    fused = FragmentSpec(
        "f0", "single_qubit", (0, 1), (0, 1), (), 2, services=("single_qubit", "cnot")
    )
    (planned,) = plan_fragments([fused], reg.usable_snapshot(), weights=CostWeights())
    assert planned.primary_node == "both" and planned.fallback_nodes == ()
    assert planned.to_dict()["services"] == ["single_qubit", "cnot"]
    with pytest.raises(NoCapacity, match="single_qubit \\+ cnot"):
        plan_fragments(
            [fused],
            _registry(_advert("gates", services=["single_qubit"])).usable_snapshot(),
            weights=CostWeights(),
        )
