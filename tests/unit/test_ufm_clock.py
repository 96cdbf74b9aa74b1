"""last_updated: published only once the change is on the ports, stamped when it was applied."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

from pkeyd.api.ufm_clock import LAST_UPDATED, LastUpdated
from pkeyd.api.ufm_shapes import ufm_time
from pkeyd.config import Settings
from pkeyd.fabric.model import FabricError, FabricSnapshot
from tests.fakesubnet import A, FakeSubnet
from tests.helpers import Daemon, running_daemon

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_nothing_before_the_first_verification() -> None:
    clock = LastUpdated(verifying=True)
    assert clock.current() is None
    clock.applied(1, _at(1))
    clock.verified(None)
    assert clock.current() is None
    clock.verified(1)
    assert clock.current() == _at(1)


def test_stamp_is_the_apply_time_of_the_verified_generation() -> None:
    clock = LastUpdated(verifying=True)
    clock.applied(5, _at(5))
    call = _at(6)  # a client's call, committed as generation 6
    clock.applied(6, _at(6.5))
    # A verification of generation 5 finishing after the call does not carry it.
    clock.verified(5)
    assert clock.current() == _at(5)
    current = clock.current()
    assert current is not None
    assert current < call
    clock.verified(6)
    assert clock.current() == _at(6.5)


def test_repair_reloads_and_stale_verifications_do_not_move_it() -> None:
    clock = LastUpdated(verifying=True)
    clock.applied(3, _at(3))
    clock.verified(3)
    clock.applied(3, _at(9))  # a drift repair reloads the same generation
    clock.verified(3)
    assert clock.current() == _at(3)
    clock.applied(4, _at(4))
    clock.verified(3)
    assert (clock.generation, clock.current()) == (3, _at(3))
    clock.applied(2, _at(10))  # never goes back to an older generation
    clock.verified(2)
    assert clock.generation == 3


def test_without_verification_applied_is_published() -> None:
    clock = LastUpdated(verifying=False)
    clock.applied(1, _at(1))
    assert clock.current() == _at(1)
    clock.applied(1, _at(2))
    assert clock.current() == _at(1)
    clock.applied(2, _at(3))
    assert (clock.generation, clock.current()) == (2, _at(3))


def test_unverified_generations_are_bounded_keeping_the_newest() -> None:
    clock = LastUpdated(verifying=True)
    for generation in range(1, 2001):
        clock.applied(generation, _at(generation))
    clock.verified(1)  # long dropped: it can no longer be verified anyway
    assert clock.current() is None
    clock.verified(2000)
    assert clock.current() == _at(2000)


def test_a_call_that_changed_nothing_is_covered_once_its_state_is_verified() -> None:
    clock = LastUpdated(verifying=True)
    clock.applied(4, _at(4))
    clock.verified(4)
    # Generation 4 is on the ports: a no-op call asking for it is covered at once.
    clock.touched(4, _at(20))
    assert (clock.generation, clock.current()) == (4, _at(20))
    clock.touched(3, _at(10))  # never backwards
    assert clock.current() == _at(20)

    # Asking for a state not verified yet: covered when that generation is.
    clock.applied(5, _at(21))
    clock.touched(5, _at(22))
    assert clock.current() == _at(20)
    clock.applied(6, _at(23))
    clock.verified(6)
    assert (clock.generation, clock.current()) == (6, _at(23))
    clock.applied(7, _at(24))
    clock.touched(7, _at(30))
    clock.verified(7)
    assert clock.current() == _at(30)  # the call came after the apply

    # Applied before a no-op call raised it, verified after: it never goes back.
    clock.applied(8, _at(31))
    clock.touched(7, _at(40))
    clock.verified(8)
    assert (clock.generation, clock.current()) == (8, _at(40))


def test_ufm_time_format() -> None:
    assert ufm_time(datetime(2020, 9, 3, 11, 42, 39, tzinfo=UTC)) == "Thu Sep  3 11:42:39 UTC 2020"
    later = datetime(2020, 9, 13, 13, 42, 39, tzinfo=UTC) + timedelta(hours=-2)
    assert ufm_time(later) == "Sun Sep 13 11:42:39 UTC 2020"


class BlockableSubnet(FakeSubnet):
    """The fake subnet, whose ports can stop answering."""

    blocked = False
    refused = 0  # reads that found the fabric silent
    refusals = asyncio.Condition()

    async def read_all(self) -> FabricSnapshot:
        if self.blocked:
            async with self.refusals:
                self.refused += 1
                self.refusals.notify_all()
            raise FabricError("no answer from the fabric")
        return await super().read_all()


async def _last_updated(d: Daemon) -> str | None:
    body = await d.json("GET", "/ufmRest/resources/pkeys/last_updated", 200)
    value: str | None = body["last_updated"]
    return value


async def test_last_updated_waits_for_the_ports(settings: Settings) -> None:
    subnet = BlockableSubnet(settings.partitions_conf)
    config = dataclasses.replace(settings, verify_interval_s=0.05, verify_settle_s=0.2)

    async def open_reader() -> BlockableSubnet:
        return subnet

    async with running_daemon(config, subnet, open_reader=open_reader) as d:
        await d.wait_applied()
        clock = d.app[LAST_UPDATED]
        subnet.blocked = True
        before = await _last_updated(d)
        called = datetime.now(UTC).replace(microsecond=0)
        add = {"pkey": "0xa12", "guids": [f"{A:016x}"]}
        await d.json("POST", "/ufmRest/resources/pkeys", 200, json=add)
        status = await d.wait_applied()
        # Written and reloaded, but not seen on the ports: last_updated stays,
        # however many verification passes try.
        tried = subnet.refused
        async with subnet.refusals:
            await subnet.refusals.wait_for(lambda: subnet.refused >= tried + 3)
        assert await _last_updated(d) == before
        assert clock.generation != status["desired_generation"]
        assert status["verified_generation"] != status["desired_generation"]

        subnet.blocked = False
        for _ in range(500):
            now = await _last_updated(d)
            if clock.generation == status["desired_generation"]:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("last_updated never moved")
        assert now is not None
        # Whole seconds, as UFM writes it: at or after the second of the call.
        assert datetime.strptime(now, "%a %b %d %H:%M:%S UTC %Y").replace(tzinfo=UTC) >= called
        status = await d.json("GET", "/api/v1/status", 200)
        assert status["verified_generation"] == status["desired_generation"]

        # The same add again changes nothing, yet its client waits past its call too.
        stamp = clock.current()
        assert stamp is not None
        await d.json("POST", "/ufmRest/resources/pkeys", 200, json=add)
        again = clock.current()
        assert again is not None
        assert again > stamp
        assert (await d.json("GET", "/api/v1/status", 200))["desired_generation"] == status[
            "desired_generation"
        ]
