"""From the REST API to the PKey tables of a real OpenSM on ibsim."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.pkeys import PKeyTables, pkey_membership, read_pkey_tables, wait_for_pkeys
from tests.helpers import Daemon

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

PKEY = 0x0A12


def _guid(g: int) -> str:
    return f"0x{g:016x}"


def _expect(full: set[int], limited: set[int], pkey: int = PKEY) -> Callable[[PKeyTables], bool]:
    def check(tables: PKeyTables) -> bool:
        for guid, table in tables.items():
            want = "full" if guid in full else "limited" if guid in limited else None
            if pkey_membership(table, pkey) != want:
                return False
        return True

    return check


async def test_partition_lifecycle_on_the_ports(daemon: Daemon, fabric: SimFabric) -> None:
    ports = fabric.topology.hca_port_guids()[1:]  # the SM's own port aside
    full, limited = set(ports[0:40:4]), set(ports[1:40:4])
    members = [{"guid": _guid(g), "membership": "full"} for g in sorted(full)] + [
        {"guid": _guid(g), "membership": "limited"} for g in sorted(limited)
    ]
    body = {"name": "tenant-a", "pkey": "0x0a12", "ipoib": True, "members": members}
    await daemon.json("POST", "/api/v1/partitions", 201, json=body)
    tables = await wait_for_pkeys(fabric, _expect(full, limited))
    # Full members carry pkey|0x8000, limited ones the bare pkey, others neither.
    for guid in full:
        assert PKEY | 0x8000 in tables[guid]
        assert PKEY not in tables[guid]
    for guid in limited:
        assert PKEY in tables[guid]
        assert PKEY | 0x8000 not in tables[guid]
    assert all(
        pkey_membership(t, PKEY) is None for g, t in tables.items() if g not in full | limited
    )

    # A rejected request changes nothing on the fabric.
    await daemon.json(
        "POST",
        "/api/v1/partitions/0x0a12/members",
        422,
        json={"members": [{"guid": _guid(ports[100]), "membership": "owner"}]},
    )

    newcomer = ports[100]
    await daemon.json(
        "POST",
        "/api/v1/partitions/0x0a12/members",
        200,
        json={"members": [{"guid": _guid(newcomer), "membership": "limited"}]},
    )
    await wait_for_pkeys(fabric, _expect(full, limited | {newcomer}))

    leaver = sorted(full)[0]
    await daemon.json("DELETE", f"/api/v1/partitions/0x0a12/members/{_guid(leaver)}", 204)
    await wait_for_pkeys(fabric, _expect(full - {leaver}, limited | {newcomer}))

    promoted = sorted(limited)[0]
    await daemon.json(
        "POST",
        "/api/v1/partitions/0x0a12/members",
        200,
        json={"members": [{"guid": _guid(promoted), "membership": "full"}]},
    )
    await wait_for_pkeys(
        fabric, _expect((full - {leaver}) | {promoted}, (limited | {newcomer}) - {promoted})
    )

    await daemon.json("DELETE", "/api/v1/partitions/0x0a12", 204)
    await wait_for_pkeys(fabric, _expect(set(), set()))
    status = await daemon.wait_applied()
    assert status["last_reload"]["result"] == "ok"


async def test_two_partitions_share_ports(daemon: Daemon, fabric: SimFabric) -> None:
    ports = fabric.topology.hca_port_guids()[1:]
    a, b = set(ports[0:10]), set(ports[5:15])
    for name, pkey, group in (("a", 0x10, a), ("b", 0x20, b)):
        members = [{"guid": _guid(g), "membership": "full"} for g in sorted(group)]
        await daemon.json(
            "POST",
            "/api/v1/partitions",
            201,
            json={"name": name, "pkey": f"0x{pkey:04x}", "members": members},
        )
    wanted = sorted(a | b | {ports[20]})

    def both(tables: PKeyTables) -> bool:
        return _expect(a, set(), 0x10)(tables) and _expect(b, set(), 0x20)(tables)

    await wait_for_pkeys(fabric, both, wanted)


async def test_burst_of_200_additions_reaches_ports_with_few_reloads(
    daemon: Daemon, fabric: SimFabric
) -> None:
    ports = fabric.topology.hca_port_guids()[1:201]
    await daemon.json("POST", "/api/v1/partitions", 201, json={"name": "burst", "pkey": "0x0b00"})
    before = (await daemon.wait_applied())["reloads"]["ok"]

    async def add(guid: int) -> None:
        membership = "full" if guid % 2 else "limited"
        await daemon.json(
            "POST",
            "/api/v1/partitions/0x0b00/members",
            200,
            json={"members": [{"guid": _guid(guid), "membership": membership}]},
        )

    await asyncio.gather(*(add(g) for g in ports))
    status = await daemon.wait_applied()
    full = {g for g in ports if g % 2}
    await wait_for_pkeys(fabric, _expect(full, set(ports) - full, 0x0B00), ports, timeout=60)
    reloads = status["reloads"]["ok"] - before
    print(f"200 concurrent additions -> {reloads} reloads")
    assert status["desired_generation"] >= 201
    assert 1 <= reloads <= 20, reloads


async def test_restart_on_same_database_keeps_fabric(daemon: Daemon, fabric: SimFabric) -> None:
    guid = fabric.topology.hca_port_guids()[3]
    await daemon.json(
        "POST",
        "/api/v1/partitions",
        201,
        json={"name": "kept", "pkey": "0x0c00", "members": [{"guid": _guid(guid)}]},
    )
    await wait_for_pkeys(fabric, _expect({guid}, set(), 0x0C00), [guid])
    tables = await read_pkey_tables(fabric, [guid])
    assert 0x8C00 in tables[guid]
