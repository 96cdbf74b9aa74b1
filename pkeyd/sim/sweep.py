"""Install a partitions.conf on a simulated fabric and wait for OpenSM's sweep."""

from __future__ import annotations

import asyncio
import time

from pkeyd.sim.fabric import SimFabric

# OpenSM logs this at the end of every heavy sweep (SimFabric flushes its log).
SWEEP_DONE = "-> SUBNET UP"


async def load_and_sweep(fabric: SimFabric, data: bytes, within_s: float = 30.0) -> str:
    """Write `data` as the fabric's partitions.conf, SIGHUP, and return the sweep's log."""
    log = fabric.opensm_log
    start = log.stat().st_size
    fabric.partitions_conf.write_bytes(data)
    await fabric.sighup()
    deadline = time.monotonic() + within_s
    while True:
        with log.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        if SWEEP_DONE in text:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"no {SWEEP_DONE!r} within {within_s} s:\n{text[-3000:]}")
        await asyncio.sleep(0.02)
