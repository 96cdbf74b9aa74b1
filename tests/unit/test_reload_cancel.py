"""A reload command cancelled as it ends: the cancellation is not lost.

SIGTERM cancels the reconcile loop wherever it is. When that lands in the
very loop iteration in which the reload command's output arrives, Python
3.11's asyncio.wait_for returns the output instead of raising; the pass
then ends normally, the loop goes back to waiting for work, and the app's
cleanup, which awaits the cancelled loop, waits for ever.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from pkeyd.api.keys import BACKGROUND_TASKS
from pkeyd.config import Settings
from pkeyd.errors import ReloadError
from pkeyd.opensm.reload import CommandReloader
from tests.helpers import running_daemon


class _CancelAsOutputArrives:
    """Wraps create_subprocess_exec: the caller is cancelled as the command's output arrives."""

    def __init__(self) -> None:
        self.victim: asyncio.Task[Any] | None = None
        self.spawned: list[asyncio.subprocess.Process] = []
        self._spawn = asyncio.create_subprocess_exec

    async def __call__(self, *argv: str, **kw: Any) -> asyncio.subprocess.Process:
        proc = await self._spawn(*argv, **kw)
        self.spawned.append(proc)
        communicate = proc.communicate

        async def communicate_then_cancel(input: bytes | None = None) -> tuple[bytes, bytes]:
            out = await communicate(input)
            if self.victim is not None:
                self.victim.cancel()  # SIGTERM's cleanup, in the same instant
            return out

        proc.communicate = communicate_then_cancel  # type: ignore[method-assign,assignment]
        return proc


@pytest.fixture
def cancel_as_output_arrives(monkeypatch: pytest.MonkeyPatch) -> _CancelAsOutputArrives:
    spawn = _CancelAsOutputArrives()
    monkeypatch.setattr("pkeyd.opensm.reload.asyncio.create_subprocess_exec", spawn)
    return spawn


async def test_reload_cancelled_as_the_command_ends_is_cancelled(
    cancel_as_output_arrives: _CancelAsOutputArrives,
) -> None:
    reloader = CommandReloader((sys.executable, "-c", "print('reloaded')"), timeout_s=30.0)
    task = asyncio.create_task(reloader.reload())
    cancel_as_output_arrives.victim = task
    done, _ = await asyncio.wait({task}, timeout=10)
    assert task in done
    assert task.cancelled()
    assert [p.returncode for p in cancel_as_output_arrives.spawned] == [0]


async def test_reconcile_loop_cancelled_as_the_reload_command_ends_stops(
    settings: Settings, cancel_as_output_arrives: _CancelAsOutputArrives
) -> None:
    reloader = CommandReloader((sys.executable, "-c", "print('reloaded')"), timeout_s=30.0)
    async with running_daemon(settings, reloader) as d:
        await d.wait_applied()
        task = d.app[BACKGROUND_TASKS]["reconcile"]
        cancel_as_output_arrives.victim = task
        body = {"name": "a", "pkey": "0x10"}
        await d.json("POST", "/api/v1/partitions", 201, json=body)  # wakes a pass
        try:
            done, _ = await asyncio.wait({task}, timeout=10)
            assert task in done
            assert task.cancelled()
        finally:
            task.cancel()  # a loop that lost its cancellation would hold up the cleanup
    assert [p.returncode for p in cancel_as_output_arrives.spawned] == [0, 0]


async def test_reload_command_failure_and_timeout_still_raise() -> None:
    failing = CommandReloader((sys.executable, "-c", "print('no opensm'); exit(3)"), 30.0)
    with pytest.raises(ReloadError, match="exited 3: no opensm"):
        await failing.reload()
    slow = CommandReloader((sys.executable, "-c", "import time; time.sleep(30)"), 0.2)
    with pytest.raises(ReloadError, match=r"timed out after 0\.2 s"):
        await slow.reload()
