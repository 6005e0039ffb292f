"""Test-suite wiring: a real PostgreSQL (the one on 127.0.0.1:5432, or a throwaway one),
thread limits for numerical libraries, and helpers for live coordinators and nodes."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Numerical libraries must not fight over the 2 cores with the processes under test.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def _can_connect(dsn: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _throwaway_postgres(tmp: Path) -> tuple[str, object]:
    """Start a private PostgreSQL from the installed server binaries (pytest-postgresql)."""
    from pytest_postgresql.executors import PostgreSQLExecutor

    pg_ctl = shutil.which("pg_ctl") or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))), None
    )
    if pg_ctl is None or os.geteuid() == 0:
        pytest.exit(
            "No PostgreSQL listens on 127.0.0.1:5432"
            + (
                " and no server binaries were found"
                if pg_ctl is None
                else " and PostgreSQL refuses to start a throwaway server as root"
            )
            + ". Install and start the server (Debian/Ubuntu: `apt-get install postgresql`; "
            "macOS: `brew install postgresql && brew services start postgresql`) or set "
            "QMESH_TEST_PG_DSN to a reachable database.",
            returncode=3,
        )
    from tests.support.live import free_port

    port = free_port()
    executor = PostgreSQLExecutor(
        executable=pg_ctl,
        host="127.0.0.1",
        port=port,
        datadir=str(tmp / "pgdata"),
        unixsocketdir=str(tmp),
        logfile=str(tmp / "pg.log"),
        startparams="-w",
        dbname="postgres",
        user="postgres",
        password="",
    )
    executor.start()
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", executor


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    dsn = os.environ.get("QMESH_TEST_PG_DSN", DEFAULT_PG)
    executor = None
    if not _can_connect(dsn):
        dsn, executor = _throwaway_postgres(tmp_path_factory.mktemp("pg"))
    yield dsn
    if executor is not None:
        executor.stop()  # type: ignore[attr-defined]


@pytest.fixture
def pg_url(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh, empty database for one test, as an async SQLAlchemy URL."""
    import psycopg

    name = f"qmesh_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_admin_dsn.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'qmesh.db'}"


@pytest.fixture(scope="module")
def module_pg_url(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh database shared by one test module (for a live coordinator)."""
    import psycopg

    name = f"qmesh_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = pg_admin_dsn.rsplit("/", 1)[0]
    yield f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
