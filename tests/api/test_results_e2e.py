"""Bounded results (issue 10 item 5, issue 12 "lean results") on a live coordinator.

Measured before: a 20-qubit ``h q;`` stored a 138 MB ``quantum_result`` (statevector,
probabilities and measured probabilities over all 2^20 states), ``GET /jobs/{id}`` took 28 s
and ``GET /jobs?limit=3`` returned 413 MB. Now the stored job document stays within
``QMESH_MAX_RESULT_BYTES``, the statevector is a binary artifact with its own endpoint (same
access rule as the job), lists carry summaries, and small circuits keep their results."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from qiskit import QuantumCircuit
from qiskit.quantum_info import Statevector
from tests.support.circuits import BELL_QASM2
from tests.support.live import TERMINAL, LiveCoordinator, wait_until

from quantum_mesh.config import Settings

OPS, ALICE, BOB = "ops-key-91c0de", "alice-key-5e77a2", "bob-key-0d41f9"
H20 = 'OPENQASM 2.0; include "qelib1.inc"; qreg q[20]; h q;'
BUDGET = int(Settings.model_fields["max_result_bytes"].default)
#: What a summary (a list item, ``?view=summary``) may weigh at most.
SUMMARY_BYTES = 16_384


@pytest.fixture(scope="module")
def coord(
    tmp_path_factory: pytest.TempPathFactory, module_pg_url: str
) -> Iterator[LiveCoordinator]:
    live = LiveCoordinator(
        tmp_path_factory.mktemp("results"),
        database_url=module_pg_url,
        api_key=OPS,
        env={
            "QMESH_PRINCIPALS": f"ops:admin:{OPS},alice:user:{ALICE},bob:user:{BOB}",
            "QMESH_RATE_LIMIT_PER_MINUTE": "100000",
        },
    )
    live.start()
    try:
        yield live
    finally:
        live.stop()


def _client(coord: LiveCoordinator, key: str) -> httpx.Client:
    return httpx.Client(base_url=coord.http.base_url, headers={"X-API-Key": key}, timeout=60.0)


@pytest.fixture(scope="module")
def alice(coord: LiveCoordinator) -> Iterator[httpx.Client]:
    with _client(coord, ALICE) as client:
        yield client


@pytest.fixture(scope="module")
def bob(coord: LiveCoordinator) -> Iterator[httpx.Client]:
    with _client(coord, BOB) as client:
        yield client


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _stored_status(url: str, job_id: str) -> str | None:
    """Read from the database, so waiting never fetches (possibly huge) job documents."""
    with psycopg.connect(_dsn(url)) as conn:
        row = conn.execute("SELECT status FROM jobs WHERE job_id = %s", (job_id,)).fetchone()
    return None if row is None else str(row[0])


def _submit(client: httpx.Client, circuit: str, **extra: Any) -> str:
    r = client.post("/circuits/submit", json={"circuit": circuit, **extra})
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def _wait_stored(url: str, job_id: str, timeout: float = 300.0) -> str:
    status = wait_until(
        lambda: (s := _stored_status(url, job_id)) in TERMINAL and s,
        timeout=timeout,
        interval=0.5,
        what=f"job {job_id} terminal",
    )
    return str(status)


@pytest.fixture(scope="module")
def h20(coord: LiveCoordinator, alice: httpx.Client, module_pg_url: str) -> str:
    """A 20-qubit ``h q;`` job of alice's, completed."""
    job_id = _submit(alice, H20, shots=1024, seed=3)
    assert _wait_stored(module_pg_url, job_id) == "COMPLETED", coord.log_tail()
    return job_id


@pytest.fixture(scope="module")
def bell(coord: LiveCoordinator, alice: httpx.Client, module_pg_url: str) -> str:
    job_id = _submit(alice, BELL_QASM2, shots=2000, seed=11)
    assert _wait_stored(module_pg_url, job_id) == "COMPLETED", coord.log_tail()
    return job_id


