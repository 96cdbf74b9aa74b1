"""The whole desired state for each reconcile pass, loading only what changed since the last.

A pass needs every partition, consistently as of one generation. Reading
(pkey, generation) of every partition is cheap; building every partition
with its members from ORM rows is not, and during a stream of writes most
partitions have not changed since the previous pass. So each load reads the
list in one read transaction and builds afresh only the partitions whose
generation moved (every change stamps its partition's generation), taking
those from the API's read cache when it holds that very generation. The
list is read under the group commit's gate, so that the cache cannot move
past the database between the two: under a stream of writes the cache then
holds exactly the versions the snapshot needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pkeyd.domain import DesiredState, Partition
from pkeyd.store.models import PartitionRow
from pkeyd.store.repository import LOAD_ALL, Repository, to_domain

_BATCH = 500


# A partition at exactly this generation, if one is at hand (the read cache).
Lookup = Callable[[int, int], Partition | None]


def _nothing(pkey: int, generation: int) -> Partition | None:
    return None


class DesiredStateLoader:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        lookup: Lookup = _nothing,
        gate: asyncio.Lock | None = None,
    ) -> None:
        self._sessions = sessions
        self._lookup = lookup
        self._gate = gate if gate is not None else asyncio.Lock()
        self._last: dict[int, Partition] = {}

    async def load(self) -> DesiredState:
        async with self._sessions() as session, session.begin():
            async with self._gate:
                generation = await Repository(session).generation()
                stored = (
                    await session.execute(
                        select(PartitionRow.pkey, PartitionRow.generation).order_by(
                            PartitionRow.pkey
                        )
                    )
                ).all()
                fresh: dict[int, Partition] = {}
                changed = []
                for p, g in stored:
                    known = self._last.get(p)
                    if known is not None and known.generation == g:
                        continue
                    if (at_hand := self._lookup(p, g)) is not None:
                        fresh[p] = at_hand
                    else:
                        changed.append(p)
            for start in range(0, len(changed), _BATCH):
                rows = await session.scalars(
                    select(PartitionRow)
                    .options(*LOAD_ALL)
                    .where(PartitionRow.pkey.in_(changed[start : start + _BATCH]))
                )
                fresh.update((r.pkey, to_domain(r)) for r in rows)
        partitions = {p: fresh.get(p) or self._last[p] for p, _ in stored}
        self._last = partitions
        return DesiredState(generation, tuple(partitions.values()))
