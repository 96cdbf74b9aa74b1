"""The truth on the ports: pkeyd (its own process, SMPs over ibsim) verifies and repairs.

pkeyd runs as `pkeyd serve` in the simulator's environment, as it would run
on an SM node; the tests tamper with the fabric through a separate SMP probe
and ibsim's console, and watch /api/v1/status and /api/v1/drift.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from pkeyd.sim.daemon import DaemonProcess
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.pkeys import pkey_membership, read_pkey_tables
from pkeyd.sim.topology import fat_tree
from tests.fabric.probe_client import ProbeServer, ibsim_console
from tests.http import JsonApi

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

INTERVAL_S = 1.0
TOPOLOGY = fat_tree(32, hcas_per_leaf=8)
PORTS = TOPOLOGY.hca_port_guids()
PKEY = 0x0A12


def _guid(g: int) -> str:
    return f"0x{g:016x}"


class Api(JsonApi):
    async def verified(self) -> dict[str, Any]:
        def done(s: dict[str, Any]) -> bool:
            return bool(s["verified_generation"] == s["desired_generation"])

        status, _ = await self.until("/api/v1/status", done)
        return dict(status)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fabric() -> AsyncIterator[SimFabric]:
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-verify-"))
    async with SimFabric(TOPOLOGY, workdir) as sim:
        yield sim
        assert sim.parse_errors() == []
    shutil.rmtree(workdir, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="module")
async def api(fabric: SimFabric, tmp_path: Path) -> AsyncIterator[Api]:
    flags = ["--verify-interval", str(INTERVAL_S), "--verify-settle", "3", "--mad-retries", "10"]
    flags += ["--resync-interval", "2"]
    async with (
        DaemonProcess(fabric, tmp_path, *flags) as daemon,
        aiohttp.ClientSession(daemon.base_url) as http,
    ):
        client = Api(http)
        await client.verified()
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def probe(fabric: SimFabric) -> AsyncIterator[ProbeServer]:
    server = await ProbeServer.start(fabric)
    yield server
    await server.close()


async def _tenant(api: Api, full: list[int], limited: list[int]) -> None:
    members = [{"guid": _guid(g), "membership": "full"} for g in full]
    members += [{"guid": _guid(g), "membership": "limited"} for g in limited]
    await api.call(
        "POST", "/api/v1/partitions", 201,
        json={"name": "tenant", "pkey": f"0x{PKEY:04x}", "members": members},
    )  # fmt: skip
    await api.verified()


async def test_changes_reach_verified_with_no_drift(api: Api, fabric: SimFabric) -> None:
    await _tenant(api, PORTS[1:4], PORTS[4:6])
    assert await api.call("GET", "/api/v1/drift") == []
    status = await api.call("GET", f"/api/v1/partitions/0x{PKEY:04x}/status")
    assert status["state"] == "verified"
    port = await api.call("GET", f"/api/v1/ports/{_guid(PORTS[1])}")
    assert port["expected"] == port["actual"] == {"0x0a12": "full", "0x7fff": "limited"}
    tables = await read_pkey_tables(fabric, PORTS[1:6])
    assert [pkey_membership(tables[g], PKEY) for g in PORTS[1:6]] == [
        "full", "full", "full", "limited", "limited",
    ]  # fmt: skip
    metrics = await (await api.http.get("/metrics")).text()
    assert "pkeyd_verified_generation 1.0" in metrics
    assert 'pkeyd_drift_ports{kind="missing"} 0.0' in metrics


async def test_entry_overwritten_behind_opensm_is_reported_and_repaired(
    api: Api, fabric: SimFabric, probe: ProbeServer
) -> None:
    victim = PORTS[2]
    await _tenant(api, [victim], [])
    table = (await api.call("GET", f"/api/v1/ports/{_guid(victim)}"))["port"]["pkeys"]
    tampered = [e for e in table[:32] if e != "0x8a12"] + ["0x0000"]
    await probe.call("set_pkey_block", port_guid=_guid(victim), block=0, entries=tampered)

    drift, seen_after = await api.until("/api/v1/drift", lambda d: bool(d))
    assert {"port_guid": _guid(victim), "pkey": "0x0a12", "kind": "missing",
            "expected": "full", "actual": None} in drift  # fmt: skip
    assert seen_after <= INTERVAL_S + 2.0  # one interval plus a read

    await api.until("/api/v1/drift", lambda d: d == [])
    tables = await read_pkey_tables(fabric, [victim])
    assert pkey_membership(tables[victim], PKEY) == "full"
    status = await api.call("GET", "/api/v1/status")
    assert status["verification"]["repair_reloads"] >= 2  # a reload did not help; a write did


async def test_hand_edit_and_sighup_is_reported_and_repaired(api: Api, fabric: SimFabric) -> None:
    member = PORTS[3]
    await _tenant(api, [member], [])
    fabric.partitions_conf.write_text("Default=0x7fff, ipoib : ALL=limited, SELF=full ;\n")
    await fabric.sighup()

    drift, seen_after = await api.until(
        "/api/v1/drift", lambda d: any(e["kind"] == "missing" for e in d)
    )
    assert seen_after <= INTERVAL_S + 2.0
    assert any(e["port_guid"] == _guid(member) and e["pkey"] == "0x0a12" for e in drift)

    await api.until("/api/v1/drift", lambda d: d == [])
    status = await api.call("GET", "/api/v1/status")
    assert status["external_edit"]["kind"] == "edited"
    assert "tenant=0x0a12" in fabric.partitions_conf.read_text()


async def test_unplugged_member_is_reported_absent(api: Api, fabric: SimFabric) -> None:
    node = TOPOLOGY.hcas()[5].name
    member = TOPOLOGY.node(node).port_guid(1)
    await _tenant(api, [member], [])
    await ibsim_console(fabric, f'Unlink "{node}"[1]')
    try:
        drift, seen_after = await api.until(
            "/api/v1/drift", lambda d: any(e["kind"] == "absent_member" for e in d)
        )
        assert seen_after <= INTERVAL_S + 2.0
        assert {"port_guid": _guid(member), "pkey": "0x0a12", "kind": "absent_member",
                "expected": "full", "actual": None} in drift  # fmt: skip
    finally:
        await ibsim_console(fabric, f'ReLink "{node}"[1]')
    # Back on the fabric: once OpenSM swept it, the port is found again.
    await fabric.sighup()
    await api.until("/api/v1/drift", lambda d: not any(e["kind"] == "absent_member" for e in d), 30)


async def test_lost_mads_are_retried_without_false_drift(api: Api, fabric: SimFabric) -> None:
    await _tenant(api, PORTS[1:8], [])
    lossy = [n.name for n in TOPOLOGY.hcas()[1:8]]
    before = await (await api.http.get("/metrics")).text()
    try:
        for name in lossy:  # drop 30 % of the P_KeyTable SMPs to these nodes
            await ibsim_console(fabric, f'Error "{name}" 30 22')
        for _ in range(4):
            await asyncio.sleep(INTERVAL_S)
            assert await api.call("GET", "/api/v1/drift") == []
    finally:
        for name in lossy:
            await ibsim_console(fabric, f'Error "{name}" 0')
    after = await (await api.http.get("/metrics")).text()
    assert _counter(after, "pkeyd_mad_timeouts_total") > _counter(
        before, "pkeyd_mad_timeouts_total"
    )


def _counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")
