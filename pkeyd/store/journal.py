"""Revisions and stored Idempotency-Key answers. Runs in the caller's transaction."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from pkeyd.domain import PKey
from pkeyd.history import PartitionDelta
from pkeyd.store.models import IdempotencyRow, RevisionChangeRow, RevisionRow

_REVISIONS = cast(Table, RevisionRow.__table__)
_CHANGES = cast(Table, RevisionChangeRow.__table__)


@dataclass(frozen=True, slots=True)
class Revision:
    generation: int
    at: datetime
    actor: str
    action: str
    restored: int | None
    changes: tuple[PartitionDelta, ...]


async def add_revision(
    session: AsyncSession,
    *,
    generation: int,
    at: datetime,
    actor: str,
    action: str,
    deltas: Sequence[PartitionDelta],
    restored: int | None = None,
) -> None:
    await session.execute(
        insert(_REVISIONS).values(
            generation=generation, at=at, actor=actor, action=action, restored=restored
        )
    )
    if deltas:
        await session.execute(
            insert(_CHANGES),
            [{"generation": generation, "pkey": d.pkey.value, "delta": d.dumps()} for d in deltas],
        )


@dataclass(frozen=True, slots=True)
class NewRevision:
    generation: int
    actor: str
    action: str
    deltas: tuple[PartitionDelta, ...]


def _revision(row: RevisionRow, changes: Sequence[RevisionChangeRow]) -> Revision:
    return Revision(
        generation=row.generation,
        at=row.at,
        actor=row.actor,
        action=row.action,
        restored=row.restored,
        changes=tuple(PartitionDelta.loads(c.delta) for c in changes),
    )


async def revisions(
    session: AsyncSession, *, before: int | None, pkey: PKey | None, limit: int
) -> list[Revision]:
    """Newest first, older than generation `before`, touching `pkey` if given."""
    query = select(RevisionRow).order_by(RevisionRow.generation.desc()).limit(limit)
    if before is not None:
        query = query.where(RevisionRow.generation < before)
    if pkey is not None:
        touching = select(RevisionChangeRow.generation).where(RevisionChangeRow.pkey == pkey.value)
        query = query.where(RevisionRow.generation.in_(touching))
    rows = list(await session.scalars(query))
    if not rows:
        return []
    changes: dict[int, list[RevisionChangeRow]] = {}
    found = await session.scalars(
        select(RevisionChangeRow)
        .where(RevisionChangeRow.generation.in_([r.generation for r in rows]))
        .order_by(RevisionChangeRow.pkey)
    )
    for change in found:
        changes.setdefault(change.generation, []).append(change)
    return [_revision(r, changes.get(r.generation, [])) for r in rows]


async def revision(session: AsyncSession, generation: int) -> Revision | None:
    row = await session.get(RevisionRow, generation)
    if row is None:
        return None
    found = await session.scalars(
        select(RevisionChangeRow)
        .where(RevisionChangeRow.generation == generation)
        .order_by(RevisionChangeRow.pkey)
    )
    return _revision(row, list(found))


async def deltas_after(
    session: AsyncSession, generation: int, pkeys: Sequence[int] | None = None
) -> list[tuple[int, PartitionDelta]]:
    """Every partition delta of revisions newer than `generation`, newest first."""
    query = (
        select(RevisionChangeRow.generation, RevisionChangeRow.delta)
        .where(RevisionChangeRow.generation > generation)
        .order_by(RevisionChangeRow.generation.desc())
    )
    if pkeys is not None:
        query = query.where(RevisionChangeRow.pkey.in_(pkeys))
    rows = (await session.execute(query)).all()
    return [(g, PartitionDelta.loads(d)) for g, d in rows]


async def prune_revisions(session: AsyncSession, older_than: datetime, limit: int) -> int:
    """Delete up to `limit` of the oldest revisions, those made before `older_than`.

    Oldest first, by generation, stopping at the first revision that is not
    older (the clock may have stepped back): what remains is every revision
    from some generation on, which is all that restoring or diffing any of
    them needs (they undo the later ones). Answers how many were deleted.
    """
    oldest = (
        await session.execute(
            select(RevisionRow.generation, RevisionRow.at)
            .order_by(RevisionRow.generation)
            .limit(limit)
        )
    ).all()
    pruned = 0
    for _, at in oldest:
        if at >= older_than:
            break
        pruned += 1
    if not pruned:
        return 0
    last = oldest[pruned - 1][0]
    await session.execute(delete(RevisionChangeRow).where(RevisionChangeRow.generation <= last))
    await session.execute(delete(RevisionRow).where(RevisionRow.generation <= last))
    return pruned


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    request_hash: str
    status: int
    body: Any
    headers: dict[str, str]
    created_at: datetime


async def find_answer(session: AsyncSession, actor: str, key: str) -> StoredAnswer | None:
    row = await session.get(IdempotencyRow, (actor, key))
    if row is None:
        return None
    response = json.loads(row.response)
    return StoredAnswer(
        row.request_hash, row.status, response["body"], response["headers"], row.created_at
    )


async def forget_answer(session: AsyncSession, actor: str, key: str) -> None:
    await session.execute(
        delete(IdempotencyRow).where(IdempotencyRow.actor == actor, IdempotencyRow.key == key)
    )


async def store_answer(
    session: AsyncSession,
    *,
    actor: str,
    key: str,
    request_hash: str,
    status: int,
    body: Any,
    headers: dict[str, str],
    now: datetime,
) -> None:
    response = json.dumps({"body": body, "headers": headers}, separators=(",", ":"))
    session.add(
        IdempotencyRow(
            actor=actor,
            key=key,
            request_hash=request_hash,
            status=status,
            response=response,
            created_at=now,
        )
    )
    await session.flush()


async def purge_answers(session: AsyncSession, older_than: datetime) -> None:
    await session.execute(delete(IdempotencyRow).where(IdempotencyRow.created_at < older_than))
