"""Projections written from the events of a real migrated database into a real SecantusDB."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from tests.store import mongo_fixtures
from tests.store.mongo_fixtures import NODE_A, event_count, finish_job, migrated_db, start_job

from quantum_mesh.control import repository as repo
from quantum_mesh.store.database import Database
from quantum_mesh.store.mongo.documents import ProjectionCheckpoint, ProvenanceBundle
from quantum_mesh.store.mongo.projector import Projector, rebuild_projections

# Until tests/conftest.py imports them (then these three lines can go).
docserver = mongo_fixtures.docserver
mongo_url = mongo_fixtures.mongo_url
mongo_db_name = mongo_fixtures.mongo_db_name


@pytest.fixture
async def sqlite_db(sqlite_url: str) -> AsyncIterator[Database]:
    db = await migrated_db(sqlite_url)
    yield db
    await db.dispose()


@pytest.fixture
async def pg_db(pg_url: str) -> AsyncIterator[Database]:
    db = await migrated_db(pg_url)
    yield db
    await db.dispose()


async def _projector(db: Database, url: str, name: str) -> Projector:
    projector = Projector(db=db, mongo_url=url, database_name=name)
    await projector.connect()
    return projector


async def _dump(projector: Projector) -> list[dict[str, Any]]:
    coll = ProvenanceBundle.get_pymongo_collection()
    return [doc async for doc in coll.find({}, {"_id": 0}).sort("job_id", 1)]


async def test_catch_up_builds_provenance_once(
    sqlite_db: Database, mongo_url: str, mongo_db_name: str
) -> None:
    db = sqlite_db
    await start_job(db, "job-ok")
    result = await finish_job(db, "job-ok")
    await start_job(db, "job-bad")
    await finish_job(db, "job-bad", ok=False)
    await start_job(db, "job-running")
    projector = await _projector(db, mongo_url, mongo_db_name)
    try:
        assert await projector.catch_up() == await event_count(db)
        assert projector.status() == "up"
        assert await projector.catch_up() == 0  # nothing new: nothing applied
        first = await _dump(projector)
        assert [b["job_id"] for b in first] == ["job-bad", "job-ok"]

        bundle = await projector.get_provenance("job-ok")
        assert bundle is not None
        canonical = json.dumps(result, sort_keys=True, separators=(",", ":"))
        assert bundle["result_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
        assert bundle["status"] == "COMPLETED" and bundle["kind"] == "circuit"
        assert bundle["input"]["circuit"].startswith("OPENQASM 2.0")
        assert bundle["seeds"] == {"seed": 7}
        assert bundle["plan_id"] == "plan-job-ok" and bundle["plan"]["fragments"][0]["qubits"]
        assert [n["node_id"] for n in bundle["nodes"]] == [NODE_A]
        assert {"qiskit", "numpy", "libp2p"} <= set(bundle["library_versions"])
        async with db.transaction() as s:
            seqs = [e.seq for e in await repo.list_events(s, job_id="job-ok")]
        assert [e["seq"] for e in bundle["events"]] == seqs
        assert [
            e["payload"].get("status") for e in bundle["events"] if e["event_type"] == "status"
        ] == ["QUEUED", "COMPILING", "EXECUTING", "COMPLETED"]
        assert bundle["last_seq"] == seqs[-1]
        failed = await projector.get_provenance("job-bad")
        assert failed is not None and failed["error"]["code"] == "execution_failed"
        assert await projector.get_provenance("job-running") is None

        # A replay from scratch (checkpoint lost) rewrites the same documents, no duplicates.
        await ProjectionCheckpoint.get_pymongo_collection().delete_many({})
        assert await projector.catch_up(batch=3) == await event_count(db)
        assert await _dump(projector) == first
    finally:
        await projector.close()


async def test_rebuild_equals_incremental_on_postgres(
    pg_db: Database, mongo_url: str, mongo_db_name: str
) -> None:
    db = pg_db
    projector = await _projector(db, mongo_url, mongo_db_name)
    try:
        await start_job(db, "a")
        await start_job(db, "b")
        await projector.catch_up(batch=2)
        await finish_job(db, "a")
        await projector.catch_up(batch=2)
        await finish_job(db, "b", ok=False)
        # an event after the terminal one joins the bundle
        await db.write(
            partial(
                repo.append_event,
                job_id="a",
                event_type="reservation_released",
                node_id=NODE_A,
                payload={"reason": "job finished"},
            )
        )
        await projector.catch_up(batch=2)
        incremental = await _dump(projector)
        late = incremental[0]["events"][-1]
        # Its whole payload too (the projector reads other payloads only for late events).
        assert late["event_type"] == "reservation_released"
        assert late["payload"] == {"reason": "job finished"} and late["node_id"] == NODE_A
        assert incremental[0]["last_seq"] == incremental[0]["events"][-1]["seq"]

        replayed = await projector.rebuild()
        assert replayed == await event_count(db)
        assert await _dump(projector) == incremental
        assert await projector.checkpoint() == max(
            e["seq"] for b in incremental for e in b["events"]
        )
    finally:
        await projector.close()

    # The CLI entry point: the database name travels in the URL.
    assert await rebuild_projections(db.url, mongo_url + mongo_db_name) == await event_count(db)
    again = await _projector(db, mongo_url, mongo_db_name)
    try:
        assert await _dump(again) == incremental
    finally:
        await again.close()


async def test_restarted_projector_continues_from_checkpoint(
    sqlite_db: Database, mongo_url: str, mongo_db_name: str
) -> None:
    db = sqlite_db
    await start_job(db, "one")
    await finish_job(db, "one")
    first = await _projector(db, mongo_url, mongo_db_name)
    before = await event_count(db)
    assert await first.catch_up() == before
    await first.close()

    await start_job(db, "two")
    await finish_job(db, "two")
    second = await _projector(db, mongo_url, mongo_db_name)
    try:
        assert await second.catch_up() == await event_count(db) - before
        assert [b["job_id"] for b in await _dump(second)] == ["one", "two"]
    finally:
        await second.close()


def test_catch_up_waits_for_a_fresh_gap_and_steps_over_an_old_one() -> None:
    now = datetime.now(UTC)
    old = (now - timedelta(minutes=5)).isoformat()
    fresh = now.isoformat()
    events = [{"seq": 1, "at": old}, {"seq": 3, "at": fresh}, {"seq": 4, "at": fresh}]
    # seq 2 may still be committing: stop in front of it.
    assert [e["seq"] for e in Projector._contiguous(events, after=0)] == [1]
    events[1]["at"] = old  # seq 2 is long gone (rolled back): step over it
    assert [e["seq"] for e in Projector._contiguous(events, after=0)] == [1, 3, 4]


async def test_peers_topology_and_benchmarks(
    sqlite_db: Database, mongo_url: str, mongo_db_name: str
) -> None:
    projector = await _projector(sqlite_db, mongo_url, mongo_db_name)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    view = {
        "peer_id": NODE_A,
        "name": "node-a",
        "listen_addrs": ["/ip4/127.0.0.1/tcp/4002"],
        "services": ["bell_pair", "measure"],
        "fidelity": 0.99,
        "qubit_min": 1,
        "qubit_max": 8,
        "availability": "AVAILABLE",
        "load": 0.25,
        "updated_at": t0.isoformat(),
        "fresh": True,
        "enrollment": "APPROVED",
        "latency_ms": 1.5,
    }
    try:
        assert await projector.project_peers([view])
        newer = {**view, "load": 0.5, "updated_at": (t0 + timedelta(seconds=5)).isoformat()}
        assert await projector.project_peers([newer, view])  # the older view loses
        peers = await projector.list_peers()
        assert len(peers) == 1 and peers[0]["load"] == 0.5 and peers[0]["qubit_max"] == 8

        for latency in (1.0, 2.0):
            assert await projector.snapshot_topology(
                {
                    "coordinator": "12D3KooWCoord",
                    "nodes": [{"id": NODE_A}],
                    "links": [
                        {
                            "source": "12D3KooWCoord",
                            "target": NODE_A,
                            "connected": True,
                            "latency_ms": latency,
                        }
                    ],
                }
            )
        latest = await projector.latest_topology()
        assert latest is not None and latest["links"][0]["latency_ms"] == 2.0

        for i in range(3):
            assert await projector.record_benchmark(
                {
                    "benchmark_id": f"b{i}",
                    "workload": "qaoa_knapsack",
                    "modes": ["distributed", "local"],
                    "figures": {"speedup": 1.0 + i},
                    "created_at": (t0 + timedelta(minutes=i)).isoformat(),
                    "scenario": "3 nodes",
                }
            )
        assert await projector.record_benchmark(
            {"benchmark_id": "b2", "workload": "qaoa", "created_at": (t0 + timedelta(minutes=2))}
        )
        items, total = await projector.list_benchmarks(limit=2, offset=0)
        assert total == 3 and [b["benchmark_id"] for b in items] == ["b2", "b1"]
        assert items[1]["details"] == {"scenario": "3 nodes"}
    finally:
        await projector.close()


async def test_a_batch_of_bundles_lands_together_and_an_oversized_one_is_cut(
    sqlite_db: Database, mongo_url: str, mongo_db_name: str
) -> None:
    """The bundles a batch closes are written as one bulk; one over MongoDB's document limit
    sends the batch one by one, where that bundle is stored cut (no plan, no payloads)."""
    projector = await _projector(sqlite_db, mongo_url, mongo_db_name)
    now = datetime.now(UTC)

    def bundle(job_id: str, *, plan_bytes: int = 0) -> ProvenanceBundle:
        return ProvenanceBundle(
            job_id=job_id,
            kind="circuit",
            status="COMPLETED",
            input={},
            plan={"blob": "x" * plan_bytes} if plan_bytes else None,
            events=[{"seq": 1, "event_type": "status", "payload": {"status": "COMPLETED"}}],
            result_hash="h",
            job_created_at=now,
            created_at=now,
            last_seq=1,
        )

    small = {f"job-{i}": bundle(f"job-{i}") for i in range(3)}
    await projector._upsert_bundles(dict.fromkeys(small, 1), small)
    assert [d["job_id"] for d in await _dump(projector)] == sorted(small)

    mixed = {"job-big": bundle("job-big", plan_bytes=17 * 2**20), "job-3": bundle("job-3")}
    await projector._upsert_bundles(dict.fromkeys(mixed, 1), mixed)
    docs = {d["job_id"]: d for d in await _dump(projector)}
    assert set(docs) == {*small, *mixed}
    assert docs["job-big"]["truncated"] is True and docs["job-big"]["plan"] is None
    assert "truncated" not in docs["job-3"] or not docs["job-3"]["truncated"]
    # Applying the same batch again changes nothing (every write is guarded by last_seq).
    await projector._upsert_bundles(dict.fromkeys(small, 1), small)
    assert len(await _dump(projector)) == len(docs)
