"""How busy the event loop is: its thread's CPU time, and how late its timers fire.

Every request, group commit and reconcile slice runs on one event-loop
thread, so that thread is pkeyd's ceiling: in bench.api_throughput (2
cores shared with the clients) it used 0.85 of a core for 1,400-1,700
single-member writes a second and 0.98 for 5,400-5,800 reads; past about
0.8 the requests' p99 latency climbs steeply (docs/metrics.md).

Two series let an operator see the ceiling coming on a dashboard rather
than in the clients' timeouts:

- pkeyd_event_loop_cpu_seconds_total: the loop thread's CPU time. Its rate
  is the share of a core the thread uses, the measure of headroom.
- pkeyd_event_loop_lag_seconds: how late a timer set TICK_S ahead fires,
  sampled every tick: the length of the loop's turn when it came due. It
  shows what the CPU rate cannot: long synchronous steps, pauses of the
  garbage collector, a thread kept off the CPU by other processes. Under
  load requests wait far longer than this (in the sockets and for their
  commit, not for one turn of the loop), so it is no measure of headroom.
"""

from __future__ import annotations

import asyncio
import time

from pkeyd.metrics import Metrics

# Two samples a second: 120 a minute for the lag's quantiles. An idle daemon
# spent 0.7 ms of CPU a second more with them (4.0-4.2 against 3.4 ms).
TICK_S = 0.5


async def watch_loop(metrics: Metrics, tick_s: float = TICK_S) -> None:
    """Sample the running loop forever (a background task; ends by cancellation)."""
    loop = asyncio.get_running_loop()
    spent = time.thread_time()  # this coroutine runs on the loop's thread
    while True:
        due = loop.time() + tick_s
        await asyncio.sleep(tick_s)
        # asyncio may fire a timer up to its clock resolution early.
        metrics.loop_lag.observe(max(0.0, loop.time() - due))
        now = time.thread_time()
        metrics.loop_cpu.inc(now - spent)
        spent = now
