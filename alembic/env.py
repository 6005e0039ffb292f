"""Alembic environment: runs the same migrations on PostgreSQL and on the embedded SQLite."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from quantum_mesh.store.tables import Base

config = context.config
target_metadata = Base.metadata

# The `alembic` CLI (operators) follows QMESH_DATABASE_URL like the service does; the service
# itself passes its URL explicitly (run_migrations).
if not config.attributes.get("qmesh_explicit_url") and os.environ.get("QMESH_DATABASE_URL"):
    config.set_main_option("sqlalchemy.url", os.environ["QMESH_DATABASE_URL"].replace("%", "%%"))


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = async_engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_run_async())
        return
    raise RuntimeError("run_migrations must be called from a thread without a running event loop")


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
