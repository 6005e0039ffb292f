"""principals, API-key digests and owners of jobs and reservations

Adds the ``principals`` and ``api_keys`` tables (loaded from the settings at start; only
SHA-256 digests of keys), an ``owner`` column on ``jobs`` and ``reservations`` (NULL on rows
written before: visible to admins only) and scopes idempotency keys per owner: the unique
constraint on ``jobs.idempotency_key`` becomes a unique index on ``(owner, idempotency_key)``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Names for constraints SQLite reflects without one (0001 created the unique constraint on
#: jobs.idempotency_key unnamed), so batch mode can drop it by this name.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _idempotency_unique_name() -> str:
    """The name of 0001's unique constraint on jobs.idempotency_key in this database."""
    for uq in sa.inspect(op.get_bind()).get_unique_constraints("jobs"):
        if uq["column_names"] == ["idempotency_key"] and uq.get("name"):
            return str(uq["name"])
    return "uq_jobs_idempotency_key"  # unnamed (SQLite): named by NAMING in batch mode


def upgrade() -> None:
    op.create_table(
        "principals",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("max_active_jobs", sa.Integer(), nullable=True),
        sa.Column("max_active_reservations", sa.Integer(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column("principal", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["principal"], ["principals.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_sha256"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_principal"), ["principal"], unique=False)

    unique_name = _idempotency_unique_name()
    with op.batch_alter_table("jobs", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
        batch_op.drop_constraint(unique_name, type_="unique")
        batch_op.create_index(batch_op.f("ix_jobs_owner"), ["owner"], unique=False)
        batch_op.create_index(
            "uq_jobs_owner_idempotency_key", ["owner", "idempotency_key"], unique=True
        )

    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_reservations_owner"), ["owner"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reservations_owner"))
        batch_op.drop_column("owner")

    # One key may now be used by several owners; the old global constraint keeps the oldest
    # row's key and clears the others (their replays are lost with the downgrade).
    op.execute(
        sa.text(
            "UPDATE jobs SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM jobs AS older WHERE older.idempotency_key = "
            "jobs.idempotency_key AND (older.created_at < jobs.created_at OR "
            "(older.created_at = jobs.created_at AND older.job_id < jobs.job_id)))"
        )
    )
    with op.batch_alter_table("jobs", schema=None, naming_convention=NAMING) as batch_op:
        batch_op.drop_index("uq_jobs_owner_idempotency_key")
        batch_op.drop_index(batch_op.f("ix_jobs_owner"))
        batch_op.drop_column("owner")
        batch_op.create_unique_constraint("jobs_idempotency_key_key", ["idempotency_key"])

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_principal"))
    op.drop_table("api_keys")
    op.drop_table("principals")
