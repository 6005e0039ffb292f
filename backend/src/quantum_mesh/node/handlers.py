"""The method table of a service node and the code that runs one method in a worker process.

Every method has a *handler* obeying the node contract ``handler(params, node) -> dict``.
The work methods' handlers here are thin adapters: they pass what the quantum function
really uses from the node's context (noise level, peer id, BLAS threads) as plain keyword
arguments, so ``quantum/`` never imports the node. Quantum functions are named by dotted path
and imported lazily *inside the worker process*, so the node process itself never imports
Qiskit, and a module that is missing or broken becomes a remote error
(``handler_unavailable``) instead of a node that will not start.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

from quantum_mesh.errors import InvalidInput
from quantum_mesh.mesh import hostlocal, packing
from quantum_mesh.mesh.errors import FrameTooLarge, ProtocolError
from quantum_mesh.mesh.protocol import (
    ERR_BAD_REQUEST,
    ERR_HANDLER_ERROR,
    ERR_HANDLER_UNAVAILABLE,
    ERR_UNKNOWN_METHOD,
    METHOD_DEBUG_SLEEP,
    METHOD_ECHO,
    METHOD_EXECUTE_DYNAMIC,
    METHOD_EXECUTE_FRAGMENT,
    METHOD_PING,
    METHOD_QAOA_BLOCK,
    METHOD_QAOA_SCHEDULES,
    METHOD_SQD_BATCH,
)
from quantum_mesh.node.context import NodeContext

Handler = Callable[[dict[str, Any], NodeContext], dict[str, Any]]
#: A quantum function: params plus keyword-only context, never a ``NodeContext``.
Implementation = Callable[..., dict[str, Any]]

#: Longest ``debug_sleep`` honoured: tests use it to simulate a long job, not to park workers.
DEBUG_SLEEP_CAP_S = 30.0

#: Method name -> "module:function" of its handler. Every entry runs in the node's worker pool.
METHODS: dict[str, str] = {
    METHOD_PING: "quantum_mesh.node.handlers:ping",
    METHOD_EXECUTE_FRAGMENT: "quantum_mesh.node.handlers:execute_fragment",
    METHOD_EXECUTE_DYNAMIC: "quantum_mesh.node.handlers:execute_dynamic",
    METHOD_QAOA_BLOCK: "quantum_mesh.node.handlers:qaoa_block",
    METHOD_QAOA_SCHEDULES: "quantum_mesh.node.handlers:qaoa_schedules",
    METHOD_SQD_BATCH: "quantum_mesh.node.handlers:sqd_batch",
    METHOD_ECHO: "quantum_mesh.node.handlers:echo",
    METHOD_DEBUG_SLEEP: "quantum_mesh.node.handlers:debug_sleep",
}

#: Work method -> "module:function" of the quantum function its handler adapts.
IMPLEMENTATIONS: dict[str, str] = {
    METHOD_EXECUTE_FRAGMENT: "quantum_mesh.quantum.circuits.execute:execute_fragment",
    METHOD_EXECUTE_DYNAMIC: "quantum_mesh.quantum.circuits.dynamic:run_dynamic",
    METHOD_QAOA_BLOCK: "quantum_mesh.quantum.qaoa.worker:solve_block",
    METHOD_QAOA_SCHEDULES: "quantum_mesh.quantum.qaoa.worker:evaluate_schedules",
    METHOD_SQD_BATCH: "quantum_mesh.quantum.sqd.worker:solve_batch",
}


#: Compiles the QAOA layer kernel (resolved by name, like the implementations above).
QAOA_KERNEL_WARM = "quantum_mesh.quantum.qaoa.kernel:warm"


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


def execute_fragment(params: dict[str, Any], node: NodeContext) -> dict[str, Any]:
    """``execute_fragment`` with the node's coherent-error strength really applied."""
    run = implementation(METHOD_EXECUTE_FRAGMENT)
    return run(params, noise_level=node.noise_level)


def execute_dynamic(params: dict[str, Any], node: NodeContext) -> dict[str, Any]:
    """``execute_dynamic``: a circuit with mid-circuit measurement, reset or ``if``, run whole
    (ideal simulation: the node's coherent-error model applies to fragments only)."""
    run = implementation(METHOD_EXECUTE_DYNAMIC)
    return {**run(params), "peer_id": node.peer_id}


def qaoa_block(params: dict[str, Any], node: NodeContext) -> dict[str, Any]:
    """``qaoa_block`` under the node's noise, stamped with its peer id, its energy evaluations
    split across the node's ``blas_threads``."""
    run = implementation(METHOD_QAOA_BLOCK)
    return run(
        params, peer_id=node.peer_id, noise_level=node.noise_level, threads=node.blas_threads
    )


