"""A stop that never ends is reported (where each task waits) and ends hard."""

from __future__ import annotations

import asyncio
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


async def test_a_stuck_stop_logs_the_waiting_tasks_and_exits_hard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exits: list[int] = []
    logged: list[dict[str, Any]] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr("pkeyd.daemon.os._exit", fake_exit)
    monkeypatch.setattr(daemon, "SHUTDOWN_GRACE_S", 0.05)
    monkeypatch.setattr(daemon, "STOP_LOOPS_S", 0.05)
    monkeypatch.setattr(
        daemon.log, "error", lambda event, **kw: logged.append({"event": event, **kw})
    )

    async def never() -> None:
        await asyncio.Event().wait()

    forever = asyncio.create_task(never(), name="pkeyd-never")
    try:
        with pytest.raises(SystemExit):
            await daemon._cleanup_or_exit(_StuckRunner(forever))  # type: ignore[arg-type]
    finally:
        forever.cancel()
    assert exits == [daemon.EXIT_STUCK]
    assert logged[0]["event"] == "shutdown_stuck"
    assert "never" in logged[0]["waiting"]["pkeyd-never"]


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
