"""What a past revision looked like in partitions.conf: its partitions' lines, before and after.

Revisions store deltas, not snapshots; the partitions as a revision left
them are found by undoing, newest first, the later revisions that touched
them.
"""

from __future__ import annotations

import difflib

from sqlalchemy.ext.asyncio import AsyncSession

from pkeyd import history
from pkeyd.domain import Partition, PKey
from pkeyd.opensm.render import render_partition
from pkeyd.store import journal
from pkeyd.store.repository import Repository, to_domain


def _lines(partitions: dict[int, Partition | None]) -> list[str]:
    return [
        line + "\n"
        for pkey in sorted(partitions)
        if (partition := partitions[pkey]) is not None
        for line in render_partition(partition)
    ]


async def rendered_diff(session: AsyncSession, revision: journal.Revision) -> str:
    """The unified diff of the touched partitions' lines in partitions.conf."""
    pkeys = [d.pkey.value for d in revision.changes]
    repo = Repository(session)
    after: dict[int, Partition | None] = {}
    for pkey in pkeys:
        row = await repo.get_partition(PKey(pkey))
        after[pkey] = None if row is None else to_domain(row)
    for _, delta in await journal.deltas_after(session, revision.generation, pkeys):
        after[delta.pkey.value] = history.apply(delta.inverse(), after[delta.pkey.value])
    before = {
        d.pkey.value: history.apply(d.inverse(), after[d.pkey.value]) for d in revision.changes
    }
    generation = revision.generation
    return "".join(
        difflib.unified_diff(
            _lines(before),
            _lines(after),
            f"partitions.conf (generation {generation - 1})",
            f"partitions.conf (generation {generation})",
        )
    )
