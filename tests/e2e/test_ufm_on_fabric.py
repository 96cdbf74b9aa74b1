"""UFM clients' flows against `pkeyd serve` on a simulated fabric, down to the PKey tables.

pkeyd runs as its own process in the simulator's environment (verification
on the ports needs that), so `last_updated` here means "verified on the
ports". Each step waits the way a polling client does: until last_updated
reaches the second of its call. The tables are then read from the ports
with smpquery, not from pkeyd.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from pkeyd.sim.daemon import DaemonProcess
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.pkeys import PKeyTables, pkey_membership, read_pkey_tables
from pkeyd.sim.topology import fat_tree
from tests.http import JsonApi

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

TOPOLOGY = fat_tree(16, hcas_per_leaf=8)
PORTS = TOPOLOGY.hca_port_guids()[1:]  # the SM's own port aside
# ib-kubernetes' http driver sets this on every request.
GO_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


def _ufm(g: int) -> str:
    return f"{g:016x}"


class UfmClient(JsonApi):
    """Calls as the clients make them, plus the polling they do on last_updated."""

    async def server_time(self) -> datetime:
        """What ib-kubernetes records before a change: the Date of a HEAD of ufm_version."""
        async with self.http.head("/ufmRest/app/ufm_version") as resp:
            assert resp.status == 200
            return datetime.strptime(resp.headers["Date"], "%a, %d %b %Y %H:%M:%S GMT").replace(
                tzinfo=UTC
            )

    async def last_updated(self) -> datetime | None:
        body = await self.call("GET", "/ufmRest/resources/pkeys/last_updated")
        raw = body["last_updated"]
        if raw is None:
            return None
        return datetime.strptime(raw, "%a %b %d %H:%M:%S UTC %Y").replace(tzinfo=UTC)

    async def until_updated_since(self, since: datetime, within_s: float = 30.0) -> datetime:
        """Poll last_updated until it is at or after `since` (ib-kubernetes' test)."""
        started = time.monotonic()
        while True:
            stamp = await self.last_updated()
            if stamp is not None and stamp >= since:
                return stamp
            if time.monotonic() - started > within_s:
                raise AssertionError(f"last_updated stayed {stamp} (< {since}) for {within_s} s")
            await asyncio.sleep(0.1)

    async def verified(self) -> dict[str, Any]:
        """/api/v1's own view: the newest generation is verified on the ports."""
        started = time.monotonic()
        while True:
            status: dict[str, Any] = await self.call("GET", "/api/v1/status")
            if status["verified_generation"] == status["desired_generation"]:
                return status
            if time.monotonic() - started > 30:
                raise AssertionError(f"never verified: {status}")
            await asyncio.sleep(0.1)

    async def change(self, method: str, path: str, **kw: Any) -> tuple[Any, datetime]:
        """One change, then wait as a client does; the answer and the last_updated seen.

        Both times have whole seconds: a change in the second of the previous
        one could not be told from it, so like a careful client this one
        starts its change in a later second.
        """
        previous = await self.last_updated()
        since = await self.server_time()
        while previous is not None and since <= previous:
            await asyncio.sleep(0.1)
            since = await self.server_time()
        answer = await self.call(method, path, **kw)
        stamp = await self.until_updated_since(since)
        # When last_updated says so, the ports hold the change: nothing is pending.
        status = await self.call("GET", "/api/v1/status")
        assert status["verified_generation"] == status["desired_generation"], status
        return answer, stamp


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fabric() -> AsyncIterator[SimFabric]:
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-ufm-"))
    async with SimFabric(TOPOLOGY, workdir) as sim:
        yield sim
        assert sim.parse_errors() == []
    shutil.rmtree(workdir, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="module")
async def ufm(fabric: SimFabric, tmp_path: Path) -> AsyncIterator[UfmClient]:
    flags = ["--verify-interval", "1", "--verify-settle", "3", "--mad-retries", "10"]
    async with (
        DaemonProcess(fabric, tmp_path, *flags) as daemon,
        aiohttp.ClientSession(daemon.base_url) as http,
    ):
        client = UfmClient(http)
        await client.verified()
        yield client


async def _tables(fabric: SimFabric) -> PKeyTables:
    return await read_pkey_tables(fabric, PORTS)


def _memberships(tables: PKeyTables, pkey: int) -> dict[int, str]:
    return {g: m for g, t in tables.items() if (m := pkey_membership(t, pkey)) is not None}


async def test_pod_flow_of_ib_kubernetes(ufm: UfmClient, fabric: SimFabric) -> None:
    pod_a, pod_b = PORTS[0], PORTS[9]
    await ufm.call("GET", "/ufmRest/app/ufm_version")  # Validate()
    add = (
        '{"pkey": "0x0A12", "index0": true, "ip_over_ib": true, "membership": "full", '
        f'"guids": ["{_ufm(pod_a)}","{_ufm(pod_b)}"]}}'
    )
    _, added_at = await ufm.change(
        "POST", "/ufmRest/resources/pkeys", data=add.encode(), headers=GO_HEADERS
    )

    tables = await _tables(fabric)
    assert _memberships(tables, 0x0A12) == {pod_a: "full", pod_b: "full"}
    # index0: the pod's PKey is the first entry of its port's table.
    assert tables[pod_a][0] == tables[pod_b][0] == 0x8A12
    assert "pk_0x0a12=0x0a12, ipoib" in fabric.partitions_conf.read_text()  # ip_over_ib

    listed = await ufm.call("GET", "/ufmRest/resources/pkeys/?guids_data=true")
    assert {g["guid"] for g in listed["0xa12"]["guids"]} == {_ufm(pod_a), _ufm(pod_b)}

    remove = f'{{"pkey": "0x0A12", "guids": ["{_ufm(pod_a)}","{_ufm(pod_b)}"]}}'
    _, removed_at = await ufm.change(
        "POST", "/ufmRest/actions/remove_guids_from_pkey", data=remove.encode(), headers=GO_HEADERS
    )
    assert removed_at >= added_at
    tables = await _tables(fabric)
    assert _memberships(tables, 0x0A12) == {}
    # Back to the Default at index 0 once the pod PKey is gone.
    assert tables[pod_a][0] == tables[pod_b][0] == 0x7FFF


async def test_neutron_flow_put_change_delete(ufm: UfmClient, fabric: SimFabric) -> None:
    pkey = hex(2817)  # hex(segmentation_id), as the driver writes it: 0xb01
    first, second, third = PORTS[1], PORTS[2], PORTS[10]
    body = {"guids": [_ufm(first), _ufm(second)], "ip_over_ib": True, "index0": False,
            "membership": "full", "pkey": pkey}  # fmt: skip
    await ufm.change("PUT", "/ufmRest/resources/pkeys", json=body)
    tables = await _tables(fabric)
    assert _memberships(tables, 0x0B01) == {first: "full", second: "full"}

    body |= {"guids": [_ufm(second), _ufm(third)], "membership": "limited"}
    await ufm.change("PUT", "/ufmRest/resources/pkeys", json=body)
    tables = await _tables(fabric)
    assert _memberships(tables, 0x0B01) == {second: "limited", third: "limited"}
    one = await ufm.call("GET", f"/ufmRest/resources/pkeys/{pkey}?guids_data=True")
    assert [(g["guid"], g["membership"]) for g in one["guids"]] == [
        (_ufm(second), "limited"),
        (_ufm(third), "limited"),
    ]

    assert (await ufm.change("DELETE", f"/ufmRest/resources/pkeys/{pkey}"))[0] == {}
    tables = await _tables(fabric)
    assert _memberships(tables, 0x0B01) == {}
    assert await ufm.call("GET", f"/ufmRest/resources/pkeys/{pkey}") == {}
    await ufm.call("GET", "/api/v1/partitions/0x0b01", 404)


async def test_ufm_and_api_v1_on_one_partition(ufm: UfmClient, fabric: SimFabric) -> None:
    full, limited, late = PORTS[3], PORTS[4], PORTS[11]
    body = {"name": "mixed", "pkey": "0x0c01", "members": [{"guid": f"0x{full:016x}"}]}
    await ufm.change("POST", "/api/v1/partitions", expect=201, json=body)

    add = {"pkey": "0xc01", "guids": [_ufm(limited)], "membership": "limited"}
    await ufm.change("POST", "/ufmRestV3/resources/pkeys", json=add)
    tables = await _tables(fabric)
    assert _memberships(tables, 0x0C01) == {full: "full", limited: "limited"}

    # Each side sees the other's change.
    seen = await ufm.call("GET", "/ufmRest/resources/pkeys/0xc01?guids_data=true&qos_conf=true")
    assert seen["partition"] == "mixed"
    assert seen["ip_over_ib"] is False  # /api/v1's choice; the UFM call did not send one
    assert [(g["guid"], g["membership"]) for g in seen["guids"]] == [
        (_ufm(full), "full"),
        (_ufm(limited), "limited"),
    ]
    await ufm.change("PUT", "/ufmRest/resources/pkeys/qos_conf", json={"pkey": "0xc01",
                     "mtu_limit": 4})  # fmt: skip
    v1 = await ufm.call("GET", "/api/v1/partitions/0x0c01")
    assert v1["mtu"] == 5

    await ufm.change("DELETE", f"/api/v1/partitions/0x0c01/members/0x{full:016x}", expect=204)
    await ufm.change("POST", "/ufmRest/resources/pkeys", json={"pkey": "0xc01",
                     "guids": [_ufm(late)], "membership": "full"})  # fmt: skip
    tables = await _tables(fabric)
    assert _memberships(tables, 0x0C01) == {limited: "limited", late: "full"}
    seen = await ufm.call("GET", "/ufmRest/resources/pkeys?guids_data=true&qos_conf=true")
    assert seen["0xc01"]["qos_conf"] == {"mtu_limit": 4, "service_level": 0, "rate_limit": 10}

    await ufm.change("DELETE", "/ufmRest/resources/pkeys/0xc01")
    await ufm.call("GET", "/api/v1/partitions/0x0c01", 404)
    assert _memberships(await _tables(fabric), 0x0C01) == {}
