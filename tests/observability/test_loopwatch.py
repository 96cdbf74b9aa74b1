"""The event loop's load as metrics: its thread's CPU time and its timers' lateness."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry

from pkeyd.loopwatch import watch_loop
from pkeyd.metrics import Metrics

TICK_S = 0.02
LAG = "pkeyd_event_loop_lag_seconds"


def _spin(seconds: float) -> None:
    """Hold the loop's thread on the CPU, as a long synchronous step would."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


@contextlib.asynccontextmanager
async def _watching() -> AsyncIterator[Metrics]:
    """Metrics that watch_loop samples (every TICK_S) while the block runs."""
    metrics = Metrics(CollectorRegistry())
    watcher = asyncio.create_task(watch_loop(metrics, TICK_S))
    try:
        yield metrics
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def _sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    assert value is not None, name
    return value


async def test_a_blocked_loop_shows_as_cpu_time_and_as_a_late_timer() -> None:
    async with _watching() as metrics:
        await asyncio.sleep(TICK_S * 5)  # idle ticks first
        idle_ticks = _sample(metrics, f"{LAG}_count")
        _spin(0.3)  # the watcher's timer comes due meanwhile
        await asyncio.sleep(TICK_S * 3)
    assert idle_ticks >= 2
    ticks = _sample(metrics, f"{LAG}_count")
    # Exactly one tick waited out the spin: over 0.25 s late, and by its own
    # lateness, not the time since the watcher started (2.5 s of slack for a
    # loaded machine).
    late = ticks - _sample(metrics, f"{LAG}_bucket", {"le": "0.25"})
    assert late == 1
    assert _sample(metrics, f"{LAG}_bucket", {"le": "2.5"}) == ticks
    assert _sample(metrics, f"{LAG}_sum") >= 0.3 - TICK_S
    # The spin's CPU time is counted, and the sleeps between ticks add little to it.
    cpu = _sample(metrics, "pkeyd_event_loop_cpu_seconds_total")
    assert 0.3 <= cpu < 0.3 + 0.2


async def test_timers_firing_on_time_report_a_small_lag() -> None:
    async with _watching() as metrics:
        await asyncio.sleep(TICK_S * 10.5)
    ticks = _sample(metrics, f"{LAG}_count")
    assert ticks >= 5
    # A machine shared with other jobs can delay a wakeup, never most of them.
    assert _sample(metrics, f"{LAG}_bucket", {"le": "0.1"}) >= ticks - 1
    assert _sample(metrics, "pkeyd_event_loop_cpu_seconds_total") < 0.1