def test_stored_document_of_a_20_qubit_job_is_within_the_budget(
    h20: str, module_pg_url: str
) -> None:
    with psycopg.connect(_dsn(module_pg_url)) as conn:
        stored = conn.execute(
            "SELECT octet_length(result::text), result FROM jobs WHERE job_id = %s", (h20,)
        ).fetchone()
        artifacts = conn.execute(
            "SELECT name, dtype, shape, nbytes, octet_length(data) FROM job_artifacts "
            "WHERE job_id = %s",
            (h20,),
        ).fetchall()
    assert stored is not None
    size, result = stored
    assert size <= BUDGET, size
    assert len(json.dumps(result)) <= BUDGET
    qr = result["quantum_result"]
    assert qr["statevector"]["artifact"] == "statevector"  # a reference, not 2^20 pairs
    assert artifacts == [("statevector", "complex128", [2**20], 16 * 2**20, 16 * 2**20)]


def test_job_document_is_bounded_and_says_what_it_left_out(h20: str, alice: httpx.Client) -> None:
    started = time.monotonic()
    r = alice.get(f"/jobs/{h20}")
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert len(r.content) <= BUDGET, len(r.content)
    assert elapsed < 10.0, elapsed  # was 28 s
    job = r.json()
    assert job["status"] == "COMPLETED" and job["owner"] == "alice"
    qr = job["quantum_result"]
    assert "statevector" not in qr and "statevector" in qr["omitted"]
    ref = qr["artifacts"]["statevector"]
    assert ref["href"] == f"/api/v1/jobs/{h20}/artifacts/statevector"
    assert ref["dtype"] == "complex128" and ref["shape"] == [2**20]
    assert ref["bytes"] == 16 * 2**20
    probabilities = qr["probabilities"]
    truncated = qr["truncated"]["probabilities"]
    assert truncated["total"] == 2**20 and truncated["kept"] == len(probabilities) < 2**20
    assert truncated["kept_probability"] == pytest.approx(len(probabilities) / 2**20)
    for p in probabilities.values():
        assert p == pytest.approx(2**-20, rel=1e-9)
    assert len(qr["measured_probabilities"]) <= truncated["kept"]
    assert sum(qr["counts"].values()) == 1024  # 1024 shots over 2^20 outcomes: all kept
    assert "counts" not in qr["truncated"]
    assert qr["fidelity"] == pytest.approx(1.0, abs=1e-9)
    assert qr["observable_expectations"]["X"]["q7"] == pytest.approx(1.0, abs=1e-9)
    assert qr["observable_expectations"]["ZZ"]["q0,q19"] == pytest.approx(0.0, abs=1e-9)
    assert qr["entanglement_entropy"]["q3"] == pytest.approx(0.0, abs=1e-9)
    assert len(qr["top_basis_states"]) == 8


def test_statevector_artifact_equals_qiskit(h20: str, alice: httpx.Client) -> None:
    r = alice.get(f"/jobs/{h20}/artifacts/statevector")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-dtype"] == "complex128"
    assert r.headers["x-shape"] == str(2**20)
    assert r.headers["x-byte-order"] == "little"
    assert len(r.content) == 16 * 2**20 == int(r.headers["content-length"])
    assert r.headers["x-sha256"] == hashlib.sha256(r.content).hexdigest()
    got = np.frombuffer(r.content, dtype="<c16")
    qc = QuantumCircuit(20)
    qc.h(range(20))
    expected = Statevector.from_instruction(qc).data
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    # The reference in the stored result names the same bytes.
    qr = alice.get(f"/jobs/{h20}", params={"include": "statevector"}).json()["quantum_result"]
    assert qr["statevector"]["sha256"] == r.headers["x-sha256"]
    # The same array as a .npy file that numpy loads as is.
    npy = alice.get(f"/jobs/{h20}/artifacts/statevector", params={"format": "npy"})
    assert npy.status_code == 200, npy.text
    assert npy.headers["content-disposition"].endswith('statevector.npy"')
    loaded = np.load(io.BytesIO(npy.content), allow_pickle=False)
    assert loaded.dtype == np.complex128 and loaded.shape == (2**20,)
    assert np.array_equal(loaded, got)
    assert (
        alice.get(f"/jobs/{h20}/artifacts/statevector", params={"format": "csv"}).status_code == 422
    )


def test_include_statevector_on_a_big_job_gives_the_reference(
    h20: str, alice: httpx.Client
) -> None:
    r = alice.get(f"/jobs/{h20}", params={"include": "statevector"})
    assert r.status_code == 200 and len(r.content) <= BUDGET
    sv = r.json()["quantum_result"]["statevector"]
    assert sv["artifact"] == "statevector"
    assert sv["href"] == f"/api/v1/jobs/{h20}/artifacts/statevector"
    assert sv["bytes"] == 16 * 2**20 and sv["shape"] == [2**20]


