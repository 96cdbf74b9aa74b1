"""A group commit's waits in worker threads: a cancelled caller never leaves a thread behind."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pkeyd.groupcommit import finish_in_thread


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
