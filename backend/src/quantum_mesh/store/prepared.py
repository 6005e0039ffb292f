"""Hot-path statements compiled once and run on the driver's own cursor.

The group-commit writer runs a few statements for every state change of every unit of work.
Through SQLAlchemy's execution path a job transition (lock, update, event: three
statements) costs ~250 µs of Python; the same statements on the driver cost ~30 µs
(``docs/operations.md``, "Where a Bell job's time goes"). Under load that difference is the
coordinator's GIL, so the writer's hottest statements go through :class:`Prepared`:

- SQLAlchemy still writes the SQL: each statement is compiled once per dialect and set of
  parameter names, with the dialect's paramstyle, casts and ``RETURNING``;
- SQLAlchemy's own type processing still converts the values (JSON, UTC datetimes), taken
  from each column type's dialect implementation, as its execution path would;
- the statement then runs on the DBAPI cursor of the session's connection, inside the
  session's transaction, so it commits or rolls back with the rest of the write.

Only plain statements belong here: no expanding ``IN`` parameters, no ORM entities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ClauseElement
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler

_Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Plan:
    sql: str
    #: Parameter names in the order of a positional paramstyle (``None``: named).
    order: tuple[str, ...] | None
    binds: dict[str, _Processor]
    #: Result columns' types, for turning a returned row into values.
    result_types: tuple[Any, ...]


class Prepared:
    """One statement, compiled per dialect and parameter names on first use."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, frozenset[str]], _Plan] = {}
        self._results: dict[tuple[str, tuple[Any, ...]], tuple[_Processor, ...]] = {}

    def execute(self, session: Session, params: Mapping[str, Any]) -> Any:
        """Run with one set of parameters; returns the DBAPI cursor."""
        return self._run(session, params)[1]

    def execute_many(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per row (every row with the same parameter names)."""
        if not rows:
            return
        dialect = session.get_bind().dialect
        plan = self._plan(dialect, rows[0].keys())
        bound = [_bound(plan, row) for row in rows]
        with _wrapped(dialect, plan.sql, bound):
            _cursor(session).executemany(plan.sql, bound)

    def first(self, session: Session, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run and return the first row as column name -> value (``None``: no row)."""
        plan, cursor = self._run(session, params)
        dialect = session.get_bind().dialect
        row = cursor.fetchone()
        if row is None:
            return None
        names = [d[0] for d in cursor.description]
        processors = self._result_processors(dialect, plan, cursor.description)
        return {
            name: value if proc is None else proc(value)
            for name, value, proc in zip(names, row, processors, strict=True)
        }

    def scalar(self, session: Session, params: Mapping[str, Any]) -> Any:
        row = self.first(session, params)
        return None if row is None else next(iter(row.values()))

    def _run(self, session: Session, params: Mapping[str, Any]) -> tuple[_Plan, Any]:
        dialect = session.get_bind().dialect
        plan = self._plan(dialect, params.keys())
        bound = _bound(plan, params)
        cursor = _cursor(session)
        with _wrapped(dialect, plan.sql, bound):
            cursor.execute(plan.sql, bound)
        return plan, cursor

    # --- compiling -------------------------------------------------------------------------
    def _plan(self, dialect: Dialect, keys: Any) -> _Plan:
        names = frozenset(keys)
        key = (dialect.name, names)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._compile(dialect, names)
        return plan

    def _compile(self, dialect: Dialect, names: frozenset[str]) -> _Plan:
        compiled = cast(
            SQLCompiler, self.statement.compile(dialect=dialect, column_keys=sorted(names))
        )
        if compiled.escaped_bind_names:  # pragma: no cover - names here are plain words
            raise ValueError(f"unsupported bind names in {self.statement}")
        binds: dict[str, _Processor] = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect)
            for name, bind in compiled.binds.items()
        }
        positions = getattr(compiled, "positiontup", None)
        # What a row holds: a select's columns, or what an insert/update returns.
        columns = list(getattr(self.statement, "exported_columns", ()))
        return _Plan(
            sql=compiled.string,
            order=tuple(positions) if compiled.positional and positions is not None else None,
            binds=binds,
            result_types=tuple(getattr(c, "type", None) for c in columns),
        )

    def _result_processors(
        self, dialect: Dialect, plan: _Plan, description: Sequence[Any]
    ) -> tuple[_Processor, ...]:
        codes = tuple(d[1] for d in description)
        key = (dialect.name, codes)
        found = self._results.get(key)
        if found is None:
            found = self._results[key] = tuple(
                None
                if type_ is None
                else type_.dialect_impl(dialect).result_processor(dialect, code)
                for type_, code in zip(plan.result_types, codes, strict=True)
            )
        return found


@contextmanager
def _wrapped(dialect: Dialect, sql: str, params: Any) -> Iterator[None]:
    """Driver errors as SQLAlchemy's (``IntegrityError`` for a duplicate key), as callers
    of SQLAlchemy expect them."""
    base = dialect.loaded_dbapi.Error
    try:
        yield
    except base as error:
        raise DBAPIError.instance(sql, params, error, base, dialect=dialect) from error


def _cursor(session: Session) -> Any:
    # The session's own connection and transaction: the statement commits with the write.
    return session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def _bound(plan: _Plan, params: Mapping[str, Any]) -> Any:
    binds = plan.binds

    def value(name: str) -> Any:
        proc = binds.get(name)
        raw = params.get(name)
        return raw if proc is None or raw is None else proc(raw)

    if plan.order is not None:
        return tuple(value(name) for name in plan.order)
    return {name: value(name) for name in binds}