def qaoa_schedules(params: dict[str, Any], node: NodeContext) -> dict[str, Any]:
    """``qaoa_schedules`` as :func:`qaoa_block`."""
    run = implementation(METHOD_QAOA_SCHEDULES)
    return run(
        params, peer_id=node.peer_id, noise_level=node.noise_level, threads=node.blas_threads
    )


def sqd_batch(params: dict[str, Any], node: NodeContext) -> dict[str, Any]:
    """``sqd_batch`` with the node's BLAS/OpenMP thread count."""
    run = implementation(METHOD_SQD_BATCH)
    return run(params, threads=node.blas_threads)


def _load(target: str, *, method: str) -> Callable[..., Any]:
    module_name, _, function_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        function = getattr(module, function_name)
    except (ImportError, AttributeError) as error:
        raise HandlerUnavailable(f"{method} ({target}) is unavailable: {error}") from error
    if not callable(function):
        raise HandlerUnavailable(f"{method} ({target}) is not callable")
    return function  # type: ignore[no-any-return]


def resolve(method: str) -> Handler:
    """Import the handler of ``method`` and, for a work method, the quantum function it adapts.

    Raises:
        KeyError: ``method`` is not in ``METHODS``.
        HandlerUnavailable: its module or function cannot be imported.
    """
    handler: Handler = _load(METHODS[method], method=method)
    if method in IMPLEMENTATIONS:
        implementation(method)  # fail here, not mid-call, when the quantum module is missing
    return handler


def implementation(method: str) -> Implementation:
    """Import the quantum function behind the work method ``method`` (lazily, in the worker).

    Raises:
        KeyError: ``method`` is not in ``IMPLEMENTATIONS``.
        HandlerUnavailable: its module or function cannot be imported.
    """
    return _load(IMPLEMENTATIONS[method], method=method)


def run_method(
    method: str,
    params: dict[str, Any],
    node: NodeContext,
    reply_spill_limit: int | None = None,
) -> tuple[bool, bytes | tuple[str, str]]:
    """Run one method; called in a worker process, so it must never raise.

    Arrays the caller left in shared memory are read here, in the worker, and with
    ``reply_spill_limit`` (a caller on this host) big result arrays go back that way, up to
    that many bytes (``mesh/hostlocal.py``).

    Returns ``(True, packed_result)`` - the result already packed (``mesh.packing``, arrays
    as raw bytes), so serialisation cost stays in the worker - or ``(False, (code, message))``.
    """
    try:
        params = hostlocal.materialize(params)
    except ProtocolError as error:
        return False, (ERR_BAD_REQUEST, str(error))
    try:
        handler = resolve(method)
    except KeyError:
        return False, (ERR_UNKNOWN_METHOD, f"unknown method {method!r}")
    except HandlerUnavailable as error:
        return False, (ERR_HANDLER_UNAVAILABLE, str(error))
    started = time.perf_counter()
    try:
        result = handler(params, node)
    except HandlerUnavailable as error:  # an adapter could not import its quantum function
        return False, (ERR_HANDLER_UNAVAILABLE, str(error))
    except (ValueError, InvalidInput) as error:
        return False, (ERR_BAD_REQUEST, f"{type(error).__name__}: {error}")
    except Exception as error:
        # Anything else is the handler's bug, reported to the caller rather than killing
        # the worker process.
        return False, (ERR_HANDLER_ERROR, f"{type(error).__name__}: {error}")
    if not isinstance(result, dict):
        return False, (ERR_HANDLER_ERROR, f"{method} returned {type(result).__name__}, not dict")
    if node.slowdown > 1.0:  # a degraded node: this worker is held as a slower one would be
        held = (node.slowdown - 1.0) * (time.perf_counter() - started)
        time.sleep(min(held, DEBUG_SLEEP_CAP_S))
    spill = (
        None
        if reply_spill_limit is None
        else hostlocal.spill_for(hostlocal.host_key(), limit=reply_spill_limit)
    )
    try:
        packed = packing.pack(result, spill=spill)
    except (TypeError, FrameTooLarge) as error:
        return False, (ERR_HANDLER_ERROR, f"{method} result cannot travel: {error}")
    return True, packed


def preload() -> list[str]:
    """Import every handler and quantum module that exists, so a warm worker answers its first
    call fast.

    Returns the methods that could not be loaded.
    """
    missing: list[str] = []
    for method in METHODS:
        try:
            resolve(method)
        except HandlerUnavailable:
            missing.append(method)
    if METHOD_QAOA_BLOCK not in missing:
        # The QAOA layer kernel is compiled on first use (numba): here, not in a call.
        _load(QAOA_KERNEL_WARM, method=METHOD_QAOA_BLOCK)()
    return missing
