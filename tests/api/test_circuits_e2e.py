"""A circuit job travels the whole system: REST → plan → libp2p mesh → node processes →
Qiskit result, against a live `qmesh coordinator` subprocess on real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qiskit import qasm2, qasm3
from qiskit.circuit.random import random_circuit
from qiskit.quantum_info import Statevector
from tests.support.circuits import BELL_QASM2
from tests.support.live import LiveCoordinator, LiveNode, wait_until

GHZ5_QASM3 = """OPENQASM 3.0;
include "stdgates.inc";
qubit[5] q;
bit[5] c;
h q[0];
cx q[0], q[1];
cx q[1], q[2];
cx q[2], q[3];
cx q[3], q[4];
c = measure q;
"""


def _run(coord: LiveCoordinator, circuit: str, **extra: object) -> dict:
    """Submit, wait, and return the job document with its statevector (``?include=``)."""
    r = coord.http.post("/circuits/submit", json={"circuit": circuit, **extra})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "QUEUED"
    job = coord.wait_job(r.json()["job_id"])
    assert job["status"] == "COMPLETED", (job, coord.log_tail())
    # The contract: the default document leaves the statevector out, ?include= adds it.
    assert "statevector" not in job["quantum_result"], job["quantum_result"].keys()
    assert job["quantum_result"]["omitted"] == ["statevector"]
    full = coord.http.get(f"/jobs/{job['job_id']}", params={"include": "statevector"}).json()
    assert isinstance(full["quantum_result"]["statevector"], list)
    return full


def _assert_probabilities(result: dict, expected: Statevector) -> None:
    n = expected.num_qubits
    probs = expected.probabilities()
    got = result["probabilities"]
    for index, p in enumerate(probs):
        key = format(index, f"0{n}b")
        assert got.get(key, 0.0) == pytest.approx(p, abs=1e-9), key
    sv = np.array([complex(re, im) for re, im in result["statevector"]])
    assert abs(np.vdot(expected.data, sv)) ** 2 == pytest.approx(1.0, abs=1e-9)


def test_bell_qasm2_runs_on_mesh_nodes(coord: LiveCoordinator) -> None:
    job = _run(coord, BELL_QASM2, shots=2000, seed=11)
    qr = job["quantum_result"]
    assert qr["probabilities"] == pytest.approx({"00": 0.5, "11": 0.5}, abs=1e-9)
    assert sum(qr["counts"].values()) == 2000
    assert set(qr["counts"]) <= {"00", "11"}
    assert 900 < qr["counts"].get("00", 0) < 1100
    assert qr["fidelity"] == pytest.approx(1.0, abs=1e-9)
    assert qr["entanglement_entropy"]["q0"] == pytest.approx(1.0, abs=1e-9)
    peers = {p["peer_id"] for p in coord.http.get("/discovery/peers").json()["items"]}
    assert job["fragment_results"], job
    for fr in job["fragment_results"]:
        assert fr["node_id"] in peers
        assert fr["attempts"] >= 1
        assert fr["observed_fidelity"] == pytest.approx(1.0)
    plan = coord.http.get(f"/plans/{job['plan_id']}").json()
    assert {f["fragment_id"] for f in plan["fragments"]} == {
        f["fragment_id"] for f in job["fragment_results"]
    }
    for frag in plan["fragments"]:
        assert frag["primary_node"] in peers
        assert frag["cost"][frag["primary_node"]]["total"] >= 0
    # The embedded nodes offer both services, so h and cx are one fused node call.
    assert [(f["service_type"], f.get("services")) for f in plan["fragments"]] == [
        ("single_qubit", ["single_qubit", "cnot"])
    ]
    assert len(job["fragment_results"]) == 1
    # Every fragment's record is written, whether or not a progress report rode along.
    events = coord.http.get(f"/jobs/{job['job_id']}/events").json()["items"]
    completed = [e["fragment_id"] for e in events if e["event_type"] == "fragment_completed"]
    assert sorted(completed) == sorted(f["fragment_id"] for f in job["fragment_results"])
    for e in events:
        if e["event_type"] == "progress":
            progress = e["payload"]["progress"]
            assert progress["fragments_done"] < progress["fragments_total"]


def test_same_seed_gives_same_counts(coord: LiveCoordinator) -> None:
    a = _run(coord, BELL_QASM2, shots=500, seed=3)["quantum_result"]["counts"]
    b = _run(coord, BELL_QASM2, shots=500, seed=3)["quantum_result"]["counts"]
    assert a == b


def test_ghz5_qasm3(coord: LiveCoordinator) -> None:
    job = _run(coord, GHZ5_QASM3, shots=1000, seed=5)
    qr = job["quantum_result"]
    assert qr["probabilities"] == pytest.approx({"00000": 0.5, "11111": 0.5}, abs=1e-9)
    assert set(qr["counts"]) <= {"00000", "11111"} and sum(qr["counts"].values()) == 1000
    assert qr["observable_expectations"]["ZZ"]["q0,q4"] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_6_qubit_circuits_match_statevector(coord: LiveCoordinator, seed: int) -> None:
    circuit = random_circuit(6, depth=8, max_operands=2, seed=seed)
    text = qasm2.dumps(circuit) if seed % 2 else qasm3.dumps(circuit)
    job = _run(coord, text, shots=4096, seed=seed)
    qr = job["quantum_result"]
    _assert_probabilities(qr, Statevector.from_instruction(circuit))
    counts = qr["counts"]
    assert sum(counts.values()) == 4096
    # Counts are consistent with the probabilities (5-sigma binomial bound per outcome).
    for key, p in qr["measured_probabilities"].items():
        sigma = np.sqrt(4096 * p * (1 - p)) + 1
        assert abs(counts.get(key, 0) - 4096 * p) <= 5 * sigma
    assert len({fr["node_id"] for fr in job["fragment_results"]}) >= 2


def test_standalone_node_joins_and_executes(coord: LiveCoordinator, tmp_path: Path) -> None:
    node = LiveNode(tmp_path, coord.bootstrap_addr(), name="standalone-1")
    peer_id = node.peer_id()
    assert (
        coord.http.post("/enrollment/peers", json={"peer_id": peer_id, "name": "lab"}).status_code
        == 201
    )
    assert (
        coord.http.post(f"/enrollment/peers/{peer_id}/action", json={"action": "approve"}).json()[
            "status"
        ]
        == "APPROVED"
    )
    node.start()
    embedded = [
        p["peer_id"]
        for p in coord.http.get("/discovery/peers").json()["items"]
        if p["peer_id"] != peer_id
    ]
    try:
        wait_until(
            lambda: (
                coord.http.get(f"/discovery/peers/{peer_id}").status_code == 200
                and coord.http.get(f"/discovery/peers/{peer_id}").json()["fresh"]
            ),
            timeout=30,
            what="standalone node heard in discovery",
        )
        for pid in embedded:
            coord.http.post(f"/enrollment/peers/{pid}/action", json={"action": "suspend"})
        job = _run(coord, BELL_QASM2, shots=100, seed=1)
        assert {fr["node_id"] for fr in job["fragment_results"]} == {peer_id}
    finally:
        for pid in embedded:
            coord.http.post(f"/enrollment/peers/{pid}/action", json={"action": "approve"})
        node.stop()


def test_bad_circuit_is_400_naming_the_line(coord: LiveCoordinator) -> None:
    bad = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\nfoo q[0];\n'
    r = coord.http.post("/circuits/submit", json={"circuit": bad})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_circuit"
    assert err["details"]["line"] == 4
    assert "4" in err["message"]


def _nested_gates(levels: int, calls: int) -> str:
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', "qreg q[1];"]
    previous = "h"
    for level in range(levels):
        lines.append(f"gate g{level} a {{ {' '.join(f'{previous} a;' for _ in range(calls))} }}")
        previous = f"g{level}"
    return "\n".join([*lines, f"{previous} q[0];"]) + "\n"


HOSTILE_CIRCUITS = {
    # 61 bytes that used to make Qiskit build ten million qubits (17.8 s, 2.2 GB).
    "max_circuit_qubits": 'OPENQASM 2.0; include "qelib1.inc"; qreg q[10000000]; h q[0];',
    "max_circuit_clbits": 'OPENQASM 3.0; include "stdgates.inc"; qubit[1] q; bit[10000000] c;',
    # 11 levels x 3 calls: 432 bytes that expand to 177,147 operations.
    "max_gate_definition_depth": _nested_gates(11, 3),
    # 5 kB: each `h q;` broadcasts over 20 qubits, 20,020 operations in all.
    "max_circuit_operations": 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[20];\n'
    + "h q;\n" * 1_001,
    # 10,000 gates alternating service types on 2 qubits: 10,000 sequential fragments.
    "max_circuit_fragments": 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\n'
    + "h q[0];\ncx q[0], q[1];\n" * 5_000,
}


@pytest.mark.parametrize("limit", sorted(HOSTILE_CIRCUITS))
def test_hostile_circuits_are_400_naming_the_limit(coord: LiveCoordinator, limit: str) -> None:
    r = coord.http.post("/circuits/submit", json={"circuit": HOSTILE_CIRCUITS[limit]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_circuit"
    assert err["details"]["limit"] == limit
    assert err["details"]["found"] > err["details"]["max"]
    assert limit in err["message"] and str(err["details"]["max"]) in err["message"]
    assert coord.http.get("/health").status_code == 200
    # The coordinator still serves circuits afterwards.
    _run(coord, BELL_QASM2, shots=10, seed=1)


def test_bad_json_and_validation_errors_use_the_envelope(coord: LiveCoordinator) -> None:
    r = coord.http.post(
        "/circuits/submit", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = coord.http.post("/circuits/submit", json={"circuit": BELL_QASM2, "shots": 0})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    assert "shots" in r.json()["error"]["message"]
    r = coord.http.get("/jobs/does-not-exist")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_jobs_list_shape_and_idempotency(coord: LiveCoordinator) -> None:
    headers = {"Idempotency-Key": "bell-once"}
    a = coord.http.post(
        "/circuits/submit", json={"circuit": BELL_QASM2, "seed": 9}, headers=headers
    )
    b = coord.http.post(
        "/circuits/submit", json={"circuit": BELL_QASM2, "seed": 9}, headers=headers
    )
    assert a.json()["job_id"] == b.json()["job_id"]
    c = coord.http.post(
        "/circuits/submit", json={"circuit": BELL_QASM2, "seed": 10}, headers=headers
    )
    assert c.status_code == 409
    page = coord.http.get("/jobs", params={"limit": 2, "offset": 0}).json()
    assert set(page) == {"items", "total", "limit", "offset"}
    assert page["limit"] == 2 and len(page["items"]) <= 2 and page["total"] >= 1
    stamps = [j["created_at"] for j in page["items"]]
    assert stamps == sorted(stamps, reverse=True)
