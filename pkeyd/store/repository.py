"""Queries on the desired state. Runs inside a session the caller owns; never commits."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from pkeyd.domain import (
    DEFAULT_PKEY,
    KEYWORDS,
    DesiredState,
    KeywordMember,
    Member,
    Membership,
    Partition,
    PKey,
    PKeyRange,
    PortGuid,
)
from pkeyd.groups import GroupSettings, McastGroup
from pkeyd.store.models import (
    KeywordMemberRow,
    McastGroupRow,
    MemberRow,
    PartitionRow,
    StateRow,
)

LOAD_ALL = (
    selectinload(PartitionRow.members),
    selectinload(PartitionRow.keywords),
    selectinload(PartitionRow.mgroups),
)


def _mask(scope: tuple[int, ...]) -> int:
    return sum(1 << s for s in scope)


def _scopes(mask: int) -> tuple[int, ...]:
    return tuple(s for s in range(16) if mask & (1 << s))


def _settings(row: PartitionRow | McastGroupRow) -> GroupSettings:
    return GroupSettings(
        mtu=row.mtu,
        rate=row.rate,
        sl=row.sl,
        scope=_scopes(row.scope_mask),
        q_key=row.q_key,
        tclass=row.tclass,
        flow_label=row.flow_label,
    )


def _apply_settings(row: PartitionRow | McastGroupRow, settings: GroupSettings) -> None:
    row.mtu, row.rate, row.sl = settings.mtu, settings.rate, settings.sl
    row.scope_mask = _mask(settings.scope)
    row.q_key, row.tclass, row.flow_label = settings.q_key, settings.tclass, settings.flow_label


def to_domain(row: PartitionRow) -> Partition:
    keywords = sorted(row.keywords, key=lambda k: KEYWORDS.index(k.keyword))
    return Partition(
        pkey=PKey(row.pkey),
        name=row.name,
        ipoib=row.ipoib,
        members=tuple(
            Member(PortGuid(int(m.guid, 16)), Membership(m.membership), m.index0)
            for m in row.members
        ),
        keywords=tuple(
            KeywordMember(k.keyword, Membership(k.membership), k.index0) for k in keywords
        ),
        settings=_settings(row),
        defmember=Membership(row.defmember) if row.defmember else None,
        indx0=row.indx0,
        mgroups=tuple(McastGroup(g.mgid, _settings(g)) for g in row.mgroups),
        generation=row.generation,
    )


def _mgroup_row(group: McastGroup) -> McastGroupRow:
    row = McastGroupRow(mgid=group.mgid)
    _apply_settings(row, group.settings)
    return row


class Repository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def generation(self) -> int:
        value = await self._session.scalar(
            select(StateRow.desired_generation).where(StateRow.id == 1)
        )
        return int(value or 0)

    async def bump_generation(self, changed: PartitionRow | None = None) -> int:
        """Give this commit its generation and stamp the partition it changed."""
        # The UPDATE takes the row lock, so concurrent writers on a shared
        # database serialise here and every commit gets its own generation.
        await self._session.execute(
            update(StateRow)
            .where(StateRow.id == 1)
            .values(desired_generation=StateRow.desired_generation + 1)
        )
        generation = await self.generation()
        if changed is not None:
            changed.generation = generation
            await self._session.flush()
        return generation

    async def list_partitions(self) -> list[PartitionRow]:
        result = await self._session.scalars(
            select(PartitionRow).options(*LOAD_ALL).order_by(PartitionRow.pkey)
        )
        return list(result)

    async def get_partition(self, pkey: PKey) -> PartitionRow | None:
        return await self._session.scalar(
            select(PartitionRow).options(*LOAD_ALL).where(PartitionRow.pkey == pkey.value)
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

    async def add_partition(self, partition: Partition, now: datetime) -> PartitionRow:
        row = PartitionRow(pkey=partition.pkey.value, created_at=now)
        self.set_fields(row, partition, now)
        row.members = [
            MemberRow(guid=str(m.guid), membership=m.membership.value, index0=m.index0)
            for m in partition.members
        ]
        row.keywords = [
            KeywordMemberRow(keyword=k.keyword, membership=k.membership.value, index0=k.index0)
            for k in partition.keywords
        ]
        row.mgroups = [_mgroup_row(g) for g in partition.mgroups]
        self._session.add(row)
        await self._session.flush()
        return row

    @staticmethod
    def set_fields(row: PartitionRow, partition: Partition, now: datetime) -> None:
        """Everything but the member lists: name, flags, settings."""
        row.name = partition.name
        row.ipoib = partition.ipoib
        _apply_settings(row, partition.settings)
        row.defmember = partition.defmember.value if partition.defmember else None
        row.indx0 = partition.indx0
        row.updated_at = now

    async def replace_mgroups(self, row: PartitionRow, groups: Iterable[McastGroup]) -> None:
        row.mgroups.clear()
        await self._session.flush()
        row.mgroups.extend(_mgroup_row(g) for g in groups)
        await self._session.flush()

    async def delete_partition(self, row: PartitionRow) -> None:
        await self._session.delete(row)
        await self._session.flush()

    async def delete_all_partitions_but_default(self) -> None:
        await self._session.execute(delete(PartitionRow).where(PartitionRow.pkey != DEFAULT_PKEY))
        await self._session.flush()

    async def upsert_members(
        self,
        row: PartitionRow,
        members: Iterable[Member],
        keywords: Iterable[KeywordMember],
        now: datetime,
    ) -> bool:
        """Add new members and change existing ones. Returns whether anything changed."""
        changed = False
        by_guid = {m.guid: m for m in row.members}
        for member in members:
            guid = str(member.guid)
            current = by_guid.get(guid)
            if current is None:
                by_guid[guid] = new = MemberRow(
                    guid=guid, membership=member.membership.value, index0=member.index0
                )
                row.members.append(new)
                changed = True
            elif (current.membership, current.index0) != (member.membership.value, member.index0):
                current.membership, current.index0 = member.membership.value, member.index0
                changed = True
        by_keyword = {k.keyword: k for k in row.keywords}
        for keyword in keywords:
            existing = by_keyword.get(keyword.keyword)
            if existing is None:
                by_keyword[keyword.keyword] = created = KeywordMemberRow(
                    keyword=keyword.keyword,
                    membership=keyword.membership.value,
                    index0=keyword.index0,
                )
                row.keywords.append(created)
                changed = True
            elif (existing.membership, existing.index0) != (
                keyword.membership.value,
                keyword.index0,
            ):
                existing.membership = keyword.membership.value
                existing.index0 = keyword.index0
                changed = True
        if changed:
            row.updated_at = now
            await self._session.flush()
        return changed

    async def replace_members(
        self,
        row: PartitionRow,
        members: Iterable[Member],
        keywords: Iterable[KeywordMember],
        now: datetime,
    ) -> bool:
        """Make these the whole member list. Returns whether anything changed."""
        wanted = {str(m.guid): m for m in members}
        wanted_keywords = {k.keyword: k for k in keywords}
        stale = [m for m in row.members if m.guid not in wanted]
        stale_keywords = [k for k in row.keywords if k.keyword not in wanted_keywords]
        for gone in stale:
            row.members.remove(gone)
        for gone_keyword in stale_keywords:
            row.keywords.remove(gone_keyword)
        changed = bool(stale or stale_keywords)
        if changed:
            await self._session.flush()
        upserted = await self.upsert_members(row, wanted.values(), wanted_keywords.values(), now)
        if changed and not upserted:
            row.updated_at = now
            await self._session.flush()
        return changed or upserted

    async def remove_members(
        self, row: PartitionRow, targets: Iterable[str], now: datetime
    ) -> list[str]:
        """Remove GUID members (canonical text) and keyword members; returns those not found."""
        wanted = set(targets)
        gone = [m for m in row.members if m.guid in wanted]
        gone_keywords = [k for k in row.keywords if k.keyword in wanted]
        for member in gone:
            row.members.remove(member)
        for keyword in gone_keywords:
            row.keywords.remove(keyword)
        found = {m.guid for m in gone} | {k.keyword for k in gone_keywords}
        if found:
            row.updated_at = now
            await self._session.flush()
        return sorted(wanted - found)

    async def remove_member(self, row: PartitionRow, target: str, now: datetime) -> bool:
        """Remove a GUID member (canonical text) or a keyword member."""
        for member in row.members:
            if member.guid == target:
                row.members.remove(member)
                break
        else:
            for keyword in row.keywords:
                if keyword.keyword == target:
                    row.keywords.remove(keyword)
                    break
            else:
                return False
        row.updated_at = now
        await self._session.flush()
        return True

    async def desired_state(self) -> DesiredState:
        """One consistent snapshot; call inside a single transaction."""
        generation = await self.generation()
        rows = await self.list_partitions()
        return DesiredState(generation, tuple(to_domain(r) for r in rows))

    async def explicit_pkeys(self, guids: Iterable[str] | None) -> dict[str, set[int]]:
        """PKeys of the partitions that list each GUID (every listed GUID if None)."""
        query = select(MemberRow.guid, PartitionRow.pkey).join(PartitionRow)
        wanted = None if guids is None else list(guids)
        batches = (
            [None]
            if wanted is None
            else [
                wanted[i : i + 5000]
                for i in range(0, len(wanted), 5000)  # under bind-parameter limits
            ]
        )
        found: dict[str, set[int]] = {}
        for batch in batches:
            q = query if batch is None else query.where(MemberRow.guid.in_(batch))
            for guid, pkey in (await self._session.execute(q)).all():
                found.setdefault(str(guid), set()).add(int(pkey))
        return found

    async def ca_keyword_pkeys(self) -> set[int]:
        """PKeys of the partitions whose keywords cover every CA port (ALL, ALL_CAS)."""
        result = await self._session.scalars(
            select(PartitionRow.pkey)
            .join(KeywordMemberRow)
            .where(KeywordMemberRow.keyword.in_(("ALL", "ALL_CAS")))
            .distinct()
        )
        return set(result)
