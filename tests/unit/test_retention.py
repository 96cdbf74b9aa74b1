"""Revision retention: old revisions are deleted, the rest still list, diff and restore."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from pkeyd import retention
from pkeyd.api.keys import BACKGROUND_TASKS, SERVICE
from pkeyd.config import Settings
from pkeyd.store.models import RevisionChangeRow, RevisionRow
from tests.helpers import Daemon, other_connection, running_daemon
from tests.unit.conftest import CountingReloader

PART = "/api/v1/partitions/0x0a12"
G1 = "0x0002c90300000011"
G2 = "0x0002c90300000012"
LONG_AGO = datetime.now(UTC) - timedelta(days=100)
CUTOFF_DAYS = 90


async def _history(daemon: Daemon) -> None:
    """Revisions 1-5: create, add G2, rename, remove G1, delete."""
    body = {"name": "tenant", "pkey": "0x0a12", "members": [{"guid": G1}]}
    await daemon.json("POST", "/api/v1/partitions", 201, json=body)
    await daemon.json("POST", f"{PART}/members", 200, json={"members": [{"guid": G2}]})
    await daemon.json("PATCH", PART, 200, json={"name": "renamed"})
    await daemon.json("DELETE", f"{PART}/members/{G1}", 204)
    await daemon.json("DELETE", PART, 204)


async def _backdate(db_url: str, generations: Sequence[int]) -> None:
    """Make these revisions look 100 days old, as if written then."""
    async with other_connection(db_url) as sessions, sessions() as session, session.begin():
        await session.execute(
            update(RevisionRow).where(RevisionRow.generation.in_(generations)).values(at=LONG_AGO)
        )


async def _stored(db_url: str) -> tuple[list[int], list[int]]:
    """Generations of the revisions stored, and of their changes."""
    async with other_connection(db_url) as sessions, sessions() as session:
        revisions = await session.scalars(
            select(RevisionRow.generation).order_by(RevisionRow.generation)
        )
        changes = await session.scalars(
            select(RevisionChangeRow.generation).order_by(RevisionChangeRow.generation)
        )
        return list(revisions), list(changes)


def _cutoff() -> datetime:
    return datetime.now(UTC) - timedelta(days=CUTOFF_DAYS)


async def check_pruning_keeps_what_restores(daemon: Daemon) -> None:
    """The scenario, on any database: run by the PostgreSQL tests too."""
    await _history(daemon)
    await _backdate(daemon.settings.db_url, [1, 2, 3])
    assert await daemon.app[SERVICE].prune_revisions(_cutoff()) == 3
    assert await _stored(daemon.settings.db_url) == ([4, 5], [4, 5])
    listed = await daemon.json("GET", "/api/v1/revisions", 200)
    assert [r["id"] for r in listed["revisions"]] == [5, 4]
    await daemon.json("GET", "/api/v1/revisions/2", 404)
    await daemon.json("POST", "/api/v1/revisions/2/restore", 404)
    # The oldest left still diffs and restores: they need only later revisions.
    shown = await daemon.json("GET", "/api/v1/revisions/4", 200)
    removed = [line for line in shown["diff"].splitlines() if line.startswith("-")]
    assert any(G1 in line for line in removed), shown["diff"]
    restored = await daemon.json("POST", "/api/v1/revisions/4/restore", 200)
    assert restored["changed"] is True
    partition = await daemon.json("GET", PART, 200)
    assert (partition["name"], [m["guid"] for m in partition["members"]]) == ("renamed", [G2])
    # Nothing older is left to prune.
    assert await daemon.app[SERVICE].prune_revisions(_cutoff()) == 0


async def test_old_revisions_are_pruned_and_the_rest_still_diff_and_restore(
    daemon: Daemon,
) -> None:
    await check_pruning_keeps_what_restores(daemon)


async def test_pruning_stops_at_the_first_revision_that_is_not_older(daemon: Daemon) -> None:
    """A clock that stepped back must not leave a gap in the history."""
    await _history(daemon)
    await _backdate(daemon.settings.db_url, [1, 2, 4])
    assert await daemon.app[SERVICE].prune_revisions(_cutoff()) == 2
    assert (await _stored(daemon.settings.db_url))[0] == [3, 4, 5]


async def test_pruning_goes_on_past_one_transaction(daemon: Daemon) -> None:
    await _history(daemon)
    await _backdate(daemon.settings.db_url, [1, 2, 3, 4, 5])
    assert await daemon.app[SERVICE].prune_revisions(_cutoff(), limit=2) == 5
    assert await _stored(daemon.settings.db_url) == ([], [])
    # Later writes are recorded as before, with their own generations.
    body = {"name": "again", "pkey": "0x0a13"}
    await daemon.json("POST", "/api/v1/partitions", 201, json=body)
    listed = await daemon.json("GET", "/api/v1/revisions", 200)
    assert [(r["id"], r["action"]) for r in listed["revisions"]] == [(6, "create")]


async def test_the_daemon_prunes_on_its_own_only_when_a_ttl_is_set(
    settings: Settings, reloader: CountingReloader, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_daemon(settings, reloader) as daemon:
        assert "retention" not in daemon.app[BACKGROUND_TASKS]
    monkeypatch.setattr(retention, "PRUNE_EVERY_S", 0.02)  # every 10 minutes in a daemon
    kept = dataclasses.replace(settings, revision_ttl_s=CUTOFF_DAYS * 86_400.0)
    async with running_daemon(kept, reloader) as daemon:
        await _history(daemon)
        await _backdate(kept.db_url, [1, 2])
        for _ in range(250):
            if (await _stored(kept.db_url))[0] == [3, 4, 5]:
                break
            await asyncio.sleep(0.02)
        assert (await _stored(kept.db_url))[0] == [3, 4, 5]
        assert not daemon.app[BACKGROUND_TASKS]["retention"].done()


def test_a_negative_ttl_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="revision_ttl_s"):
        dataclasses.replace(settings, revision_ttl_s=-1.0)
