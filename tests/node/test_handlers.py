"""The method table and ``run_method``, in-process (the worker pool calls the same function)."""

from __future__ import annotations

import json

import pytest

from quantum_mesh.node import handlers
from quantum_mesh.node.context import NodeContext

NODE = NodeContext(peer_id="12D3KooWTest", name="t")


def test_ping_and_echo_return_encoded_json() -> None:
    ok, payload = handlers.run_method("ping", {}, NODE)
    assert ok and isinstance(payload, bytes)
    assert json.loads(payload)["peer_id"] == NODE.peer_id
    ok, payload = handlers.run_method("echo", {"a": [1, 2]}, NODE)
    assert ok and isinstance(payload, bytes) and json.loads(payload)["params"] == {"a": [1, 2]}


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
