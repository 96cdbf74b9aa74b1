"""Filtered, paginated reads of partitions, and the partitions of one port."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from pkeyd.store.models import KeywordMemberRow, MemberRow, PartitionRow
from pkeyd.store.repository import LOAD_ALL


@dataclass(frozen=True, slots=True)
class PartitionFilter:
    name_prefix: str | None = None
    ipoib: bool | None = None
    guid: str | None = None  # canonical text: partitions that list this port
    pkey_min: int | None = None
    pkey_max: int | None = None


async def partition_page(
    session: AsyncSession, flt: PartitionFilter, after: int | None, limit: int
) -> list[PartitionRow]:
    """Up to `limit` partitions matching `flt`, by PKey, past PKey `after`."""
    query = select(PartitionRow).options(*LOAD_ALL).order_by(PartitionRow.pkey).limit(limit)
    if after is not None:
        query = query.where(PartitionRow.pkey > after)
    if flt.name_prefix is not None:
        # autoescape: a name may hold % or _, which must match only themselves.
        query = query.where(PartitionRow.name.startswith(flt.name_prefix, autoescape=True))
    if flt.ipoib is not None:
        query = query.where(PartitionRow.ipoib.is_(flt.ipoib))
    if flt.pkey_min is not None:
        query = query.where(PartitionRow.pkey >= flt.pkey_min)
    if flt.pkey_max is not None:
        query = query.where(PartitionRow.pkey <= flt.pkey_max)
    if flt.guid is not None:
        listing = select(MemberRow.partition_id).where(MemberRow.guid == flt.guid)
        query = query.where(PartitionRow.id.in_(listing))
    return list(await session.scalars(query))


# Keywords that make every port of a CA a member, whatever its GUID.
_CA_KEYWORDS = ("ALL", "ALL_CAS")


async def port_partitions(session: AsyncSession, guid: str) -> list[dict[str, object]]:
    """The partitions a port is in: listed by GUID, or through ALL / ALL_CAS.

    A listed GUID overrides a keyword in OpenSM (pkeyd renders it last), so
    a partition that lists the port shows only that entry.
    """
    listed = await session.execute(
        select(PartitionRow.pkey, PartitionRow.name, MemberRow.membership, MemberRow.index0)
        .join(MemberRow, MemberRow.partition_id == PartitionRow.id)
        .where(MemberRow.guid == guid)
    )
    found: dict[int, dict[str, object]] = {}
    for pkey, name, membership, index0 in listed.all():
        found[pkey] = {"via": "guid", "name": name, "membership": membership, "index0": index0}
    by_keyword = await session.execute(
        select(
            PartitionRow.pkey,
            PartitionRow.name,
            KeywordMemberRow.keyword,
            KeywordMemberRow.membership,
            KeywordMemberRow.index0,
        )
        .join(KeywordMemberRow, KeywordMemberRow.partition_id == PartitionRow.id)
        .where(KeywordMemberRow.keyword.in_(_CA_KEYWORDS))
        .order_by(KeywordMemberRow.keyword)
    )
    for pkey, name, keyword, membership, index0 in by_keyword.all():
        # ALL sorts before ALL_CAS and is rendered first, so ALL_CAS wins.
        if pkey not in found or found[pkey]["via"] != "guid":
            found[pkey] = {"via": keyword, "name": name, "membership": membership,
                           "index0": index0}  # fmt: skip
    return [{"pkey": f"0x{p:04x}", **found[p]} for p in sorted(found)]
