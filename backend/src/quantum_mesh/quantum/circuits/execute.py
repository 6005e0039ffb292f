"""Node-side fragment execution: apply a fragment's operations to a statevector.

This implements the ``execute_fragment`` node method (JSON in, JSON out; the node adapts its
context in ``node/handlers.py``). A noisy node really applies a coherent error (small seeded
rotations after every operation), and reports the fidelity it observed against its own
noiseless evolution.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from qiskit import QuantumCircuit
from qiskit.quantum_info import Operator, Statevector

from quantum_mesh.arrays import decode_array
from quantum_mesh.quantum.circuits.gates import append_operation, expected_arity, is_known_gate
from quantum_mesh.quantum.circuits.model import Operation

#: Largest fragment whose unitary is returned (4**10 complex entries = 16 MiB).
OPERATOR_MAX_QUBITS = 10
#: Largest register a node accepts (2**24 amplitudes = 256 MiB).
MAX_QUBITS = 24
#: Standard deviation, in radians per unit of noise level, of each coherent error angle.
NOISE_ANGLE_SCALE = 1.0
_NORM_TOLERANCE = 1e-6


def initial_state(num_qubits: int) -> NDArray[np.complex128]:
    """|0...0> on ``num_qubits`` qubits."""
    if not 1 <= num_qubits <= MAX_QUBITS:
        raise ValueError(f"num_qubits must be in 1..{MAX_QUBITS}, got {num_qubits}")
    state = np.zeros(2**num_qubits, dtype=np.complex128)
    state[0] = 1.0
    return state


def apply_fragment_operator(
    state: NDArray[np.complex128],
    operator: NDArray[np.complex128],
    qubits: Sequence[int],
    num_qubits: int,
) -> NDArray[np.complex128]:
    """Apply a fragment's unitary (on its sorted ``qubits``, little-endian) to a full state.

    Lets a coordinator compose fragments that ran in parallel, on disjoint qubits, from the
    same input state: apply each returned operator in turn.
    """
    if state.shape != (2**num_qubits,):
        raise ValueError(f"state has shape {state.shape}, expected ({2**num_qubits},)")
    dim = 2 ** len(qubits)
    if operator.shape != (dim, dim):
        raise ValueError(f"operator has shape {operator.shape}, expected ({dim}, {dim})")
    if len(set(qubits)) != len(qubits) or any(not 0 <= q < num_qubits for q in qubits):
        raise ValueError(f"qubits {list(qubits)} invalid for {num_qubits} qubits")
    return _apply_unitary(np.asarray(state, dtype=np.complex128), operator, qubits, num_qubits)


def _apply_unitary(
    state: NDArray[np.complex128],
    unitary: NDArray[np.complex128],
    qubits: Sequence[int],
    num_qubits: int,
) -> NDArray[np.complex128]:
    """One tensor contraction of a k-qubit unitary into the state: with the whole fragment
    fused into one small matrix, a 20-qubit state is swept once instead of once per gate.

    Little-endian on both sides: state axis ``n-1-q`` is qubit q; operator row/column bit
    j is ``qubits[j]``.
    """
    k = len(qubits)
    tensor = state.reshape([2] * num_qubits)
    gate = unitary.reshape([2] * (2 * k))  # axes: out_{k-1..0}, in_{k-1..0}
    axes = [num_qubits - 1 - qubits[j] for j in reversed(range(k))]
    result = np.tensordot(gate, tensor, axes=(list(range(k, 2 * k)), axes))
    result = np.moveaxis(result, list(range(k)), axes)
    return np.ascontiguousarray(result).reshape(-1)


def execute_fragment(params: dict[str, Any], *, noise_level: float = 0.0) -> dict[str, Any]:
    """Apply ``params["operations"]`` to ``params["state"]`` with coherent noise of strength
    ``noise_level`` (0 = ideal; the executing node's configured level).

    Params: ``num_qubits``, ``operations`` (``Operation.to_dict()`` list), ``state`` (the
    complex128 statevector, as an array or ``encode_array``'s form), ``seed`` (drives the
    noise).

    Returns: ``state`` (array), ``observed_fidelity``, ``operator`` (the unitary the
    node really applied on ``qubits``, noise included, or ``None`` beyond
    ``OPERATOR_MAX_QUBITS``), ``qubits``, ``seconds``, ``applied_ops``.

    Raises:
        ValueError: malformed params (wrong state length, qubit out of range, unknown gate).
    """
    started = time.perf_counter()
    num_qubits, operations, state, seed = _validated(params)
    qubits = sorted({q for op in operations for q in op.qubits})
    local = {q: i for i, q in enumerate(qubits)}
    ideal_circuit = _local_circuit(operations, local, noise_level=0.0, seed=seed)
    ideal_unitary = _unitary(ideal_circuit)
    ideal = _evolve(state, ideal_circuit, ideal_unitary, qubits, num_qubits)
    applied_unitary = ideal_unitary
    if noise_level > 0 and qubits:
        noisy_circuit = _local_circuit(operations, local, noise_level=noise_level, seed=seed)
        applied_unitary = _unitary(noisy_circuit)
        noisy = _evolve(state, noisy_circuit, applied_unitary, qubits, num_qubits)
        final, fidelity = noisy, float(abs(np.vdot(ideal, noisy)) ** 2)
    else:
        final, fidelity = ideal, 1.0
    # The operator is what the node really applied (noise included): the coordinator composes
    # parallel fragments and replays recovered jobs from it, so it must match ``state``.
    operator = None if applied_unitary is None else np.asarray(applied_unitary)
    return {
        "state": np.asarray(final, dtype=np.complex128),
        "observed_fidelity": min(fidelity, 1.0),
        "operator": operator,
        "qubits": qubits,
        "seconds": time.perf_counter() - started,
        "applied_ops": [op.op_id for op in operations],
    }


def _unitary(circuit: QuantumCircuit) -> NDArray[np.complex128] | None:
    """The fragment's unitary when it is small enough to build and ship."""
    if circuit.num_qubits > OPERATOR_MAX_QUBITS:
        return None
    return np.asarray(Operator(circuit).data, dtype=np.complex128)


def _evolve(
    state: NDArray[np.complex128],
    circuit: QuantumCircuit,
    unitary: NDArray[np.complex128] | None,
    qubits: list[int],
    num_qubits: int,
) -> NDArray[np.complex128]:
    if not qubits:
        return state.copy()
    if unitary is not None:
        return _apply_unitary(state, unitary, qubits, num_qubits)
    evolved = Statevector(state).evolve(circuit, qargs=qubits)
    return np.asarray(evolved.data, dtype=np.complex128)


def _validated(
    params: dict[str, Any],
) -> tuple[int, list[Operation], NDArray[np.complex128], int]:
    if not isinstance(params, dict):
        raise ValueError("params must be an object")
    try:
        num_qubits = int(params["num_qubits"])
        seed = int(params.get("seed", 0))
        raw_ops = params["operations"]
        raw_state = params["state"]
    except KeyError as exc:
        raise ValueError(f"missing parameter {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"num_qubits and seed must be integers: {exc}") from exc
    if not 1 <= num_qubits <= MAX_QUBITS:
        raise ValueError(f"num_qubits must be in 1..{MAX_QUBITS}, got {num_qubits}")
    if not isinstance(raw_ops, list):
        raise ValueError("operations must be a list")
    operations = [_validated_op(raw, num_qubits) for raw in raw_ops]
    if not isinstance(raw_state, dict | np.ndarray):
        raise ValueError("state must be an array")
    try:
        state = decode_array(raw_state)
    except KeyError as exc:
        raise ValueError(f"state payload lacks {exc.args[0]!r}") from exc
    if state.dtype != np.complex128 or state.ndim != 1:
        raise ValueError(f"state must be a 1-D complex128 array, got {state.dtype} {state.shape}")
    if state.shape[0] != 2**num_qubits:
        raise ValueError(
            f"state has {state.shape[0]} amplitudes, expected 2**{num_qubits} = {2**num_qubits}"
        )
    norm = float(np.linalg.norm(state))
    if not np.isfinite(norm) or abs(norm - 1.0) > _NORM_TOLERANCE:
        raise ValueError(f"state must be normalised, got norm {norm}")
    return num_qubits, operations, state, seed


def _validated_op(raw: Any, num_qubits: int) -> Operation:
    try:
        op = Operation.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed operation {raw!r}: {exc}") from exc
    if not is_known_gate(op.name):
        raise ValueError(f"operation {op.op_id}: unknown gate {op.name!r}")
    if len(op.qubits) != expected_arity(op.name):
        raise ValueError(
            f"operation {op.op_id}: {op.name!r} acts on {expected_arity(op.name)} qubit(s), "
            f"got {len(op.qubits)}"
        )
    if any(not 0 <= q < num_qubits for q in op.qubits) or len(set(op.qubits)) != len(op.qubits):
        raise ValueError(
            f"operation {op.op_id}: qubits {list(op.qubits)} invalid for {num_qubits} qubits"
        )
    return op


def _local_circuit(
    operations: list[Operation], local: dict[int, int], *, noise_level: float, seed: int
) -> QuantumCircuit:
    """The fragment on its own qubits (index i = i-th smallest absolute qubit); with
    ``noise_level > 0``, each op is followed by seeded small rotations on its qubits."""
    circuit = QuantumCircuit(len(local))
    for op in operations:
        targets = [local[q] for q in op.qubits]
        try:
            append_operation(circuit, name=op.name, params=op.params, qubits=targets)
        except ValueError as exc:
            raise ValueError(f"operation {op.op_id}: {exc}") from exc
        if noise_level > 0:
            rng = np.random.default_rng([seed % 2**63, op.op_id])
            for target in targets:
                ax, ay, az = rng.normal(0.0, NOISE_ANGLE_SCALE * noise_level, size=3)
                circuit.rx(float(ax), target)
                circuit.ry(float(ay), target)
                circuit.rz(float(az), target)
    return circuit
