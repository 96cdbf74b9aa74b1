"""The whole partitions.conf language: flags, keyword members, mgroups, the Default.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _group_columns() -> list[sa.Column[int]]:
    return [
        *(sa.Column(name, sa.Integer(), nullable=True) for name in ("mtu", "rate", "sl")),
        sa.Column("scope_mask", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("q_key", sa.BigInteger(), nullable=True),
        sa.Column("tclass", sa.Integer(), nullable=True),
        sa.Column("flow_label", sa.Integer(), nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("partitions") as batch:
        for column in _group_columns():
            batch.add_column(column)
        batch.add_column(sa.Column("defmember", sa.String(8), nullable=True))
        batch.add_column(
            sa.Column("indx0", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("members") as batch:
        batch.add_column(
            sa.Column("index0", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "keyword_members",
        sa.Column("partition_id", sa.Integer(), nullable=False),
        sa.Column("keyword", sa.String(12), nullable=False),
        sa.Column("membership", sa.String(8), nullable=False),
        sa.Column("index0", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("partition_id", "keyword", name="pk_keyword_members"),
        sa.ForeignKeyConstraint(
            ["partition_id"],
            ["partitions.id"],
            name="fk_keyword_members_partition_id_partitions",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "membership IN ('full', 'limited', 'both')", name="ck_keyword_members_membership"
        ),
    )
    op.create_table(
        "mgroups",
        sa.Column("partition_id", sa.Integer(), nullable=False),
        sa.Column("mgid", sa.String(39), nullable=False),
        *_group_columns(),
        sa.PrimaryKeyConstraint("partition_id", "mgid", name="pk_mgroups"),
        # A multicast group belongs to one partition in the whole subnet.
        sa.UniqueConstraint("mgid", name="uq_mgroups_mgid"),
        sa.ForeignKeyConstraint(
            ["partition_id"],
            ["partitions.id"],
            name="fk_mgroups_partition_id_partitions",
            ondelete="CASCADE",
        ),
    )
    # The Default partition is a managed singleton: OpenSM's own default when a
    # partitions.conf exists (every port limited, the SM's port full), IPoIB on.
    partitions = sa.table(
        "partitions",
        sa.column("id", sa.Integer()),
        sa.column("pkey", sa.Integer()),
        sa.column("name", sa.String()),
        sa.column("ipoib", sa.Boolean()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    conn = op.get_bind()
    existing = conn.execute(sa.select(partitions.c.id).where(partitions.c.pkey == 0x7FFF))
    if existing.first() is None:
        conn.execute(
            partitions.insert().values(
                pkey=0x7FFF, name="Default", ipoib=True, created_at=now, updated_at=now
            )
        )
    default_id = conn.execute(
        sa.select(partitions.c.id).where(partitions.c.pkey == 0x7FFF)
    ).scalar_one()
    keywords = sa.table(
        "keyword_members",
        sa.column("partition_id", sa.Integer()),
        sa.column("keyword", sa.String()),
        sa.column("membership", sa.String()),
        sa.column("index0", sa.Boolean()),
    )
    conn.execute(
        keywords.insert(),
        [
            {
                "partition_id": default_id,
                "keyword": "ALL",
                "membership": "limited",
                "index0": False,
            },
            {"partition_id": default_id, "keyword": "SELF", "membership": "full", "index0": False},
        ],
    )


def downgrade() -> None:
    op.execute("DELETE FROM partitions WHERE pkey = 32767")
    op.drop_table("mgroups")
    op.drop_table("keyword_members")
    with op.batch_alter_table("members") as batch:
        batch.drop_column("index0")
    with op.batch_alter_table("partitions") as batch:
        for name in (
            "generation",
            "indx0",
            "defmember",
            "flow_label",
            "tclass",
            "q_key",
            "scope_mask",
        ):
            batch.drop_column(name)
        for name in ("sl", "rate", "mtu"):
            batch.drop_column(name)
