"""The method table and ``run_method``, in-process (the worker pool calls the same function)."""

from __future__ import annotations

import pytest

from quantum_mesh.mesh import packing, protocol
from quantum_mesh.node import handlers
from quantum_mesh.node.context import NodeContext

NODE = NodeContext(peer_id="12D3KooWTest", name="t")


def test_ping_and_echo_return_packed_results() -> None:
    ok, payload = handlers.run_method("ping", {}, NODE)
    assert ok and isinstance(payload, bytes)
    assert packing.unpack(payload)["peer_id"] == NODE.peer_id
    ok, payload = handlers.run_method("echo", {"a": [1, 2]}, NODE)
    assert ok and isinstance(payload, bytes) and packing.unpack(payload)["params"] == {"a": [1, 2]}


def test_debug_sleep_is_capped_and_validated() -> None:
    assert handlers.debug_sleep({"seconds": 0.01}, NODE)["slept"] == 0.01
    ok, payload = handlers.run_method("debug_sleep", {"seconds": -1}, NODE)
    assert not ok and payload[0] == "bad_request"


def test_error_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert handlers.run_method("nope", {}, NODE) == (
        False,
        ("unknown_method", "unknown method 'nope'"),
    )
    monkeypatch.setitem(handlers.METHODS, "ghost", "quantum_mesh.no_such_module:fn")
    ok, payload = handlers.run_method("ghost", {}, NODE)
    assert not ok and payload[0] == "handler_unavailable"
    monkeypatch.setitem(handlers.METHODS, "boom", "json:loads")  # TypeError on a dict
    ok, payload = handlers.run_method("boom", {}, NODE)
    assert not ok and payload[0] == "handler_error"


def test_table_covers_the_architecture_methods() -> None:
    expected = {"ping", "execute_fragment", "qaoa_block", "qaoa_schedules", "sqd_batch"}
    assert expected <= set(handlers.METHODS)
    assert set(handlers.IMPLEMENTATIONS) <= set(handlers.METHODS)
    assert handlers.METHODS[protocol.METHOD_SQD_BATCH] == "quantum_mesh.node.handlers:sqd_batch"


def test_every_handler_and_implementation_loads() -> None:
    assert handlers.preload() == []


def test_missing_implementation_is_handler_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        handlers.IMPLEMENTATIONS, protocol.METHOD_QAOA_BLOCK, "quantum_mesh.no_such_module:fn"
    )
    with pytest.raises(handlers.HandlerUnavailable):
        handlers.resolve(protocol.METHOD_QAOA_BLOCK)
    ok, payload = handlers.run_method(protocol.METHOD_QAOA_BLOCK, {}, NODE)
    assert not ok and payload[0] == protocol.ERR_HANDLER_UNAVAILABLE
    assert handlers.preload() == [protocol.METHOD_QAOA_BLOCK]


def test_adapters_pass_the_node_context_as_keywords() -> None:
    schedules = {"qubo": {"matrix": [[1.0, -2.0], [0.0, 1.0]]}, "schedules": [[0.4, -0.3]]}
    noisy = NodeContext(peer_id="12D3KooWNoisy", name="n", noise_level=0.2)
    ok, payload = handlers.run_method(protocol.METHOD_QAOA_SCHEDULES, schedules, NODE)
    assert ok and isinstance(payload, bytes)
    ideal = packing.unpack(payload)
    ok, payload = handlers.run_method(protocol.METHOD_QAOA_SCHEDULES, schedules, noisy)
    assert ok and isinstance(payload, bytes)
    degraded = packing.unpack(payload)
    assert (ideal["peer_id"], degraded["peer_id"]) == (NODE.peer_id, noisy.peer_id)
    assert degraded["energies"] != ideal["energies"]  # the node's noise really reached QAOA


def test_execute_fragment_adapter_applies_the_node_noise() -> None:
    from quantum_mesh.arrays import encode_array
    from quantum_mesh.quantum.circuits.execute import initial_state

    op = {"op_id": 0, "name": "h", "qubits": [0], "params": [], "service_type": "single_qubit"}
    params = {"num_qubits": 1, "operations": [op], "state": encode_array(initial_state(1))}
    noisy = NodeContext(peer_id="12D3KooWNoisy", name="n", noise_level=0.2)
    fidelities = []
    for node in (NODE, noisy):
        ok, payload = handlers.run_method(protocol.METHOD_EXECUTE_FRAGMENT, dict(params), node)
        assert ok and isinstance(payload, bytes)
        fidelities.append(packing.unpack(payload)["observed_fidelity"])
    assert fidelities[0] == 1.0 and fidelities[1] < 1.0
