"""The background loops stop when cancelled, even as they are woken in the same instant.

On Python 3.11 asyncio.wait_for returns the result instead of raising when a
cancellation and the awaited event land together; a loop built on it then
ignores the cancellation and the app's cleanup (SIGTERM) waits forever.
"""

from __future__ import annotations

import asyncio
import dataclasses

from pkeyd.api.keys import BACKGROUND_TASKS, RECONCILER, VERIFIER
from pkeyd.config import Settings
from tests.fakesubnet import FakeSubnet
from tests.helpers import running_daemon
from tests.unit.conftest import CountingReloader


async def test_reconcile_loop_stops_when_woken_and_cancelled_together(
    settings: Settings, reloader: CountingReloader
) -> None:
    async with running_daemon(settings, reloader) as d:
        await d.wait_applied()
        task = d.app[BACKGROUND_TASKS]["reconcile"]
        await asyncio.sleep(0.05)  # idle, waiting for work
        d.app[RECONCILER].wake()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        assert task in done
        assert task.cancelled()


async def test_verify_loop_stops_when_woken_and_cancelled_together(settings: Settings) -> None:
    subnet = FakeSubnet(settings.partitions_conf)

    async def open_subnet() -> FakeSubnet:
        return subnet

    slow = dataclasses.replace(settings, verify_interval_s=60.0)
    async with running_daemon(slow, subnet, open_reader=open_subnet) as d:
        await d.wait_applied()
        verifier = d.app[VERIFIER]
        assert verifier is not None
        task = d.app[BACKGROUND_TASKS]["verify"]
        await asyncio.sleep(0.2)  # its first passes done: idle, waiting for work
        verifier._applied()  # what a reload calls: wakes the loop
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        assert task in done
        assert task.cancelled()
