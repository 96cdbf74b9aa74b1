"""Whole-partition rewrites: restoring a revision, and importing a whole desired state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pkeyd import history
from pkeyd.domain import DEFAULT_PKEY, Partition, PKey
from pkeyd.errors import NotFoundError
from pkeyd.groupcommit import Op, Tx
from pkeyd.store import journal
from pkeyd.store.models import PartitionRow
from pkeyd.store.repository import to_domain
from pkeyd.write_modes import record
from pkeyd.writes import WriteOptions


def restore_op(generation: int, opts: WriteOptions) -> Op[int | None]:
    """Make the desired state what it was right after revision `generation`.

    Undoes, newest first, every later revision; answers the generation of
    the restore (a revision itself), or None if nothing differed.
    """

    async def op(tx: Tx) -> int | None:
        if await journal.revision(tx.session, generation) is None:
            raise NotFoundError(f"no revision {generation}", "id")
        later = await journal.deltas_after(tx.session, generation)
        pkeys = sorted({d.pkey.value for _, d in later})
        rows = {p: await tx.repo.get_partition(PKey(p)) for p in pkeys}
        current = {p: to_domain(r) if r is not None else None for p, r in rows.items()}
        target = dict(current)
        for _, delta in later:
            target[delta.pkey.value] = history.apply(delta.inverse(), target[delta.pkey.value])
        deltas = [d for p in pkeys if (d := history.diff(current[p], target[p])) is not None]
        if not deltas:
            return None
        new = await record(tx, opts, "restore", deltas, restored=generation)
        await _write_partitions(tx, rows, target, new)
        for p in pkeys:
            after = target[p]
            tx.updates[p] = None if after is None else replace(after, generation=new)
        return new

    return op


def replace_all_op(partitions: Sequence[Partition], opts: WriteOptions) -> Op[int]:
    """Make these the whole desired state (import); the Default stays unless given."""

    async def op(tx: Tx) -> int:
        stored = await tx.repo.list_partitions()
        rows: dict[int, PartitionRow | None] = {r.pkey: r for r in stored}
        current = {p: to_domain(r) for p, r in rows.items() if r is not None}
        target: dict[int, Partition | None] = {p: None for p in current if p != DEFAULT_PKEY}
        target.update({p.pkey.value: p for p in partitions})
        deltas = [
            d for p in sorted(target) if (d := history.diff(current.get(p), target[p])) is not None
        ]
        generation = await record(tx, opts, "import", deltas)
        await _write_partitions(tx, rows, target, generation)
        for p, after in target.items():
            tx.updates[p] = None if after is None else replace(after, generation=generation)
        return generation

    return op


async def _write_partitions(
    tx: Tx,
    rows: dict[int, PartitionRow | None],
    target: dict[int, Partition | None],
    generation: int,
) -> None:
    """Store whole partitions as given (None: deleted), deletions first so names free up."""
    repo = tx.repo
    for pkey, partition in target.items():
        row = rows.get(pkey)
        if partition is None and row is not None:
            await repo.delete_partition(row)
    for pkey, partition in target.items():
        row = rows.get(pkey)
        if partition is None:
            continue
        if row is None:
            row = await repo.add_partition(partition, tx.now)
        else:
            repo.set_fields(row, partition, tx.now)
            await repo.replace_members(row, partition.members, partition.keywords, tx.now)
            await repo.replace_mgroups(row, partition.mgroups)
        row.generation = generation
    await tx.session.flush()
