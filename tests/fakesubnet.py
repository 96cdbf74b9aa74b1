"""A fake subnet for the verify/repair loop: the only faked piece of those tests.

It behaves like OpenSM where it matters: a reload programs a port only where
OpenSM's own idea of the table changed, so an entry overwritten behind its
back survives reloads - the case that needs pkeyd to write the table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

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


async def open_subnet(subnet: FakeSubnet) -> FakeSubnet:
    return subnet
