"""The verify/repair loop against a fake subnet (the simulator proves it for real in e2e).

The fake behaves like OpenSM where it matters: a reload programs a port only
where OpenSM's own idea of the table changed, so an entry overwritten behind
its back survives reloads - the case that needs pkeyd to write the table.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pkeyd.config import Settings
from pkeyd.errors import ReloadError
from pkeyd.fabric.model import (
    FabricError,
    FabricPort,
    FabricSnapshot,
    MadStats,
    NodeType,
    PortState,
)
from pkeyd.opensm.parse import parse
from pkeyd.opensm.semantics import expected_tables
from tests.helpers import Daemon, running_daemon

SM, A, B = 0x101, 0x201, 0x301
CAP = 8


class FakeSubnet:
    """Ports with PKey tables, and an 'OpenSM' that caches what it programmed."""

    def __init__(self, conf: Path) -> None:
        self.conf = conf
        self.ports = {g: (0xFFFF,) + (0,) * (CAP - 1) for g in (SM, A, B)}
        self.cache = dict(self.ports)
        self.reloads = 0
        self.writes: list[int] = []
        self.broken_writes = False
        self.sm_port_guid = SM

    async def reload(self) -> None:  # the Reloader side
        if not self.conf.exists():
            raise ReloadError("no partitions.conf")
        self.reloads += 1
        result = parse(self.conf.read_bytes())
        wanted = expected_tables(result, [(g, "ca") for g in self.ports], SM)
        for guid, memberships in wanted.items():
            entries = sorted(p | 0x8000 if m == "full" else p for p, m in memberships.items())
            table = tuple((entries + [0] * CAP)[:CAP])
            if table != self.cache[guid]:  # OpenSM only sends what changed in its view
                self.cache[guid] = self.ports[guid] = table

    async def read_all(self) -> FabricSnapshot:  # the FabricReader side
        ports = tuple(
            FabricPort(g - 1, g, 1, NodeType.CA, "", g, PortState.ACTIVE, CAP, t)
            for g, t in sorted(self.ports.items())
        )
        return FabricSnapshot(ports, datetime.now(UTC), 0.001, MadStats(sent=3 * len(ports)))

    async def write_table(self, port: FabricPort, table: tuple[int, ...]) -> None:
        if self.broken_writes:
            raise FabricError("MAD timeout")
        self.writes.append(port.port_guid)
        self.ports[port.port_guid] = table

    async def aclose(self) -> None:
        return None


async def _open(subnet: FakeSubnet) -> FakeSubnet:
    return subnet


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
    async with running_daemon(config, subnet, open_reader=lambda: _open(subnet)) as d:
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
    async with running_daemon(config, subnet, open_reader=lambda: _open(subnet)) as d:
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
