"""The method table of a service node and the code that runs one method in a worker process.

Handlers are named by dotted path and imported lazily *inside the worker process*, so the node
process itself never imports Qiskit, and a handler module that is missing or broken becomes a
remote error (``handler_unavailable``) instead of a node that will not start.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from typing import Any

from quantum_mesh.errors import InvalidInput
from quantum_mesh.mesh.protocol import (
    ERR_BAD_REQUEST,
    ERR_HANDLER_ERROR,
    ERR_HANDLER_UNAVAILABLE,
    ERR_UNKNOWN_METHOD,
)
from quantum_mesh.node.context import NodeContext

Handler = Callable[[dict[str, Any], NodeContext], dict[str, Any]]

#: Longest ``debug_sleep`` honoured: tests use it to simulate a long job, not to park workers.
DEBUG_SLEEP_CAP_S = 30.0

#: Method name -> "module:function". Every entry runs in the node's worker pool.
METHODS: dict[str, str] = {
    "ping": "quantum_mesh.node.handlers:ping",
    "execute_fragment": "quantum_mesh.quantum.circuits.execute:execute_fragment",
    "qaoa_block": "quantum_mesh.quantum.qaoa.worker:solve_block",
    "qaoa_schedules": "quantum_mesh.quantum.qaoa.worker:evaluate_schedules",
    "sqd_batch": "quantum_mesh.quantum.sqd.worker:solve_batch",
    "echo": "quantum_mesh.node.handlers:echo",
    "debug_sleep": "quantum_mesh.node.handlers:debug_sleep",
}


class HandlerUnavailable(LookupError):
    """A known method whose implementation cannot be imported in this build."""


def ping(params: dict[str, Any], node: NodeContext) -> dict[str, Any]:
    """Liveness: who answered and when (node clock, for skew estimates)."""
    return {"pong": True, "peer_id": node.peer_id, "name": node.name, "t": time.time()}


def echo(params: dict[str, Any], node: NodeContext) -> dict[str, Any]:
    """Returns ``params`` unchanged: a payload round trip through a worker, for tests/benches."""
    return {"params": params, "peer_id": node.peer_id}


def debug_sleep(params: dict[str, Any], node: NodeContext) -> dict[str, Any]:
    """Occupies a worker for ``params["seconds"]`` (capped): a stand-in for a long job."""
    seconds = params.get("seconds", 0.0)
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise ValueError("'seconds' must be a non-negative number")
    slept = min(float(seconds), DEBUG_SLEEP_CAP_S)
    time.sleep(slept)
    return {"slept": slept, "peer_id": node.peer_id}


def resolve(method: str) -> Handler:
    """Import the handler of ``method``.

    Raises:
        KeyError: ``method`` is not in ``METHODS``.
        HandlerUnavailable: its module or function cannot be imported.
    """
    target = METHODS[method]
    module_name, _, function_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        handler = getattr(module, function_name)
    except (ImportError, AttributeError) as error:
        raise HandlerUnavailable(f"{method} ({target}) is unavailable: {error}") from error
    if not callable(handler):
        raise HandlerUnavailable(f"{method} ({target}) is not callable")
    return handler  # type: ignore[no-any-return]


def run_method(
    method: str, params: dict[str, Any], node: NodeContext
) -> tuple[bool, bytes | tuple[str, str]]:
    """Run one method; called in a worker process, so it must never raise.

    Returns ``(True, result_json)`` - the result already JSON-encoded, so serialisation cost
    stays in the worker - or ``(False, (code, message))``.
    """
    try:
        handler = resolve(method)
    except KeyError:
        return False, (ERR_UNKNOWN_METHOD, f"unknown method {method!r}")
    except HandlerUnavailable as error:
        return False, (ERR_HANDLER_UNAVAILABLE, str(error))
    try:
        result = handler(params, node)
    except (ValueError, InvalidInput) as error:
        return False, (ERR_BAD_REQUEST, f"{type(error).__name__}: {error}")
    except Exception as error:
        # Anything else is the handler's bug, reported to the caller rather than killing
        # the worker process.
        return False, (ERR_HANDLER_ERROR, f"{type(error).__name__}: {error}")
    if not isinstance(result, dict):
        return False, (ERR_HANDLER_ERROR, f"{method} returned {type(result).__name__}, not dict")
    try:
        encoded = json.dumps(result, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as error:
        return False, (ERR_HANDLER_ERROR, f"{method} result is not JSON-serialisable: {error}")
    return True, encoded


def preload() -> list[str]:
    """Import every handler module that exists, so a warm worker answers its first call fast.

    Returns the methods that could not be loaded.
    """
    missing: list[str] = []
    for method in METHODS:
        try:
            resolve(method)
        except HandlerUnavailable:
            missing.append(method)
    return missing
