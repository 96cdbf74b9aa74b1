"""Partitions, their members and the generation counter.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "partitions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("pkey", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(31), nullable=False),
        sa.Column("ipoib", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_partitions"),
        sa.UniqueConstraint("pkey", name="uq_partitions_pkey"),
        sa.UniqueConstraint("name", name="uq_partitions_name"),
        sa.CheckConstraint("pkey >= 1 AND pkey <= 32767", name="ck_partitions_pkey_range"),
    )
    op.create_table(
        "members",
        sa.Column("partition_id", sa.Integer(), nullable=False),
        sa.Column("guid", sa.String(18), nullable=False),
        sa.Column("membership", sa.String(8), nullable=False),
        sa.PrimaryKeyConstraint("partition_id", "guid", name="pk_members"),
        sa.ForeignKeyConstraint(
            ["partition_id"],
            ["partitions.id"],
            name="fk_members_partition_id_partitions",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "membership IN ('full', 'limited', 'both')", name="ck_members_membership"
        ),
    )
    op.create_index("ix_members_guid", "members", ["guid"])
    state = op.create_table(
        "state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("desired_generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_state"),
    )
    op.bulk_insert(state, [{"id": 1, "desired_generation": 0}])


def downgrade() -> None:
    op.drop_table("state")
    op.drop_index("ix_members_guid", table_name="members")
    op.drop_table("members")
    op.drop_table("partitions")