def test_summary_view_and_lists_stay_small(h20: str, bell: str, alice: httpx.Client) -> None:
    r = alice.get(f"/jobs/{h20}", params={"view": "summary"})
    assert r.status_code == 200 and len(r.content) <= SUMMARY_BYTES, len(r.content)
    qr = r.json()["quantum_result"]
    assert "probabilities" not in qr and "probabilities" in qr["omitted"]
    assert qr["num_qubits"] == 20 and qr["fidelity"] == pytest.approx(1.0, abs=1e-9)
    assert qr["artifacts"]["statevector"]["href"].endswith("/artifacts/statevector")
    listed = alice.get("/jobs", params={"limit": 3})
    assert listed.status_code == 200
    assert len(listed.content) <= 3 * SUMMARY_BYTES, len(listed.content)  # was 413 MB
    items = {j["job_id"]: j for j in listed.json()["items"]}
    assert {h20, bell} <= set(items)
    for item in items.values():
        # Every key of the contract's job document is there, the heavy parts summarised.
        assert {
            "job_id",
            "kind",
            "status",
            "created_at",
            "updated_at",
            "plan_id",
            "error",
            "fragment_results",
            "quantum_result",
            "result",
            "owner",
        } <= set(item)
        assert "probabilities" not in item["quantum_result"]
        assert "statevector" not in item["quantum_result"]
    assert items[h20]["quantum_result"]["num_qubits"] == 20
    assert items[bell]["quantum_result"]["top_basis_states"][0]["bitstring"] in {"00", "11"}
    assert items[bell]["fragment_results"]


def test_artifact_follows_the_job_access_rule(
    h20: str, coord: LiveCoordinator, bob: httpx.Client
) -> None:
    r = bob.get(f"/jobs/{h20}/artifacts/statevector")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert r.json()["error"]["details"]["job_id"] == h20
    assert bob.get(f"/jobs/{h20}").status_code == 403
    assert coord.http.get(f"/jobs/{h20}/artifacts/statevector").status_code == 200  # admin
    assert httpx.get(f"{coord.base_url}/api/v1/jobs/{h20}/artifacts/statevector").status_code == (
        401
    )
    r = coord.http.get(f"/jobs/{h20}/artifacts/density_matrix")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = coord.http.get("/jobs/no-such-job/artifacts/statevector")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_small_circuit_result_is_unchanged(bell: str, alice: httpx.Client) -> None:
    job = alice.get(f"/jobs/{bell}").json()
    qr = job["quantum_result"]
    assert qr["probabilities"] == pytest.approx({"00": 0.5, "11": 0.5}, abs=1e-9)
    assert qr["measured_probabilities"] == pytest.approx({"00": 0.5, "11": 0.5}, abs=1e-9)
    assert sum(qr["counts"].values()) == 2000 and set(qr["counts"]) <= {"00", "11"}
    assert "truncated" not in qr
    assert "statevector" not in qr and qr["omitted"] == ["statevector"]  # the contract
    full = alice.get(f"/jobs/{bell}", params={"include": "statevector"}).json()["quantum_result"]
    assert "omitted" not in full
    inline = np.array([complex(re, im) for re, im in full["statevector"]])
    np.testing.assert_allclose(inline, [2**-0.5, 0, 0, 2**-0.5], atol=1e-12)
    assert {k: v for k, v in full.items() if k not in ("statevector", "artifacts")} == {
        k: v for k, v in qr.items() if k not in ("omitted", "artifacts")
    }
    # Every circuit job has the statevector artifact, small ones served from the document.
    r = alice.get(qr["artifacts"]["statevector"]["href"].removeprefix("/api/v1"))
    assert r.status_code == 200 and r.headers["x-shape"] == "4"
    np.testing.assert_array_equal(np.frombuffer(r.content, dtype="<c16"), inline)


def test_bad_view_parameters_are_422(bell: str, alice: httpx.Client) -> None:
    for params in ({"include": "everything"}, {"view": "tiny"}):
        r = alice.get(f"/jobs/{bell}", params=params)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "validation_error"
