"""Revision retention: revisions older than revision_ttl_s are deleted, oldest first.

Every committed change is a revision, kept for the audit trail, the diffs
and restores. Without a bound the table grows for as long as the daemon
runs: 100 member writes a second make 8.6 million revisions a day. With
revision_ttl_s set, the daemon deletes the older ones every PRUNE_EVERY_S,
in transactions of at most BATCH revisions through the group commit, so
that a writer waits for one such transaction at most (about 25 ms on
SQLite). The revisions left are always every one from some generation on,
so each of them can still be diffed and restored. 0 (the default) keeps
them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog

from pkeyd.groupcommit import Op, Tx
from pkeyd.store import journal

log = structlog.get_logger("pkeyd.retention")

PRUNE_EVERY_S = 600.0
# Revisions per transaction. On SQLite here 6,001 revisions took 100 ms in
# batches of 2,000 (about 25 ms a transaction), 230 ms in batches of 500.
BATCH = 2_000

Run = Callable[[Op[int]], Awaitable[int]]


def prune_op(older_than: datetime, limit: int = BATCH) -> Op[int]:
    """One transaction's share: up to `limit` of the oldest revisions made before `older_than`."""

    async def op(tx: Tx) -> int:
        return await journal.prune_revisions(tx.session, older_than, limit)

    return op


async def prune(run: Run, older_than: datetime, limit: int = BATCH) -> int:
    """Delete every revision made before `older_than`, `limit` per transaction; how many."""
    total = 0
    while True:
        pruned = await run(prune_op(older_than, limit))
        total += pruned
        if pruned < limit:
            return total


async def keep_revisions(prune_before: Callable[[datetime], Awaitable[int]], ttl_s: float) -> None:
    """Prune revisions older than `ttl_s` now and every PRUNE_EVERY_S; runs until cancelled."""
    while True:
        older_than = datetime.now(UTC) - timedelta(seconds=ttl_s)
        try:
            pruned = await prune_before(older_than)
        except Exception as exc:  # a database hiccup: the next round tries again
            log.warning("revision_prune_failed", error=repr(exc))
        else:
            if pruned:
                log.info("revisions_pruned", count=pruned, older_than=older_than.isoformat())
        await asyncio.sleep(PRUNE_EVERY_S)
