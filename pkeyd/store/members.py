"""Member rows by plain SQL statements: the write path of single and bulk member changes.

Loading a partition's ORM graph costs time in proportion to its members; a
member write only needs the rows it names. Runs in the caller's transaction;
never commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pkeyd.domain import PKey
from pkeyd.history import MemberChange, MemberState
from pkeyd.store.models import KeywordMemberRow, MemberRow, PartitionRow

# Bound parameters per statement stay well under SQLite's and asyncpg's limits.
_BATCH = 500
_INSERT_BATCH = 10_000
_MEMBERS = cast(Table, MemberRow.__table__)
_KEYWORDS = cast(Table, KeywordMemberRow.__table__)
_PARTITIONS = cast(Table, PartitionRow.__table__)


@dataclass(frozen=True, slots=True)
class Head:
    """A partition's identity and the columns a member write needs."""

    id: int
    pkey: PKey
    generation: int
    defmember: str | None


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


async def heads(session: AsyncSession, pkeys: Sequence[int]) -> dict[int, Head]:
    rows = await session.execute(
        select(
            PartitionRow.id, PartitionRow.pkey, PartitionRow.generation, PartitionRow.defmember
        ).where(PartitionRow.pkey.in_(pkeys))
    )
    return {r.pkey: Head(r.id, PKey(r.pkey), r.generation, r.defmember) for r in rows.all()}


async def states_of(
    session: AsyncSession, named: Mapping[int, set[str]]
) -> dict[int, dict[str, MemberState]]:
    """The stored state of the GUIDs named per partition id (absent: not a member)."""
    found: dict[int, dict[str, MemberState]] = {pid: {} for pid in named}
    guids = sorted(set().union(*named.values())) if named else []
    query = select(MemberRow.partition_id, MemberRow.guid, MemberRow.membership, MemberRow.index0)
    if len(guids) > _BATCH:
        # Many names: one scan of each partition beats many IN lists.
        for pid, wanted in named.items():
            rows = await session.execute(query.where(MemberRow.partition_id == pid))
            found[pid] = {g: (m, i) for _, g, m, i in rows.all() if g in wanted}
        return found
    if guids:
        rows = await session.execute(
            query.where(MemberRow.partition_id.in_(list(named)), MemberRow.guid.in_(guids))
        )
        for pid, g, m, i in rows.all():
            if g in named[pid]:
                found[pid][g] = (m, i)
    return found


async def write_changes(
    session: AsyncSession, partition_id: int, changes: Iterable[MemberChange]
) -> None:
    await write_many(session, [(partition_id, c) for c in changes])


async def write_many(session: AsyncSession, changes: Iterable[tuple[int, MemberChange]]) -> None:
    """Make member changes of any partitions: deletes, inserts, updates, each one statement."""
    tables = {False: (_MEMBERS, "guid"), True: (_KEYWORDS, "keyword")}
    added: dict[bool, list[dict[str, object]]] = {False: [], True: []}
    altered: dict[bool, list[dict[str, object]]] = {False: [], True: []}
    gone: dict[bool, list[dict[str, object]]] = {False: [], True: []}
    for pid, change in changes:
        keyword = change.is_keyword
        if change.after is None:
            gone[keyword].append({"pid": pid, "target": change.target})
        elif change.before is None:
            added[keyword].append(
                {
                    "partition_id": pid,
                    tables[keyword][1]: change.target,
                    "membership": change.after[0],
                    "index0": change.after[1],
                }
            )
        else:
            altered[keyword].append(
                {"pid": pid, "target": change.target, "to_membership": change.after[0],
                 "to_index0": change.after[1]}
            )  # fmt: skip
    for keyword, (table, key) in tables.items():
        match = (table.c.partition_id == bindparam("pid"), table.c[key] == bindparam("target"))
        if gone[keyword]:
            await session.execute(delete(table).where(*match), gone[keyword])
        rows = added[keyword]
        for start in range(0, len(rows), _INSERT_BATCH):
            await session.execute(insert(table), rows[start : start + _INSERT_BATCH])
        if altered[keyword]:
            await session.execute(
                update(table)
                .where(*match)
                .values(membership=bindparam("to_membership"), index0=bindparam("to_index0")),
                altered[keyword],
            )


async def stamp_many(session: AsyncSession, generations: Mapping[int, int], now: datetime) -> None:
    """Give each partition (by id) the generation of the last change made to it."""
    if generations:
        await session.execute(
            update(_PARTITIONS)
            .where(_PARTITIONS.c.id == bindparam("pid"))
            .values(generation=bindparam("to_generation"), updated_at=bindparam("to_updated")),
            [{"pid": pid, "to_generation": g, "to_updated": now} for pid, g in generations.items()],
        )


async def stamp(session: AsyncSession, partition_id: int, generation: int, now: datetime) -> None:
    """Give the partition the generation of the change just made to it."""
    await session.execute(
        update(PartitionRow)
        .where(PartitionRow.id == partition_id)
        .values(generation=generation, updated_at=now)
    )
