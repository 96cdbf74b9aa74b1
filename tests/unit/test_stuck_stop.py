"""A stop that never ends is reported (where each task waits) and ends hard."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from aiohttp import web

from pkeyd import daemon


class _StuckRunner:
    """Stands in for web.AppRunner whose cleanup waits on a task that never finishes."""

    def __init__(self, forever: asyncio.Task[None]) -> None:
        self.forever = forever

    async def cleanup(self) -> None:
        await asyncio.shield(self.forever)


class _CancellingRunner:
    """Stands in for web.AppRunner whose cleanup cancels a loop and awaits it, as the app's does."""

    def __init__(self, loop: asyncio.Task[None]) -> None:
        self.loop = loop

    async def cleanup(self) -> None:
        self.loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.loop


@pytest.fixture
def hard_exits(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[dict[str, Any]]]:
    """The exit codes asked for and the errors logged, with a short bound."""
    exits: list[int] = []
    logged: list[dict[str, Any]] = []
    monkeypatch.setattr("pkeyd.daemon.os._exit", exits.append)
    monkeypatch.setattr(daemon, "SHUTDOWN_GRACE_S", 0.05)
    monkeypatch.setattr(daemon, "STOP_LOOPS_S", 0.05)
    monkeypatch.setattr(
        daemon.log, "error", lambda event, **kw: logged.append({"event": event, **kw})
    )
    return exits, logged


async def test_a_stuck_stop_logs_the_waiting_tasks_and_exits_hard(
    hard_exits: tuple[list[int], list[dict[str, Any]]],
) -> None:
    exits, logged = hard_exits

    async def never() -> None:
        await asyncio.Event().wait()

    forever = asyncio.create_task(never(), name="pkeyd-never")
    stop = asyncio.create_task(daemon._cleanup_or_exit(_StuckRunner(forever)))  # type: ignore[arg-type]
    # Loop timers fire in deadline order: the bound's (0.1 s) before this wait's.
    done, _ = await asyncio.wait({stop}, timeout=1.0)
    forever.cancel()  # the real os._exit ends the process long before
    await asyncio.wait({stop})
    assert not done
    assert exits == [daemon.EXIT_STUCK]
    assert logged[0]["event"] == "shutdown_stuck"
    assert "never" in logged[0]["waiting"]["pkeyd-never"]


async def test_a_stop_held_up_by_a_loop_that_lost_its_cancellation_is_reported(
    hard_exits: tuple[list[int], list[dict[str, Any]]],
) -> None:
    """The shape of the hang once seen: the cleanup awaits a loop that swallowed its cancel.

    A bound that cancels the cleanup instead is defeated by it: the cancel
    reaches the loop through the cleanup's await, the cleanup's suppress
    swallows it, and the stop ends past its bound without a report.
    """
    exits, logged = hard_exits

    async def deaf_loop() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)  # the cancellation that gets lost
        await asyncio.Event().wait()  # back to waiting for work

    loop = asyncio.create_task(deaf_loop(), name="pkeyd-deaf")
    await asyncio.sleep(0)  # the loop waits
    stop = asyncio.create_task(daemon._cleanup_or_exit(_CancellingRunner(loop)))  # type: ignore[arg-type]
    done, _ = await asyncio.wait({stop}, timeout=1.0)  # the bound (0.1 s) fires first
    loop.cancel()  # the real os._exit ends the process long before
    await asyncio.wait({stop})
    assert not done  # the stop did not end by itself...
    assert exits == [daemon.EXIT_STUCK]  # ...and was ended hard, once
    assert logged[0]["event"] == "shutdown_stuck"
    assert logged[0]["waiting"]["pkeyd-deaf"].split(" <- ")[-1].endswith(" deaf_loop")


async def test_a_normal_stop_returns() -> None:
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    await daemon._cleanup_or_exit(runner)  # no exit, no error


async def test_a_stuck_task_is_reported_with_what_it_awaits_inside() -> None:
    async def held_up() -> None:
        await asyncio.Event().wait()

    async def loop() -> None:
        await held_up()

    task = asyncio.create_task(loop(), name="pkeyd-loop")
    await asyncio.sleep(0)  # suspended inside held_up
    try:
        where = daemon._task_stacks()["pkeyd-loop"].split(" <- ")
    finally:
        task.cancel()
    # Innermost first: the Event's wait, then each coroutine out to the task's own.
    assert [w.rsplit(" ", 1)[1] for w in where] == ["wait", "held_up", "loop"]
    assert where[1].startswith(f"{__file__}:")
