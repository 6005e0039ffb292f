"""The same Alembic migrations run on the real PostgreSQL and on the embedded SQLite."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from quantum_mesh.control import repository as repo
from quantum_mesh.control.jobs import SUMMARY_PATHS, job_to_dict, summary_result
from quantum_mesh.control.states import JobStatus
from quantum_mesh.errors import Conflict, NotFound, QuotaExceeded
from quantum_mesh.quantum.analysis import ResultArtifact
from quantum_mesh.store.database import Database, alembic_config, run_migrations

EXPECTED_TABLES = {
    "jobs",
    "execution_plans",
    "fragment_executions",
    "execution_events",
    "enrollments",
    "reservations",
    "reservation_events",
    "peer_snapshots",
    "fidelity_samples",
    "principals",
    "api_keys",
    "job_artifacts",
    "alembic_version",
}


async def _tables(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def _exercise(url: str) -> None:
    await asyncio.to_thread(run_migrations, url)
    await asyncio.to_thread(run_migrations, url)  # idempotent: a second upgrade is a no-op
    db = Database(url)
    try:
        assert await _tables(db) >= EXPECTED_TABLES
        await db.write(
            partial(
                repo.create_job, job_id="j1", kind="circuit", request={"x": 1}, idempotency_key="k1"
            )
        )
        await db.write(partial(_move, job_id="j1", statuses=[JobStatus.COMPILING]))
        with pytest.raises(Conflict):
            await db.write(partial(_move, job_id="j1", statuses=[JobStatus.COMPLETED]))
        async with db.transaction() as s:
            events = await repo.list_events(s, job_id="j1")
            assert [e.payload["status"] for e in events] == ["QUEUED", "COMPILING"]
            assert [e.seq for e in events] == sorted(e.seq for e in events)
            found = await repo.get_job_by_idempotency_key(s, key="k1")
            assert found is not None and found.status == "COMPILING"
        await _exercise_owners(db)
        await _exercise_artifacts(db)
    finally:
        await db.dispose()


def _move(s: Session, *, job_id: str, statuses: list[JobStatus], result: Any = None) -> None:
    """One write: the job through ``statuses`` (the last one with ``result``)."""
    job = repo.lock_job(s, job_id=job_id)
    for status in statuses[:-1]:
        repo.transition_job(s, job=job, to=status)
    repo.transition_job(s, job=job, to=statuses[-1], result=result)


def _create(s: Session, **job: Any) -> None:
    repo.create_job(s, **{"request": {}, "idempotency_key": None, **job})


async def _exercise_owners(db: Database) -> None:
    """Owned jobs: idempotency keys are scoped per owner, lists filter by owner, quotas."""
    for job_id, owner in (("a1", "alice"), ("b1", "bob")):
        await db.write(
            partial(_create, job_id=job_id, kind="circuit", idempotency_key="k1", owner=owner)
        )
    with pytest.raises(IntegrityError):
        await db.write(
            partial(_create, job_id="a2", kind="circuit", idempotency_key="k1", owner="alice")
        )
    async with db.transaction() as s:
        found = await repo.get_job_by_idempotency_key(s, key="k1", owner="bob")
        assert found is not None and found.job_id == "b1"
        legacy = await repo.get_job_by_idempotency_key(s, key="k1")
        assert legacy is not None and legacy.job_id == "j1" and legacy.owner is None
        jobs, total = await repo.list_jobs(s, kinds=None, limit=10, offset=0, owner="alice")
        assert [j.job_id for j in jobs] == ["a1"] and total == 1
        _, everyone = await repo.list_jobs(s, kinds=None, limit=10, offset=0)
        assert everyone == 3
    with pytest.raises(QuotaExceeded):
        await db.write(
            partial(_create, job_id="a3", kind="circuit", owner="alice", max_unfinished=1)
        )
    await db.write(partial(_create, job_id="a3", kind="circuit", owner="alice", max_unfinished=2))


async def _exercise_artifacts(db: Database) -> None:
    """Result artifacts (raw bytes beside the job) and the light reads lists make."""
    psi = np.exp(1j * np.arange(8192)) / np.sqrt(8192)
    big = ResultArtifact.of("statevector", psi)
    small = {"quantum_result": {"num_qubits": 1, "statevector": [[0.6, 0.0], [0.0, 0.8]]}}
    for job_id in ("big", "small"):
        await db.write(partial(_create, job_id=job_id, kind="circuit"))
    await db.write(partial(_create, job_id="run", kind="sqd"))
    running = [JobStatus.COMPILING, JobStatus.RESERVING, JobStatus.EXECUTING, JobStatus.COMPLETED]
    for job_id, result in (
        (
            "big",
            {
                "fragment_results": [{"fragment_id": "f0"}],
                "quantum_result": {
                    "num_qubits": 13,
                    "measured_all_implicitly": False,
                    "fidelity": 1.0,
                    "probabilities": {"0": 1.0},
                    "statevector": big.reference(),
                },
            },
        ),
        ("small", small),
        ("run", {"energy": -1.1}),
    ):
        await db.write(partial(_move, job_id=job_id, statuses=running, result=result))
    await db.write(partial(repo.save_artifacts, job_id="big", artifacts=[big]))
    # a second save replaces, never duplicates
    await db.write(partial(repo.save_artifacts, job_id="big", artifacts=[big]))
    async with db.transaction() as s:
        head = await repo.get_job_head(s, job_id="big")
        stored = await repo.read_artifact(s, job=head, name="statevector")
        assert stored is not None and stored.data == big.data and stored.shape == [8192]
        assert (stored.dtype, stored.nbytes, stored.sha256) == ("complex128", 16 * 8192, big.sha256)
        np.testing.assert_array_equal(np.frombuffer(stored.data, dtype="<c16"), psi)
        inline = await repo.read_artifact(
            s, job=await repo.get_job_head(s, job_id="small"), name="statevector"
        )
        assert inline is not None and inline.shape == [2]
        assert np.frombuffer(inline.data, dtype="<c16").tolist() == [0.6, 0.8j]
        assert await repo.read_artifact(s, job=head, name="other") is None
        with pytest.raises(NotFound):
            await repo.get_job_head(s, job_id="nope")
        items, _ = await repo.list_jobs_light(
            s, kinds=None, limit=10, offset=0, path_kinds=["circuit"], paths=SUMMARY_PATHS
        )
        shown = {
            i.job.job_id: job_to_dict(
                i.job,
                view="summary",
                result=summary_result(i.parts) if i.job.kind == "circuit" else i.result,
            )
            for i in items
        }
    assert shown["run"]["result"] == {"energy": -1.1}
    summary = shown["big"]["quantum_result"]
    assert summary["num_qubits"] == 13 and summary["measured_all_implicitly"] is False
    assert "probabilities" not in summary and "probabilities" in summary["omitted"]
    assert summary["artifacts"]["statevector"]["sha256"] == big.sha256
    assert shown["big"]["fragment_results"] == [{"fragment_id": "f0"}]
    assert shown["small"]["quantum_result"]["artifacts"]["statevector"]["shape"] == [2]


async def test_migrations_on_postgres(pg_url: str) -> None:
    await _exercise(pg_url)


async def test_migrations_on_sqlite(sqlite_url: str) -> None:
    await _exercise(sqlite_url)


async def _upgrade_from_0001(url: str) -> None:
    """A database written by the first schema keeps its rows through the principals
    migration: old jobs and reservations have no owner; downgrade and upgrade again work."""
    cfg = alembic_config(url)
    await asyncio.to_thread(run_migrations, url)
    await asyncio.to_thread(command.downgrade, cfg, "0001")
    db = Database(url)
    now = datetime.now(UTC)
    try:
        async with db.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO jobs (job_id, kind, status, request, idempotency_key, "
                    "created_at, updated_at) VALUES ('old', 'circuit', 'COMPLETED', '{}', "
                    "'legacy-key', :now, :now)"
                ),
                {"now": now},
            )
            await conn.execute(
                text(
                    "INSERT INTO reservations (reservation_id, service_type, status, "
                    "expires_at, created_at, updated_at) VALUES ('r-old', 'cnot', 'EXPIRED', "
                    ":now, :now, :now)"
                ),
                {"now": now},
            )
        await asyncio.to_thread(run_migrations, url)
        assert await _tables(db) >= EXPECTED_TABLES
        async with db.transaction() as s:
            old = await repo.get_job(s, job_id="old")
            assert old.owner is None
            assert (await repo.get_job_by_idempotency_key(s, key="legacy-key")) is not None
            assert await repo.get_job_by_idempotency_key(s, key="legacy-key", owner="x") is None
            _, visible = await repo.list_jobs(s, kinds=None, limit=10, offset=0, owner="x")
            assert visible == 0
            owner = (
                await s.execute(text("SELECT owner FROM reservations WHERE reservation_id='r-old'"))
            ).scalar_one()
            assert owner is None
            # The same key may now be used by a principal beside the legacy row.
            await s.run_sync(
                _create, job_id="new", kind="circuit", idempotency_key="legacy-key", owner="alice"
            )
    finally:
        await db.dispose()
    await asyncio.to_thread(command.downgrade, cfg, "0001")
    await asyncio.to_thread(run_migrations, url)


async def test_principals_migration_upgrades_a_populated_postgres(pg_url: str) -> None:
    await _upgrade_from_0001(pg_url)


async def test_principals_migration_upgrades_a_populated_sqlite(sqlite_url: str) -> None:
    await _upgrade_from_0001(sqlite_url)
