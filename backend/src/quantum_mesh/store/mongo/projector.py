"""Feed MongoDB projections from the Postgres/SQLite event tables.

Postgres is the source of truth; MongoDB holds read-optimised copies that can be dropped and
rebuilt at any time. Every write here is an idempotent upsert keyed by a natural id and guarded
by the event ``seq``, and the checkpoint only moves forward, so a replay, a crash between a
write and its checkpoint, or two projectors racing never duplicate anything. A MongoDB outage
only marks the projector degraded: jobs never fail because of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from beanie import init_beanie
from pymongo import AsyncMongoClient, ReplaceOne, uri_parser
from pymongo.errors import BulkWriteError, DocumentTooLarge, DuplicateKeyError, PyMongoError
from sqlalchemy import case, func, select, type_coerce
from sqlalchemy.exc import SQLAlchemyError

from quantum_mesh.logs import get_logger, redact_url
from quantum_mesh.store.database import Database
from quantum_mesh.store.mongo.documents import (
    DOCUMENT_MODELS,
    BenchmarkResult,
    PeerCapability,
    ProjectionCheckpoint,
    ProvenanceBundle,
    TopologySnapshot,
    utcnow,
)
from quantum_mesh.store.mongo.provenance import as_utc, build_bundles, event_dict
from quantum_mesh.store.tables import Enrollment, ExecutionEvent, PeerSnapshot

log = get_logger(__name__)

DEFAULT_DATABASE = "qmesh"
EVENTS_CHECKPOINT = "execution_events"
#: Job statuses that close a job and produce its provenance bundle.
PROVENANCE_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
#: A hole in ``seq`` younger than this may be a transaction that has not committed yet
#: (Postgres hands out sequence numbers before commit), so catch-up stops in front of it;
#: an older hole is a rolled-back insert and is stepped over.
GAP_GRACE_S = 10.0
MAX_BATCHES_PER_CATCH_UP = 1000
#: Events applied per batch. The batch's rows are read and its bundles built on the API
#: loop between awaits, so its size bounds how long one batch holds the loop: at ~80 jobs/s
#: batches of 500 events stalled it for tens of milliseconds each (the /health p99).
CATCH_UP_BATCH = 100
SERVER_SELECTION_TIMEOUT_MS = 2000
SOCKET_TIMEOUT_MS = 10_000
_DOC_EXCLUDE = {"id", "revision_id"}


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0][:200]


def _public(doc: Any) -> dict[str, Any]:
    data: dict[str, Any] = doc.model_dump(mode="json", exclude=_DOC_EXCLUDE)
    return data


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str):
        return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return utcnow()


def peer_document(view: dict[str, Any]) -> dict[str, Any]:
    """A registry view (``/discovery/peers`` item) as a ``PeerCapability`` field dict."""
    doc = PeerCapability(
        peer_id=str(view["peer_id"]),
        name=str(view.get("name") or ""),
        services=[str(s) for s in view.get("services") or []],
        fidelity=view.get("fidelity"),
        qubit_min=int(view.get("qubit_min") or 0),
        qubit_max=int(view.get("qubit_max") or 0),
        load=float(view.get("load") or 0.0),
        availability=str(view.get("availability") or "UNKNOWN"),
        listen_addrs=[str(a) for a in view.get("listen_addrs") or []],
        enrollment=view.get("enrollment"),
        fresh=bool(view.get("fresh", False)),
        latency_ms=view.get("latency_ms"),
        updated_at=_parse_time(view.get("updated_at")),
        source_seq=int(view.get("seq") or 0),
    )
    return doc.model_dump(exclude=_DOC_EXCLUDE)


#: MongoDB's duplicate-key error code (a guarded upsert that found a newer document).
DUPLICATE_KEY = 11000


def _bundle_guard(job_id: str, seq: int) -> dict[str, Any]:
    """Guarded by ``last_seq``: an older replay never overwrites a bundle that saw more."""
    return {"job_id": job_id, "last_seq": {"$lte": seq}}


class Projector:
    """Reads ``execution_events`` in ``seq`` order and maintains the MongoDB projections."""

    def __init__(
        self,
        *,
        db: Database,
        mongo_url: str,
        database_name: str = DEFAULT_DATABASE,
        server_selection_timeout_ms: int = SERVER_SELECTION_TIMEOUT_MS,
    ) -> None:
        self.db = db
        self.mongo_url = mongo_url
        self.database_name = database_name
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            mongo_url,
            tz_aware=True,
            serverSelectionTimeoutMS=server_selection_timeout_ms,
            connectTimeoutMS=server_selection_timeout_ms,
            socketTimeoutMS=SOCKET_TIMEOUT_MS,
        )
        self._connected = False
        self._status = "down: not connected"
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------
    async def connect(self) -> None:
        """Bind the Beanie documents to this database and create their indexes.

        Raises:
            PyMongoError: MongoDB is unreachable (``run`` retries on its next tick).
        """
        await init_beanie(
            database=self._client[self.database_name], document_models=DOCUMENT_MODELS
        )
        self._connected = True
        self._mark_up()  # it answered: up, also where the catch-up runs in another process

    async def close(self) -> None:
        self._closing.set()
        await self._client.close()

    def status(self) -> str:
        """``"up"``, or ``"down: <reason>"`` while MongoDB is unreachable."""
        return self._status

    def _mark_up(self) -> None:
        if self._status != "up":
            log.info("projector.up", mongo=redact_url(self.mongo_url))
        self._status = "up"

    def _mark_down(self, error: Exception) -> None:
        reason = f"down: {type(error).__name__}: {_first_line(error)}"
        if self._status != reason:
            log.warning("projector.degraded", reason=reason)
        self._status = reason
        self._connected = False

    async def _ensure_connected(self) -> None:
        if not self._connected:
            await self.connect()

    # --- events ----------------------------------------------------------------------------
    async def checkpoint(self) -> int:
        doc = await ProjectionCheckpoint.find_one(ProjectionCheckpoint.name == EVENTS_CHECKPOINT)
        return 0 if doc is None else doc.last_seq

    async def _save_checkpoint(self, seq: int) -> None:
        coll = ProjectionCheckpoint.get_pymongo_collection()
        try:
            await coll.update_one(
                {"name": EVENTS_CHECKPOINT},
                {"$max": {"last_seq": seq}, "$set": {"updated_at": utcnow()}},
                upsert=True,
            )
        except DuplicateKeyError:  # a concurrent first upsert won; ours is now a plain update
            await coll.update_one(
                {"name": EVENTS_CHECKPOINT},
                {"$max": {"last_seq": seq}, "$set": {"updated_at": utcnow()}},
            )

    async def catch_up(self, batch: int = CATCH_UP_BATCH) -> int:
        """Apply every committed event after the checkpoint; returns how many were applied.

        Never raises for a MongoDB outage: the projector is marked degraded, 0 is returned and
        the next call resumes from the last saved checkpoint.
        """
        async with self._lock:
            try:
                await self._ensure_connected()
                applied, _ = await self._catch_up(batch, after=await self.checkpoint())
            except PyMongoError as error:
                self._mark_down(error)
                return 0
            self._mark_up()
            return applied

    async def _catch_up(self, batch: int, *, after: int) -> tuple[int, int]:
        """Apply events after ``after``; returns (events applied, last seq applied)."""
        applied = 0
        for _ in range(MAX_BATCHES_PER_CATCH_UP):
            events = await self._read_events(after=after, limit=batch)
            ready = self._contiguous(events, after=after)
            if ready:
                await self._apply(ready)
                after = ready[-1]["seq"]
                await self._save_checkpoint(after)
                applied += len(ready)
            if len(ready) < batch:
                break
        return applied, after

    async def _read_events(self, *, after: int, limit: int) -> list[dict[str, Any]]:
        """The events after ``after``, as plain rows. Only a status event's payload is read:
        a status is what closes a job's bundle, and the other payloads (a checkpoint holds a
        whole beam) are needed only for a rare late event (``_late_payloads``). Reading and
        decoding them all, through the ORM, was most of the projector's time on the API loop
        during a knapsack run."""
        async with self.db.transaction() as session:
            rows = await session.execute(
                select(*_EVENT_COLUMNS)
                .where(ExecutionEvent.seq > after)
                .order_by(ExecutionEvent.seq)
                .limit(limit)
            )
            return [{**event_dict(row), "job_id": row.job_id} for row in rows]

    async def _late_payloads(self, events: list[dict[str, Any]]) -> None:
        """Fill in the payloads ``_read_events`` left out, for these (late) events."""
        wanted = [e["seq"] for e in events if e["event_type"] != "status"]
        if not wanted:
            return
        async with self.db.transaction() as session:
            rows = await session.execute(
                select(ExecutionEvent.seq, ExecutionEvent.payload).where(
                    ExecutionEvent.seq.in_(wanted)
                )
            )
            payloads = {row.seq: row.payload or {} for row in rows}
        for event in events:
            if event["seq"] in payloads:
                event["payload"] = payloads[event["seq"]]

    @staticmethod
    def _contiguous(events: list[dict[str, Any]], *, after: int) -> list[dict[str, Any]]:
        """The prefix of ``events`` that has no hole which might still be filled."""
        cutoff = utcnow() - timedelta(seconds=GAP_GRACE_S)
        expected = after + 1
        for index, event in enumerate(events):
            if event["seq"] != expected and _parse_time(event["at"]) > cutoff:
                log.debug("projector.gap_wait", missing=expected, next_seq=event["seq"])
                return events[:index]
            expected = event["seq"] + 1
        return events

    async def _apply(self, events: list[dict[str, Any]]) -> None:
        coll = ProvenanceBundle.get_pymongo_collection()
        job_ids = list({e["job_id"] for e in events})
        closed = {d["job_id"] async for d in coll.find({"job_id": {"$in": job_ids}}, {"job_id": 1})}
        # The jobs this batch closes, each at its terminal event; their bundles are read
        # together (one query per table for the whole batch, not per job).
        closing: dict[str, int] = {}
        for event in events:
            status = event["payload"].get("status") if event["event_type"] == "status" else None
            if status in PROVENANCE_STATUSES and event["job_id"] not in closing:
                closing[event["job_id"]] = event["seq"]
        async with self.db.transaction() as session:
            bundles = await build_bundles(session, closing)
        late: list[dict[str, Any]] = []
        for event in events:
            job_id, seq = event["job_id"], event["seq"]
            if closing.get(job_id) == seq:
                closed.add(job_id)
            elif job_id in closed and seq > closing.get(job_id, -1):
                late.append(event)
        # The batch's bundles in one round trip; a job's late events after its bundle.
        await self._upsert_bundles(closing, bundles)
        await self._late_payloads(late)
        for event in late:
            await self._append_late_event(event)

    async def _upsert_bundles(
        self, closing: dict[str, int], bundles: dict[str, ProvenanceBundle]
    ) -> None:
        """Each closed job's bundle, as one unordered bulk write (a replace per job costs a
        round trip and pymongo's per-command work each: under load that was a millisecond of
        the API loop per job). A bundle too large for one document, or any doubt about the
        bulk, falls back to one write per bundle: every write is guarded, so applying one
        twice changes nothing."""
        requests = []
        for job_id, seq in closing.items():
            bundle = bundles.get(job_id)
            if bundle is None:
                log.warning("projector.job_missing", job_id=job_id, seq=seq)
                continue
            body = bundle.model_dump(exclude=_DOC_EXCLUDE)
            requests.append(ReplaceOne(_bundle_guard(job_id, seq), body, upsert=True))
        if not requests:
            return
        coll = ProvenanceBundle.get_pymongo_collection()
        try:
            await coll.bulk_write(requests, ordered=False)
            return
        except BulkWriteError as error:
            # Duplicate keys are bundles already stored from a later replay: fine.
            if all(e.get("code") == DUPLICATE_KEY for e in error.details.get("writeErrors", [])):
                return
            log.warning("projector.bulk_fallback", errors=len(error.details["writeErrors"]))
        except DocumentTooLarge:
            pass
        for job_id, seq in closing.items():
            if job_id in bundles:  # a missing one was reported above
                await self._upsert_bundle(bundles[job_id], job_id=job_id, seq=seq)

    async def _upsert_bundle(
        self, bundle: ProvenanceBundle | None, *, job_id: str, seq: int
    ) -> None:
        if bundle is None:
            log.warning("projector.job_missing", job_id=job_id, seq=seq)
            return
        coll = ProvenanceBundle.get_pymongo_collection()
        body = bundle.model_dump(exclude=_DOC_EXCLUDE)
        guard = _bundle_guard(job_id, seq)
        try:
            try:
                await coll.replace_one(guard, body, upsert=True)
            except DocumentTooLarge:
                log.warning("projector.bundle_truncated", job_id=job_id)
                body.update(
                    plan=None,
                    events=[{k: v for k, v in e.items() if k != "payload"} for e in body["events"]],
                    truncated=True,
                )
                await coll.replace_one(guard, body, upsert=True)
        except DuplicateKeyError:
            log.debug("projector.bundle_newer", job_id=job_id, seq=seq)

    async def _append_late_event(self, event: dict[str, Any]) -> None:
        """An event after the terminal one (e.g. a late cleanup) joins the bundle, once."""
        body = {k: v for k, v in event.items() if k != "job_id"}
        await ProvenanceBundle.get_pymongo_collection().update_one(
            {"job_id": event["job_id"], "last_seq": {"$lt": event["seq"]}},
            {"$push": {"events": body}, "$set": {"last_seq": event["seq"]}},
        )

    # --- rebuild ---------------------------------------------------------------------------
    async def rebuild(self) -> int:
        """Drop the event-fed projections and the checkpoint, then replay all of Postgres.

        Peer capabilities are re-seeded from ``peer_snapshots``; topology snapshots and
        benchmark results are fed live (not from events) and are kept.

        Raises:
            PyMongoError: MongoDB is unreachable (a rebuild is an operator action: say so).
        """
        async with self._lock:
            await self._ensure_connected()
            await ProvenanceBundle.get_pymongo_collection().delete_many({})
            await ProjectionCheckpoint.get_pymongo_collection().delete_many({})
            await PeerCapability.get_pymongo_collection().delete_many({})
            await self._seed_peers_from_snapshots()
            async with self.db.transaction() as session:
                top = (await session.execute(select(func.max(ExecutionEvent.seq)))).scalar()
            # Our own cursor, not the stored checkpoint: a coordinator projecting at the same
            # time may move that past events whose bundles were just dropped.
            applied, after = 0, 0
            for _ in range(MAX_BATCHES_PER_CATCH_UP):
                count, after = await self._catch_up(500, after=after)
                applied += count
                if after >= (top or 0) or count == 0:
                    break
            self._mark_up()
            log.info("projector.rebuilt", events=applied)
            return applied

    async def _seed_peers_from_snapshots(self) -> None:
        async with self.db.transaction() as session:
            snapshots = list((await session.execute(select(PeerSnapshot))).scalars())
            enrollments = {
                e.peer_id: e.status for e in (await session.execute(select(Enrollment))).scalars()
            }
        views = [
            {
                **(s.advert or {}),
                "peer_id": s.peer_id,
                "updated_at": as_utc(s.updated_at),
                "fresh": False,
                "enrollment": enrollments.get(s.peer_id),
            }
            for s in snapshots
        ]
        await self._upsert_peers(views)

    # --- live feeds ------------------------------------------------------------------------
    # These return False instead of raising while MongoDB is down: a projection must never
    # break the caller (the registry loop, a benchmark run); the caller may retry later.
    async def project_peers(self, peers: list[dict[str, Any]]) -> bool:
        """Upsert ``PeerCapability`` from registry views; an older view never wins."""
        return await self._guarded(lambda: self._upsert_peers(peers))

    async def snapshot_topology(self, topology: dict[str, Any]) -> bool:
        """Store one ``/discovery/topology`` view as a timestamped snapshot."""
        taken = topology.get("taken_at")
        snapshot = TopologySnapshot.model_validate(
            {
                "taken_at": _parse_time(taken) if taken else utcnow(),
                "coordinator": topology.get("coordinator"),
                "nodes": list(topology.get("nodes") or []),
                "links": list(topology.get("links") or []),
            }
        )
        return await self._guarded(snapshot.insert)

    async def record_benchmark(self, doc: dict[str, Any]) -> bool:
        """Upsert a benchmark comparison by ``benchmark_id``; unknown keys go to ``details``."""
        known = {"benchmark_id", "workload", "modes", "figures", "created_at"}
        body = BenchmarkResult(
            benchmark_id=str(doc["benchmark_id"]),
            workload=str(doc.get("workload") or "unknown"),
            modes=[str(m) for m in doc.get("modes") or []],
            figures=dict(doc.get("figures") or {}),
            details={k: v for k, v in doc.items() if k not in known},
            created_at=_parse_time(doc["created_at"]) if doc.get("created_at") else utcnow(),
        ).model_dump(exclude=_DOC_EXCLUDE)
        return await self._guarded(
            lambda: BenchmarkResult.get_pymongo_collection().replace_one(
                {"benchmark_id": body["benchmark_id"]}, body, upsert=True
            )
        )

    async def _guarded(self, write: Callable[[], Awaitable[Any]]) -> bool:
        try:
            await self._ensure_connected()
            await write()
        except PyMongoError as error:
            self._mark_down(error)
            return False
        self._mark_up()
        return True

    async def _upsert_peers(self, peers: list[dict[str, Any]]) -> None:
        requests = []
        for view in peers:
            body = peer_document(view)
            guard = {"peer_id": body["peer_id"], "updated_at": {"$lte": body["updated_at"]}}
            requests.append(ReplaceOne(guard, body, upsert=True))
        if not requests:
            return
        try:
            await PeerCapability.get_pymongo_collection().bulk_write(requests, ordered=False)
        except BulkWriteError as error:
            # A duplicate key is a stored view newer than this one: it stays.
            if any(e.get("code") != DUPLICATE_KEY for e in error.details.get("writeErrors", [])):
                raise

    # --- reads -----------------------------------------------------------------------------
    async def latest_topology(self) -> dict[str, Any] | None:
        await self._ensure_connected()
        doc = await TopologySnapshot.find_all().sort("-taken_at").limit(1).to_list()
        return _public(doc[0]) if doc else None

    async def get_provenance(self, job_id: str) -> dict[str, Any] | None:
        await self._ensure_connected()
        doc = await ProvenanceBundle.find_one(ProvenanceBundle.job_id == job_id)
        return None if doc is None else _public(doc)

    async def list_benchmarks(self, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        await self._ensure_connected()
        total = await BenchmarkResult.find_all().count()
        docs = await (
            BenchmarkResult.find_all().sort("-created_at").skip(offset).limit(limit).to_list()
        )
        return [_public(d) for d in docs], total

    async def list_peers(self) -> list[dict[str, Any]]:
        await self._ensure_connected()
        return [_public(d) for d in await PeerCapability.find_all().sort("peer_id").to_list()]

    # --- loop ------------------------------------------------------------------------------
    async def run(self, interval_s: float = 1.0) -> None:
        """Catch up every ``interval_s`` until ``close()`` or cancellation; never raises for
        an unreachable MongoDB or a transient database error."""
        while not self._closing.is_set():
            try:
                await self.catch_up()
            except SQLAlchemyError as error:
                log.warning("projector.database_error", error=_first_line(error))
            except ValueError as error:  # a row that does not fit a document: keep the loop
                log.error("projector.bad_row", error=_first_line(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=interval_s)


#: An event as the projector reads it: the payload of status events only (see _read_events).
_EVENT_COLUMNS = (
    ExecutionEvent.seq,
    ExecutionEvent.job_id,
    ExecutionEvent.event_type,
    ExecutionEvent.fragment_id,
    ExecutionEvent.node_id,
    ExecutionEvent.attempt,
    type_coerce(
        case((ExecutionEvent.event_type == "status", ExecutionEvent.payload)),
        ExecutionEvent.payload.type,
    ).label("payload"),
    ExecutionEvent.at,
)


def database_name_from_url(mongo_url: str, default: str = DEFAULT_DATABASE) -> str:
    """The database named in a ``mongodb://host/NAME`` URL, else ``default``."""
    return str(uri_parser.parse_uri(mongo_url).get("database") or default)


async def rebuild_projections(database_url: str, mongo_url: str) -> int:
    """Drop and replay every event-fed projection (``qmesh projections rebuild``).

    The MongoDB database is the one named in ``mongo_url`` (``mongodb://…/NAME``), else
    ``qmesh``. Returns the number of events replayed.
    """
    db = Database(database_url)
    projector = Projector(
        db=db, mongo_url=mongo_url, database_name=database_name_from_url(mongo_url)
    )
    try:
        return await projector.rebuild()
    finally:
        await projector.close()
        await db.dispose()
