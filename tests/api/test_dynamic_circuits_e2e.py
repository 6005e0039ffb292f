"""Dynamic circuits over the live mesh: mid-circuit measurement, reset and classical ``if``
run whole on a node offering ``measurement_feedforward``; counts agree with Aer's."""

from __future__ import annotations

from typing import Any

import pytest
from qiskit import transpile
from qiskit_aer import AerSimulator
from scipy.stats import chi2_contingency
from tests.support.live import LiveCoordinator

from quantum_mesh.quantum.circuits.parse import load_qasm, parse_circuit

SHOTS = 4000

TELEPORT = """OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
bit[3] c;
ry(1.1) q[0];
h q[1];
cx q[1], q[2];
cx q[0], q[1];
h q[0];
c[0] = measure q[0];
c[1] = measure q[1];
if (c[1]) { x q[2]; }
if (c[0]) { z q[2]; }
c[2] = measure q[2];
"""

# Repeat until success, unrolled: try again (reset, retry) while the last attempt gave 1.
REPEAT_UNTIL_SUCCESS = """OPENQASM 3.0;
include "stdgates.inc";
qubit[2] q;
bit[3] c;
h q[0];
c[0] = measure q[0];
if (c[0]) { reset q[0]; h q[0]; c[1] = measure q[0]; }
if (c[1]) { reset q[0]; h q[0]; c[2] = measure q[0]; }
cx q[0], q[1];
"""

QASM2_IF = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[3];
creg c[3];
h q[0];
bell_pair q[1], q[2];
measure q[0] -> c[0];
if (c==1) x q[2];
measure q[1] -> c[1];
measure q[2] -> c[2];
"""


def aer_counts(text: str, *, seed: int) -> dict[str, int]:
    circuit = parse_circuit(text)
    assert circuit.dynamic is not None
    qc = load_qasm(circuit.dynamic.source, circuit.dynamic.format)
    sim = AerSimulator(seed_simulator=seed)
    counts = sim.run(transpile(qc, sim), shots=SHOTS, seed_simulator=seed).result().get_counts()
    return {k.replace(" ", ""): v for k, v in counts.items()}


def agrees(ours: dict[str, int], theirs: dict[str, int]) -> float:
    """p-value of a chi-square test that both samples come from one distribution."""
    keys = sorted(set(ours) | set(theirs))
    table = [[ours.get(k, 0) for k in keys], [theirs.get(k, 0) for k in keys]]
    if len(keys) == 1:
        return 1.0
    return float(chi2_contingency(table)[1])


def run(coord: LiveCoordinator, text: str, *, seed: int) -> dict[str, Any]:
    r = coord.http.post("/circuits/submit", json={"circuit": text, "shots": SHOTS, "seed": seed})
    assert r.status_code == 202, r.text
    job = coord.wait_job(r.json()["job_id"], timeout=120)
    assert job["status"] == "COMPLETED", (job.get("error"), coord.log_tail())
    return job


@pytest.mark.parametrize(
    ("text", "features"),
    [
        (TELEPORT, ["classical_if"]),
        (REPEAT_UNTIL_SUCCESS, ["classical_if", "mid_circuit_measurement"]),
        (QASM2_IF, ["classical_if"]),
    ],
    ids=["teleportation", "repeat-until-success", "qasm2-if"],
)
def test_dynamic_circuit_counts_agree_with_aer(
    coord: LiveCoordinator, text: str, features: list[str]
) -> None:
    job = run(coord, text, seed=11)
    result = job["quantum_result"]
    assert result["dynamic"] is True and result["features"] == features
    assert sum(result["counts"].values()) == SHOTS
    assert "statevector" in result["omitted"]
    p_value = agrees(result["counts"], aer_counts(text, seed=12345))
    assert p_value > 0.01, (result["counts"], p_value)
    (fragment,) = job["fragment_results"]
    assert fragment["fragment_id"] == "dynamic" and fragment["node_id"]
    events = coord.http.get(f"/jobs/{job['job_id']}/events").json()["items"]
    statuses = [e["payload"]["status"] for e in events if e["event_type"] == "status"]
    assert statuses == ["QUEUED", "COMPILING", "RESERVING", "EXECUTING", "COMPLETED"]


def test_teleportation_moves_the_state(coord: LiveCoordinator) -> None:
    """The teleported qubit (c[2]) has ry(1.1)'s statistics whatever c[0], c[1] were."""
    import math

    counts = run(coord, TELEPORT, seed=3)["quantum_result"]["counts"]
    ones = sum(n for key, n in counts.items() if key[0] == "1")
    expected = math.sin(1.1 / 2) ** 2
    assert abs(ones / SHOTS - expected) < 4 * math.sqrt(expected * (1 - expected) / SHOTS)


def test_same_seed_same_counts(coord: LiveCoordinator) -> None:
    first = run(coord, QASM2_IF, seed=5)["quantum_result"]["counts"]
    assert run(coord, QASM2_IF, seed=5)["quantum_result"]["counts"] == first


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (
            'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[1] q;\nbit[1] c;\nh q[0];\n'
            "c[0] = measure q[0];\nwhile (c[0]) { reset q[0]; c[0] = measure q[0]; }\n",
            7,
            "'while'",
        ),
        (
            'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\n'
            "for int i in [0:1] { h q[i]; }\n",
            5,
            "'for'",
        ),
    ],
)
def test_unsupported_control_flow_is_a_clear_400(
    coord: LiveCoordinator, text: str, line: int, words: str
) -> None:
    r = coord.http.post("/circuits/submit", json={"circuit": text})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_circuit" and error["details"]["line"] == line
    assert (
        words in error["message"] and "mid-circuit measurement, reset and 'if'" in error["message"]
    )
