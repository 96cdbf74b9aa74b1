"""The verify/repair loop against a fake subnet (the simulator proves it for real in e2e).

The fake behaves like OpenSM where it matters: a reload programs a port only
where OpenSM's own idea of the table changed, so an entry overwritten behind
its back survives reloads - the case that needs pkeyd to write the table.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from pkeyd.config import Settings
from pkeyd.fabric.model import (
    FabricError,
)
from tests.fakesubnet import CAP, A, B, FakeSubnet, open_subnet
from tests.helpers import Daemon, running_daemon


def _settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, verify_interval_s=0.05, verify_settle_s=0.2, retry_min_s=0.01, repair_max=3
    )


async def _status(d: Daemon) -> dict[str, Any]:
    status: dict[str, Any] = await d.json("GET", "/api/v1/status", 200)
    return status


async def _until(d: Daemon, check: Any, within_s: float = 10.0) -> dict[str, Any]:
    for _ in range(int(within_s / 0.02)):
        status = await _status(d)
        if check(status):
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {await _status(d)}")


async def test_verified_then_tamper_is_repaired_by_a_write(settings: Settings) -> None:
    subnet = FakeSubnet(settings.partitions_conf)
    config = _settings(settings)
    async with running_daemon(config, subnet, open_reader=lambda: open_subnet(subnet)) as d:
        body = {"name": "t", "pkey": "0x0a12", "members": [{"guid": f"0x{A:016x}"}]}
        await d.json("POST", "/api/v1/partitions", 201, json=body)
        await _until(d, lambda s: s["verified_generation"] == s["desired_generation"] == 1)
        assert await d.json("GET", "/api/v1/drift", 200) == []

        subnet.ports[A] = (0x7FFF,) + (0,) * (CAP - 1)  # 0x8a12 gone behind OpenSM's back
        reloads = subnet.reloads
        await _until(d, lambda s: s["verification"]["drift_entries"] != {})
        status = await _until(d, lambda s: s["verification"]["drift_entries"] == {})
        assert subnet.reloads > reloads  # a reload was tried first, and did not help
        assert subnet.writes == [A]
        assert 0x8A12 in subnet.ports[A]
        assert status["verification"]["drift_persists"] is False


async def test_drift_that_cannot_be_repaired_is_reported_not_looped_on(
    settings: Settings,
) -> None:
    subnet = FakeSubnet(settings.partitions_conf)
    config = _settings(settings)
    async with running_daemon(config, subnet, open_reader=lambda: open_subnet(subnet)) as d:
        body = {"name": "t", "pkey": "0x0a12", "members": [{"guid": f"0x{B:016x}"}]}
        await d.json("POST", "/api/v1/partitions", 201, json=body)
        await _until(d, lambda s: s["verified_generation"] == 1)
        subnet.broken_writes = True
        subnet.ports[B] = (0x7FFF, 0x0B00) + (0,) * (CAP - 2)
        status = await _until(d, lambda s: s["verification"]["drift_persists"])
        reloads = subnet.reloads
        await asyncio.sleep(0.5)  # several verification intervals
        assert subnet.reloads == reloads  # no more repair attempts for this generation
        assert status["verification"]["repair_reloads"] == 3
        drift = await d.json("GET", "/api/v1/drift", 200)
        assert {(e["pkey"], e["kind"]) for e in drift} == {
            ("0x0a12", "missing"),
            ("0x0b00", "unexpected"),
        }
        partition = await d.json("GET", "/api/v1/partitions/0x0a12/status", 200)
        assert partition["state"] == "drifted"


async def test_no_fabric_access_is_reported_cleanly(settings: Settings) -> None:
    async def unavailable() -> FakeSubnet:
        raise FabricError("no umad port: no InfiniBand device")

    subnet = FakeSubnet(settings.partitions_conf)
    async with running_daemon(_settings(settings), subnet, open_reader=unavailable) as d:
        status = await _until(d, lambda s: s["verification"]["error"] is not None)
        assert status["verification"]["error"].startswith("fabric unavailable")
        assert status["verified_generation"] is None
        assert (await d.json("GET", "/healthz", 200)) == {"status": "ok"}
