"""Member rows by plain SQL statements: the write path of single and bulk member changes.

Loading a partition's ORM graph costs time in proportion to its members; a
member write only needs the rows it names. Runs in the caller's transaction;
never commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pkeyd.domain import PKey
from pkeyd.history import MemberChange, MemberState
from pkeyd.store import lane_sql
from pkeyd.store.lane_sql import Head as Head  # the head of a partition, re-exported
from pkeyd.store.models import KeywordMemberRow, MemberRow, PartitionRow

# Bound parameters per statement stay well under SQLite's and asyncpg's limits.
_BATCH = 500


async def head(session: AsyncSession, pkey: PKey) -> Head | None:
    row = (
        await session.execute(
            select(PartitionRow.id, PartitionRow.generation, PartitionRow.defmember).where(
                PartitionRow.pkey == pkey.value
            )
        )
    ).first()
    return None if row is None else Head(row.id, pkey, row.generation, row.defmember)


async def member_states(
    session: AsyncSession, partition_id: int, guids: Sequence[str] | None
) -> dict[str, MemberState]:
    """The stored state of these GUIDs (None: of every member) in one partition."""
    query = select(MemberRow.guid, MemberRow.membership, MemberRow.index0).where(
        MemberRow.partition_id == partition_id
    )
    if guids is None or len(guids) > _BATCH:
        # Past a few hundred names one scan of the partition beats many IN lists.
        wanted = None if guids is None else set(guids)
        return {
            g: (m, i)
            for g, m, i in (await session.execute(query)).all()
            if wanted is None or g in wanted
        }
    if not guids:
        return {}
    rows = (await session.execute(query.where(MemberRow.guid.in_(guids)))).all()
    return {g: (m, i) for g, m, i in rows}


async def keyword_states(session: AsyncSession, partition_id: int) -> dict[str, MemberState]:
    rows = await session.execute(
        select(KeywordMemberRow.keyword, KeywordMemberRow.membership, KeywordMemberRow.index0)
        .where(KeywordMemberRow.partition_id == partition_id)
    )  # fmt: skip
    return {k: (m, i) for k, m, i in rows.all()}


async def write_changes(
    session: AsyncSession, partition_id: int, changes: Iterable[MemberChange]
) -> None:
    rows = [(partition_id, c) for c in changes]
    await session.run_sync(lambda s: lane_sql.write_many(s.connection(), rows))


async def stamp(session: AsyncSession, partition_id: int, generation: int, now: datetime) -> None:
    """Give the partition the generation of the change just made to it."""
    await session.execute(
        update(PartitionRow)
        .where(PartitionRow.id == partition_id)
        .values(generation=generation, updated_at=now)
    )
