"""A group commit's waits: in worker threads, where a cancelled caller never leaves a thread
behind; and the wait for SQLite's write lock, skipped on the event loop when the lock is free."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from pkeyd.groupcommit import finish_in_thread
from pkeyd.store.engine import begin_write_now, make_sync_engine


async def test_a_cancelled_caller_waits_for_the_thread_to_finish() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def commit() -> str:
        started.set()
        release.wait(5)
        finished.append("committed")
        return "done"

    caller = asyncio.create_task(finish_in_thread(commit))
    await asyncio.to_thread(started.wait, 5)
    caller.cancel()
    await asyncio.sleep(0.05)
    caller.cancel()  # cancelled again while it waits: still waits
    await asyncio.sleep(0.05)
    assert not caller.done()  # the thread still runs: the session is not free yet
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished == ["committed"]  # it ended before the cancellation went on


async def test_the_result_and_the_error_come_back() -> None:
    assert await finish_in_thread(lambda x: x * 2, 21) == 42

    def fails() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await finish_in_thread(fails)


def _busy_timeout(session: Session) -> int:
    return int(session.execute(text("PRAGMA busy_timeout")).scalar_one())


def test_a_free_write_lock_is_taken_at_once(tmp_path: Path) -> None:
    engine = make_sync_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert engine is not None
    other = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None, timeout=0)
    with Session(engine) as session:
        conn = begin_write_now(session)
        assert conn is not None
        assert conn.in_transaction()
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        # It holds the write lock: another writer cannot begin.
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        assert _busy_timeout(session) == 10_000  # the usual wait, back for later statements
        session.commit()
    other.execute("BEGIN IMMEDIATE")  # free again after the commit
    other.execute("ROLLBACK")
    other.close()
    engine.dispose()


def test_a_held_write_lock_is_not_waited_for_on_the_event_loop(tmp_path: Path) -> None:
    engine = make_sync_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert engine is not None
    engine.connect().close()  # the file exists, in WAL mode, as pkeyd's store always is
    holder = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    session = Session(engine)
    started = time.monotonic()
    assert begin_write_now(session) is None
    # Well under the 10 s busy timeout: it did not wait for the lock.
    assert time.monotonic() - started < 5
    session.close()
    holder.execute("ROLLBACK")
    holder.close()
    # The connection it tried keeps the usual busy timeout, and can write.
    with Session(engine) as again:
        conn = begin_write_now(again)
        assert conn is not None
        assert _busy_timeout(again) == 10_000
        again.rollback()
    engine.dispose()
