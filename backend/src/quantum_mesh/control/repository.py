"""Data-access functions over the Postgres/SQLite tables. Callers own the transaction.

Reads are async (the API loop's sessions); writes are plain functions over a synchronous
session, because they run on the group-commit writer's thread (``Database.write``). A test
or a tool may call a write inside an async transaction with ``session.run_sync``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from sqlalchemy import (
    ColumnElement,
    Result,
    Select,
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    null,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, defer

from quantum_mesh.control.states import TERMINAL_JOB_STATES, JobStatus, may_move
from quantum_mesh.errors import Conflict, NotFound, QuotaExceeded
from quantum_mesh.store.prepared import Prepared
from quantum_mesh.store.tables import (
    ExecutionEvent,
    ExecutionPlan,
    FragmentExecution,
    Job,
    JobArtifact,
    utcnow,
)

if TYPE_CHECKING:
    from quantum_mesh.quantum.analysis import ResultArtifact

#: Retry-After of a refused submit (``quota_exceeded``): a principal's own jobs must finish.
QUOTA_RETRY_AFTER_S = 5


def create_job(
    session: Session,
    *,
    job_id: str,
    kind: str,
    request: dict[str, Any],
    idempotency_key: str | None,
    owner: str | None = None,
    max_unfinished: int | None = None,
    created_at: datetime | None = None,
) -> Job:
    """Insert a QUEUED job owned by ``owner``. With ``max_unfinished``, refuse it
    (``QuotaExceeded``) while the owner already has that many unfinished jobs; the count is
    exact when the insert runs in the group-commit writer, which serialises every write.
    ``created_at``: when it was accepted, where that was before this write (the API front's
    intake journal)."""
    if owner is not None and max_unfinished:
        active = count_unfinished_jobs(session, owner=owner)
        if active >= max_unfinished:
            raise QuotaExceeded(
                f"{owner} has {active} unfinished jobs (quota {max_unfinished}); retry once "
                "one has finished",
                retry_after_s=QUOTA_RETRY_AFTER_S,
                details={
                    "quota": "active_jobs",
                    "principal": owner,
                    "active": active,
                    "limit": max_unfinished,
                },
            )
    now = utcnow()
    row = {
        "job_id": job_id,
        "kind": kind,
        "status": JobStatus.QUEUED.value,
        "request": request,
        "plan_id": None,
        "error": None,
        "progress": None,
        "result": None,
        "idempotency_key": idempotency_key,
        "owner": owner,
        "created_at": created_at or now,
        "updated_at": now,
    }
    _INSERT_JOB.execute(session, row)
    append_event(session, job_id=job_id, event_type="status", payload={"status": row["status"]})
    return Job(**row)


def existing_job_ids(session: Session, job_ids: Sequence[str]) -> set[str]:
    """Which of ``job_ids`` have a row already."""
    if not job_ids:
        return set()
    rows = session.execute(select(_JOBS.c.job_id).where(_JOBS.c.job_id.in_(job_ids)))
    return set(rows.scalars())


async def get_job_by_idempotency_key(
    session: AsyncSession, *, key: str, owner: str | None = None
) -> Job | None:
    """The job ``owner`` created with ``key`` (keys are scoped per owner; ``None`` finds
    only rows without owner, from before principals)."""
    owned = Job.owner.is_(None) if owner is None else Job.owner == owner
    result = await session.execute(select(Job).where(Job.idempotency_key == key, owned))
    return result.scalar_one_or_none()


def count_unfinished_jobs(session: Session, *, owner: str) -> int:
    count = session.execute(
        select(func.count())
        .select_from(Job)
        .where(Job.owner == owner, Job.status.not_in([s.value for s in TERMINAL_JOB_STATES]))
    )
    return int(count.scalar_one())


async def get_job(session: AsyncSession, *, job_id: str) -> Job:
    found = (await session.execute(select(Job).where(Job.job_id == job_id))).scalar_one_or_none()
    return _found(found, job_id)


def lock_job(session: Session, *, job_id: str) -> Job:
    """The job, locked for this write (Postgres row lock; SQLite's writer is alone anyway).

    Read with one Core statement into a detached row: the hot path's writes go past the
    ORM's identity map and unit of work (measured: lock and transition were a third of the
    group-commit writer's time under load). Change it only through this module's writes."""
    row = _LOCK_JOB.first(session, {"job_id": job_id})
    return _found(None if row is None else Job(**row), job_id)


_JOBS = cast(Table, Job.__table__)
_INSERT_JOB = Prepared(insert(_JOBS))
_LOCK_JOB = Prepared(select(_JOBS).where(_JOBS.c.job_id == bindparam("job_id")).with_for_update())
_UPDATE_JOB = Prepared(update(_JOBS).where(_JOBS.c.job_id == bindparam("b_job_id")))


def _update_job(session: Session, job_id: str, values: dict[str, Any]) -> None:
    _UPDATE_JOB.execute(session, {**values, "b_job_id": job_id})


def set_progress(session: Session, *, job: Job, progress: dict[str, Any]) -> None:
    """Store a job's progress (same status)."""
    job.progress = progress
    _update_job(session, job.job_id, {"progress": progress})


def _found(job: Job | None, job_id: str) -> Job:
    if job is None:
        raise NotFound(f"Job {job_id} does not exist", details={"job_id": job_id})
    return job


async def list_jobs(
    session: AsyncSession,
    *,
    kinds: Sequence[str] | None,
    limit: int,
    offset: int,
    owner: str | None = None,
    statuses: Sequence[str] | None = None,
) -> tuple[list[Job], int]:
    """A page of jobs, newest first; only ``owner``'s when given (``None``: everyone's)."""
    rows, total = await _page(
        session,
        select(Job),
        kinds=kinds,
        owner=owner,
        statuses=statuses,
        limit=limit,
        offset=offset,
    )
    return list(rows.scalars()), total


async def _page(
    session: AsyncSession,
    base: Select[Any],
    *,
    kinds: Sequence[str] | None,
    owner: str | None,
    statuses: Sequence[str] | None,
    limit: int,
    offset: int,
) -> tuple[Result[Any], int]:
    """``base`` filtered, newest first, one page of it; and how many rows match in all."""
    count = select(func.count()).select_from(Job)
    filters: list[ColumnElement[bool]] = []
    if kinds:
        filters.append(Job.kind.in_(kinds))
    if owner is not None:
        filters.append(Job.owner == owner)
    if statuses:
        filters.append(Job.status.in_(statuses))
    rows = await session.execute(
        base.where(*filters)
        .order_by(Job.created_at.desc(), Job.job_id.desc())
        .limit(limit)
        .offset(offset)
    )
    total = (await session.execute(count.where(*filters))).scalar_one()
    return rows, int(total)


async def unfinished_jobs(session: AsyncSession) -> list[Job]:
    rows = await session.execute(
        select(Job)
        .where(Job.status.not_in([s.value for s in TERMINAL_JOB_STATES]))
        .order_by(Job.created_at)
    )
    return list(rows.scalars())


def transition_job(
    session: Session,
    *,
    job: Job,
    to: JobStatus,
    error: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
    plan_id: str | None = None,
) -> int:
    """Move ``job`` to ``to`` and append its status event; returns the event's ``seq``."""
    current = JobStatus(job.status)
    if not may_move(current, to):
        raise Conflict(
            f"Job {job.job_id} cannot move from {current} to {to}",
            details={"job_id": job.job_id, "status": current.value},
        )
    values, payload = _move(to, error=error, result=result, progress=progress, plan_id=plan_id)
    _update_job(session, job.job_id, values)
    for name, value in values.items():
        setattr(job, name, value)
    return append_event(session, job_id=job.job_id, event_type="status", payload=payload)


def _move(
    to: JobStatus,
    *,
    error: dict[str, Any] | None,
    result: dict[str, Any] | None,
    progress: dict[str, Any] | None,
    plan_id: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A move's column values (the fields given, ``status`` and ``updated_at``) and its
    status event's payload."""
    values: dict[str, Any] = {"status": to.value, "updated_at": utcnow()}
    fields = {"error": error, "result": result, "progress": progress, "plan_id": plan_id}
    values.update({name: value for name, value in fields.items() if value is not None})
    payload: dict[str, Any] = {"status": to.value}
    if error is not None:
        payload["error"] = error
    return values, payload


def advance_job(
    session: Session,
    *,
    job_id: str,
    expected: JobStatus,
    to: JobStatus,
    error: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
    plan_id: str | None = None,
) -> tuple[Job, int] | None:
    """:func:`transition_job` of a job believed to be ``expected``, in one statement on
    PostgreSQL: the update and its status event in data-modifying CTEs, the row and the
    event's ``seq`` returned (``lock_job``, update, insert: three round trips, each waiting
    on the socket and then for the GIL, made the writer the bound of jobs/s there).

    ``None`` when it cannot: another database, a move ``expected`` does not allow, or the
    row is not in ``expected`` (nothing was changed then). The caller then locks the job and
    moves it as usual, which also raises the right error."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    if not may_move(expected, to):
        return None
    values, payload = _move(to, error=error, result=result, progress=progress, plan_id=plan_id)
    row = _advance_statement(frozenset(values)).first(
        session,
        {
            **{f"v_{name}": value for name, value in values.items()},
            "b_job_id": job_id,
            "b_from": expected.value,
            "e_type": "status",
            "e_payload": payload,
            "e_at": values["updated_at"],
        },
    )
    if row is None:
        return None
    seq = int(row.pop("seq"))
    return Job(**row), seq


_ADVANCE: dict[frozenset[str], Prepared] = {}


def _advance_statement(fields: frozenset[str]) -> Prepared:
    """``advance_job``'s statement for one set of updated columns, built once."""
    prepared = _ADVANCE.get(fields)
    if prepared is None:
        moved = (
            update(_JOBS)
            .where(_JOBS.c.job_id == bindparam("b_job_id"))
            .where(_JOBS.c.status == bindparam("b_from"))
            .values({name: bindparam(f"v_{name}", type_=_JOBS.c[name].type) for name in fields})
            .returning(*_JOBS.c)
            .cte("moved")
        )
        event = (
            insert(_EVENTS)
            .from_select(
                ["job_id", "event_type", "payload", "at"],
                select(
                    moved.c.job_id,
                    bindparam("e_type", type_=_EVENTS.c.event_type.type),
                    bindparam("e_payload", type_=_EVENTS.c.payload.type),
                    bindparam("e_at", type_=_EVENTS.c.at.type),
                ),
            )
            .returning(_EVENTS.c.seq)
            .cte("event")
        )
        prepared = _ADVANCE[fields] = Prepared(select(moved, event.c.seq))
    return prepared


def append_event(
    session: Session,
    *,
    job_id: str,
    event_type: str,
    payload: dict[str, Any] | None = None,
    fragment_id: str | None = None,
    node_id: str | None = None,
    attempt: int | None = None,
) -> int:
    """Append one event; returns its ``seq``. One prepared statement on the session's
    connection (``store/prepared.py``): every state change writes one."""
    row = {
        "job_id": job_id,
        "event_type": event_type,
        "fragment_id": fragment_id,
        "node_id": node_id,
        "attempt": attempt,
        "payload": payload or {},
        "at": utcnow(),
    }
    if session.get_bind().dialect.name == "sqlite":
        # ``seq`` is SQLite's rowid: read it from the cursor instead of a RETURNING row,
        # which costs the statement a second step. Every step gives the GIL up and, under
        # load, waits to get it back; this is the writer's most frequent statement.
        return int(_INSERT_EVENT_ROWID.execute(session, row).lastrowid)
    return int(_INSERT_EVENT.scalar(session, row))


_EVENTS = cast(Table, ExecutionEvent.__table__)
_INSERT_EVENT = Prepared(insert(_EVENTS).returning(_EVENTS.c.seq))
_INSERT_EVENT_ROWID = Prepared(insert(_EVENTS))


async def list_events(session: AsyncSession, *, job_id: str) -> list[ExecutionEvent]:
    rows = await session.execute(
        select(ExecutionEvent).where(ExecutionEvent.job_id == job_id).order_by(ExecutionEvent.seq)
    )
    return list(rows.scalars())


def save_plan(session: Session, *, plan_id: str, job_id: str, plan: dict[str, Any]) -> None:
    _INSERT_PLAN.execute(
        session, {"plan_id": plan_id, "job_id": job_id, "plan": plan, "created_at": utcnow()}
    )


_INSERT_PLAN = Prepared(insert(cast(Table, ExecutionPlan.__table__)))


async def get_plan(session: AsyncSession, *, plan_id: str) -> ExecutionPlan:
    plan = await session.get(ExecutionPlan, plan_id)
    if plan is None:
        raise NotFound(f"Plan {plan_id} does not exist", details={"plan_id": plan_id})
    return plan


async def latest_plan_for_job(session: AsyncSession, *, job_id: str) -> ExecutionPlan | None:
    rows = await session.execute(
        select(ExecutionPlan)
        .where(ExecutionPlan.job_id == job_id)
        .order_by(ExecutionPlan.created_at.desc())
        .limit(1)
    )
    return rows.scalar_one_or_none()


def record_fragment(
    session: Session,
    *,
    job_id: str,
    fragment_id: str,
    node_id: str,
    attempts: int,
    started_at: datetime,
    finished_at: datetime,
    observed_fidelity: float | None,
    output: dict[str, Any],
) -> FragmentExecution:
    """Insert the accepted outcome of a fragment; the primary key refuses a second one."""
    row = {
        "job_id": job_id,
        "fragment_id": fragment_id,
        "node_id": node_id,
        "attempts": attempts,
        "started_at": started_at,
        "finished_at": finished_at,
        "observed_fidelity": observed_fidelity,
        "output": output,
    }
    _INSERT_FRAGMENT.execute(session, row)
    return FragmentExecution(**row)


_INSERT_FRAGMENT = Prepared(insert(cast(Table, FragmentExecution.__table__)))


async def fragment_executions(session: AsyncSession, *, job_id: str) -> list[FragmentExecution]:
    rows = await session.execute(
        select(FragmentExecution)
        .where(FragmentExecution.job_id == job_id)
        .order_by(FragmentExecution.started_at)
    )
    return list(rows.scalars())


async def latest_event(
    session: AsyncSession, *, job_id: str, event_type: str
) -> ExecutionEvent | None:
    rows = await session.execute(
        select(ExecutionEvent)
        .where(ExecutionEvent.job_id == job_id, ExecutionEvent.event_type == event_type)
        .order_by(ExecutionEvent.seq.desc())
        .limit(1)
    )
    return rows.scalar_one_or_none()


# --- result artifacts and light reads of results (docs/data-plane.md) ---------------------------
def save_artifacts(session: Session, *, job_id: str, artifacts: Sequence[ResultArtifact]) -> None:
    """Store a job's result artifacts (replacing any of the same name)."""
    names = [a.name for a in artifacts]
    if not names:
        return
    session.execute(
        delete(JobArtifact).where(JobArtifact.job_id == job_id, JobArtifact.name.in_(names))
    )
    for artifact in artifacts:
        session.add(
            JobArtifact(
                job_id=job_id,
                name=artifact.name,
                dtype=artifact.dtype,
                shape=list(artifact.shape),
                nbytes=len(artifact.data),
                sha256=artifact.sha256,
                data=artifact.data,
                created_at=utcnow(),
            )
        )
    session.flush()


async def get_artifact(session: AsyncSession, *, job_id: str, name: str) -> JobArtifact | None:
    return await session.get(JobArtifact, (job_id, name))


#: The one artifact a result may also hold inline (small circuits keep their statevector).
INLINE_ARTIFACT_PATHS = {"statevector": ("quantum_result", "statevector")}


async def read_artifact(session: AsyncSession, *, job: Job, name: str) -> JobArtifact | None:
    """A job's artifact: the stored row, or (a statevector kept inline in the result, as a
    list of ``[re, im]``) an unsaved row made from the result; None when there is neither."""
    row = await get_artifact(session, job_id=job.job_id, name=name)
    path = INLINE_ARTIFACT_PATHS.get(name)
    if row is not None or path is None or job.status != JobStatus.COMPLETED.value:
        return row
    inline = (await job_result_parts(session, job_id=job.job_id, paths=[path])).get(path)
    if not isinstance(inline, list):
        return None
    pairs = np.asarray(inline, dtype="<f8")
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        return None
    data = pairs.tobytes()  # interleaved (re, im) doubles: little-endian complex128
    return JobArtifact(
        job_id=job.job_id,
        name=name,
        dtype="complex128",
        shape=[int(pairs.shape[0])],
        nbytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        data=data,
    )


async def get_job_head(session: AsyncSession, *, job_id: str) -> Job:
    """The job without its result (reading ``result`` raises): for access checks."""
    stmt = select(Job).where(Job.job_id == job_id).options(defer(Job.result, raiseload=True))
    return _found((await session.execute(stmt)).scalar_one_or_none(), job_id)


async def job_result_parts(
    session: AsyncSession, *, job_id: str, paths: Sequence[tuple[str, ...]]
) -> dict[tuple[str, ...], Any]:
    """Values at ``paths`` of a job's stored result, read in the database (``None`` where
    absent) rather than loading the whole document."""
    row = (
        await session.execute(
            select(*(Job.result[path] for path in paths)).where(Job.job_id == job_id)
        )
    ).one_or_none()
    return {} if row is None else dict(zip(paths, row, strict=True))


@dataclass(frozen=True)
class LightJob:
    """A listed job: the row without its result, and what was read of the result."""

    job: Job
    #: For a job of a kind read by paths: path -> value (``None`` where absent).
    parts: dict[tuple[str, ...], Any]
    #: For any other kind: the whole stored result.
    result: dict[str, Any] | None


async def list_jobs_light(
    session: AsyncSession,
    *,
    kinds: Sequence[str] | None,
    limit: int,
    offset: int,
    owner: str | None = None,
    path_kinds: Sequence[str],
    paths: Sequence[tuple[str, ...]],
) -> tuple[list[LightJob], int]:
    """:func:`list_jobs`, reading only ``paths`` of the result of jobs of ``path_kinds``
    (in the database: a list never loads their heavy fields) and the whole result of others.
    """
    by_path = Job.kind.in_(list(path_kinds))
    columns = [case((by_path, Job.result[path]), else_=null()) for path in paths]
    whole = case((~by_path, Job.result), else_=null())
    base: Select[Any] = select(Job, whole, *columns).options(defer(Job.result, raiseload=True))
    rows, total = await _page(
        session, base, kinds=kinds, owner=owner, statuses=None, limit=limit, offset=offset
    )
    items = []
    for row in rows:
        job, whole_result, *parts = tuple(row)
        items.append(
            LightJob(job=job, result=whole_result, parts=dict(zip(paths, parts, strict=True)))
        )
    return items, int(total)
