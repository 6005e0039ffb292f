"""Node-side execution of dynamic circuits: mid-circuit measurement, reset, classical ``if``.

A measurement whose outcome steers later gates splits each shot's evolution, so such a
circuit cannot be cut into unitary fragments and composed as one statevector. A node offering
``measurement_feedforward`` runs it whole with Qiskit Aer, which branches per shot, and
returns the counts over the classical bits (Qiskit's order: highest bit on the left).
"""

from __future__ import annotations

import time
from typing import Any

from quantum_mesh.quantum.circuits.parse import load_qasm

#: Shots a node runs for one dynamic circuit at most.
MAX_SHOTS = 1 << 20


def run_dynamic(params: dict[str, Any]) -> dict[str, Any]:
    """Run ``params["source"]`` (``format`` ``qasm2``/``qasm3``) for ``shots`` shots.

    Returns ``counts`` (bitstring over all classical bits -> shots), ``shots``, ``seed``,
    ``seconds``.

    Raises:
        ValueError: bad params or a circuit Aer cannot run.
    """
    from qiskit import transpile
    from qiskit_aer import AerSimulator

    fmt, text = params.get("format"), params.get("source")
    shots, seed = params.get("shots", 1024), params.get("seed", 0)
    if fmt not in ("qasm2", "qasm3") or not isinstance(text, str):
        raise ValueError("a dynamic circuit needs 'format' (qasm2 or qasm3) and 'source'")
    if isinstance(shots, bool) or not isinstance(shots, int) or not 1 <= shots <= MAX_SHOTS:
        raise ValueError(f"shots must be an integer in [1, {MAX_SHOTS}]")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError("seed must be a non-negative integer")
    started = time.perf_counter()
    circuit = load_qasm(text, fmt)
    simulator = AerSimulator(method="statevector", seed_simulator=seed)
    # Service aliases and library gates become basis gates; control flow stays as it is.
    compiled = transpile(circuit, simulator, optimization_level=0, seed_transpiler=seed)
    result = simulator.run(compiled, shots=shots, seed_simulator=seed).result()
    raw = result.get_counts() if circuit.num_clbits else {}
    counts = {key.replace(" ", ""): int(n) for key, n in raw.items()}
    return {
        "counts": counts,
        "shots": shots,
        "seed": seed,
        "num_clbits": circuit.num_clbits,
        "seconds": time.perf_counter() - started,
    }
