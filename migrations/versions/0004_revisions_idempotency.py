"""Revisions (who changed what, undoable) and stored answers of Idempotency-Keys.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "revisions",
        # The generation the change got: revisions and generations are one sequence.
        sa.Column("generation", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("restored", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("generation", name="pk_revisions"),
    )
    op.create_table(
        "revision_changes",
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("pkey", sa.Integer(), nullable=False),
        sa.Column("delta", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("generation", "pkey", name="pk_revision_changes"),
        sa.ForeignKeyConstraint(
            ["generation"],
            ["revisions.generation"],
            name="fk_revision_changes_generation_revisions",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_revision_changes_pkey", "revision_changes", ["pkey"])
    op.create_table(
        "idempotency_keys",
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("actor", "key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_revision_changes_pkey", table_name="revision_changes")
    op.drop_table("revision_changes")
    op.drop_table("revisions")
