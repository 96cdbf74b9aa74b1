"""Queries on the desired state. Runs inside a session the caller owns; never commits."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from pkeyd.domain import (
    DesiredState,
    Member,
    Membership,
    Partition,
    PKey,
    PKeyRange,
    PortGuid,
)
from pkeyd.store.models import MemberRow, PartitionRow, StateRow


def to_domain(row: PartitionRow) -> Partition:
    return Partition(
        pkey=PKey(row.pkey),
        name=row.name,
        ipoib=row.ipoib,
        members=tuple(
            Member(PortGuid(int(m.guid, 16)), Membership(m.membership)) for m in row.members
        ),
    )


class Repository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def generation(self) -> int:
        value = await self._session.scalar(
            select(StateRow.desired_generation).where(StateRow.id == 1)
        )
        return int(value or 0)

    async def bump_generation(self) -> int:
        # The UPDATE takes the row lock, so concurrent writers on a shared
        # database serialise here and every commit gets its own generation.
        await self._session.execute(
            update(StateRow)
            .where(StateRow.id == 1)
            .values(desired_generation=StateRow.desired_generation + 1)
        )
        return await self.generation()

    async def list_partitions(self) -> list[PartitionRow]:
        result = await self._session.scalars(
            select(PartitionRow)
            .options(selectinload(PartitionRow.members))
            .order_by(PartitionRow.pkey)
        )
        return list(result)

    async def get_partition(self, pkey: PKey) -> PartitionRow | None:
        return await self._session.scalar(
            select(PartitionRow)
            .options(selectinload(PartitionRow.members))
            .where(PartitionRow.pkey == pkey.value)
        )

    async def name_taken(self, name: str) -> bool:
        found = await self._session.scalar(
            select(func.count()).select_from(PartitionRow).where(PartitionRow.name == name)
        )
        return bool(found)

    async def lowest_free_pkey(self, pkey_range: PKeyRange) -> int | None:
        used = await self._session.scalars(
            select(PartitionRow.pkey)
            .where(PartitionRow.pkey.between(pkey_range.low, pkey_range.high))
            .order_by(PartitionRow.pkey)
        )
        candidate = pkey_range.low
        for pkey in used:
            if pkey != candidate:
                break
            candidate += 1
        return candidate if candidate <= pkey_range.high else None

    async def add_partition(
        self, pkey: PKey, name: str, ipoib: bool, members: Iterable[Member], now: datetime
    ) -> PartitionRow:
        row = PartitionRow(
            pkey=pkey.value,
            name=name,
            ipoib=ipoib,
            created_at=now,
            updated_at=now,
            members=[MemberRow(guid=str(m.guid), membership=m.membership.value) for m in members],
        )
        self._session.add(row)
        await self._session.flush()
        return row

    async def delete_partition(self, row: PartitionRow) -> None:
        await self._session.delete(row)
        await self._session.flush()

    async def upsert_members(
        self, row: PartitionRow, members: Iterable[Member], now: datetime
    ) -> bool:
        """Add new members and change the membership of existing ones.

        Returns whether anything changed, so a no-op request commits nothing.
        """
        existing = {m.guid: m for m in row.members}
        changed = False
        for member in members:
            guid = str(member.guid)
            current = existing.get(guid)
            if current is None:
                new = MemberRow(guid=guid, membership=member.membership.value)
                row.members.append(new)
                existing[guid] = new
                changed = True
            elif current.membership != member.membership.value:
                current.membership = member.membership.value
                changed = True
        if changed:
            row.updated_at = now
            await self._session.flush()
        return changed

    async def remove_member(self, row: PartitionRow, guid: PortGuid, now: datetime) -> bool:
        target = str(guid)
        for member in row.members:
            if member.guid == target:
                row.members.remove(member)
                row.updated_at = now
                await self._session.flush()
                return True
        return False

    async def desired_state(self) -> DesiredState:
        """One consistent snapshot; call inside a single transaction."""
        generation = await self.generation()
        rows = await self.list_partitions()
        return DesiredState(generation, tuple(to_domain(r) for r in rows))

    async def member_counts(self) -> dict[str, int]:
        result = await self._session.execute(
            select(MemberRow.membership, func.count()).group_by(MemberRow.membership)
        )
        return {str(k): int(v) for k, v in result.all()}
