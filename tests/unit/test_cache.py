"""The read cache: own writes seen at once, another process's after one refresh."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from sqlalchemy import create_engine

from pkeyd.api.keys import SERVICE
from pkeyd.cache import PartitionCache
from pkeyd.domain import Partition, PKey, PortGuid
from pkeyd.drafts import MemberSpec
from pkeyd.service import PartitionService
from pkeyd.store.engine import stored_generation_now
from tests.helpers import Daemon, other_connection, sqlalchemy_statements

PART = "/api/v1/partitions/0x0a12"
G1 = PortGuid(0x0002C90300000011)


async def test_another_process_write_is_seen_after_a_refresh(daemon: Daemon) -> None:
    await daemon.json("POST", "/api/v1/partitions", 201, json={"name": "t", "pkey": "0x0a12"})
    assert (await daemon.json("GET", PART, 200))["members"] == []
    async with other_connection(daemon.settings.db_url) as sessions:
        other = PartitionService(sessions, daemon.settings, lambda: None)
        await other.add_members(PKey(0x0A12), [MemberSpec(G1, None, False)], [])
    service = daemon.app[SERVICE]
    assert await service.refresh_cache() == 1  # the changed partition is dropped
    got = await daemon.json("GET", PART, 200)
    assert [m["guid"] for m in got["members"]] == [str(G1)]
    assert await service.refresh_cache() == 0  # nothing new since


async def test_a_partition_deleted_elsewhere_disappears(daemon: Daemon) -> None:
    await daemon.json("POST", "/api/v1/partitions", 201, json={"name": "t", "pkey": "0x0a12"})
    await daemon.json("GET", PART, 200)
    async with other_connection(daemon.settings.db_url) as sessions:
        other = PartitionService(sessions, daemon.settings, lambda: None)
        await other.delete_partition(PKey(0x0A12))
    await daemon.app[SERVICE].refresh_cache()
    await daemon.json("GET", PART, 404)


def _partition(generation: int) -> Partition:
    return Partition(PKey(0x0A12), "t", False, generation=generation)


def test_resync_keeps_own_commits_newer_than_the_scan() -> None:
    cache = PartitionCache()
    cache.committed(0, 5, {0x0A12: _partition(5), 0x0B00: None})
    cache.committed(5, 6, {0x0A13: Partition(PKey(0x0A13), "u", False, generation=6)})
    # A scan made at generation 5 saw 0x0a12 at 5 and no 0x0a13 yet.
    assert cache.resync(5, [(0x0A12, 5)]) == 0
    assert cache.get(0x0A13) is not None
    # A later scan shows 0x0a12 changed elsewhere and 0x0a13 gone.
    assert cache.resync(8, [(0x0A12, 7)]) == 2
    assert cache.get(0x0A12) is None
    assert cache.synced_generation == 8


def test_a_load_that_raced_a_change_is_not_kept() -> None:
    cache = PartitionCache()
    epoch = cache.epoch
    cache.committed(0, 1, {0x0A12: _partition(1)})
    cache.loaded(_partition(0), epoch)  # read before the commit: older
    entry = cache.get(0x0A12)
    assert entry is not None
    assert entry.generation == 1


def test_the_stored_generation_is_read_without_waiting_for_a_lock(tmp_path: Path) -> None:
    """The loop's quick poll answers None at once when another connection locks the file."""
    path = tmp_path / "locked.db"
    with contextlib.closing(sqlite3.connect(path)) as setup:
        setup.execute("CREATE TABLE state (id INTEGER PRIMARY KEY, desired_generation INTEGER)")
        setup.execute("INSERT INTO state VALUES (1, 7)")
        setup.commit()
    # A rollback journal, not WAL: there a writer's EXCLUSIVE lock keeps every reader out.
    engine = create_engine(f"sqlite:///{path}")
    try:
        assert stored_generation_now(engine) == 7
        locker = sqlite3.connect(path, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            locker.execute("UPDATE state SET desired_generation = 8")
            assert stored_generation_now(engine) is None
            locker.execute("COMMIT")
        finally:
            locker.close()
        assert stored_generation_now(engine) == 8
        # The pooled connection waits for locks again for everything else.
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    finally:
        engine.dispose()


async def test_the_poll_on_sqlite_reads_the_generation_on_the_loop(daemon: Daemon) -> None:
    """Nothing new: the poll ends at the quick read, with no statement through SQLAlchemy."""
    service = daemon.app[SERVICE]
    await daemon.json("POST", "/api/v1/partitions", 201, json={"name": "t", "pkey": "0x0a12"})
    assert await service.refresh_cache() == 0  # synced with the stored generation
    with sqlalchemy_statements() as executed:
        assert await service.refresh_cache() == 0
    assert executed == []
