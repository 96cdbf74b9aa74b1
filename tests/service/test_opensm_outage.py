"""OpenSM stops and starts again while a client streams writes.

Every write is answered 2xx during the outage; status and metrics say the
change is pending because OpenSM cannot be reached (pkeyd_opensm_up 0); once
OpenSM is back everything is applied and verified on the ports. The time
from OpenSM's SUBNET UP to "applied" and to "verified" is printed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pkeyd.sim.daemon import DaemonProcess
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.pkeys import pkey_membership, read_pkey_tables
from tests.service.conftest import TOPOLOGY, opensm_parse_errors, sample

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

PKEYS = (0x0D01, 0x0D02)
GUIDS = TOPOLOGY.hca_port_guids()
OUTAGE_S = 3.0


async def _json(http: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> Any:
    async with http.request(method, path, **kw) as resp:
        assert resp.status < 300, (resp.status, await resp.text())
        return await resp.json() if resp.content_type == "application/json" else None


async def _until(
    http: aiohttp.ClientSession, check: Any, within_s: float = 30.0, every_s: float = 0.05
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        status: dict[str, Any] = await _json(http, "GET", "/api/v1/status")
        if check(status):
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(every_s)


async def test_writes_during_an_opensm_outage_apply_once_it_is_back(
    service_fabric: SimFabric, tmp_path: Path
) -> None:
    fabric = service_fabric
    flags = ["--verify-interval", "1", "--verify-settle", "3", "--mad-retries", "10"]
    flags += ["--retry-max", "1", "--resync-interval", "5"]
    writes = [(pkey, guid) for pkey in PKEYS for guid in GUIDS]
    acked: list[tuple[int, int]] = []
    failures: list[str] = []
    done_writing = asyncio.Event()

    async def stream(http: aiohttp.ClientSession) -> None:
        for pkey, guid in writes:
            body = {"members": [{"guid": f"0x{guid:016x}", "membership": "full"}]}
            try:
                async with http.post(f"/api/v1/partitions/0x{pkey:04x}/members", json=body) as r:
                    await r.read()
                    if r.status == 200:
                        acked.append((pkey, guid))
                    else:
                        failures.append(f"{r.status}: {await r.text()}")
            except aiohttp.ClientError as exc:
                failures.append(repr(exc))
            await asyncio.sleep(0.05)
        done_writing.set()

    async with (
        DaemonProcess(fabric, tmp_path, *flags) as daemon,
        aiohttp.ClientSession(daemon.base_url) as http,
    ):
        for pkey in PKEYS:
            await _json(
                http, "POST", "/api/v1/partitions",
                json={"name": f"outage{pkey:04x}", "pkey": f"0x{pkey:04x}"},
            )  # fmt: skip
        await _until(http, lambda s: s["verified_generation"] == s["desired_generation"])
        writer = asyncio.create_task(stream(http))
        await asyncio.sleep(1.0)

        await fabric.stop_opensm()
        down_at = time.monotonic()
        acked_before = len(acked)
        status = await _until(
            http, lambda s: s["pending"] and "OpenSM" in (s["last_error"] or ""), 10.0
        )
        metrics = await (await http.get("/metrics")).text()
        assert sample(metrics, "pkeyd_opensm_up") == 0.0
        assert status["last_reload"]["result"] == "error"
        pending_error = status["last_error"]
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        accepted_while_down = len(acked) - acked_before

        await fabric.start_opensm()  # returns at SUBNET UP
        up_at = time.monotonic()
        outage_s = up_at - down_at
        target = (await _json(http, "GET", "/api/v1/status"))["desired_generation"]
        await _until(http, lambda s: (s["applied_generation"] or 0) >= target)
        applied_s = time.monotonic() - up_at
        await _until(http, lambda s: (s["verified_generation"] or 0) >= target, every_s=0.1)
        verified_s = time.monotonic() - up_at
        metrics = await (await http.get("/metrics")).text()
        assert sample(metrics, "pkeyd_opensm_up") == 1.0

        await asyncio.wait_for(done_writing.wait(), 60)
        await writer
        final = await _until(
            http, lambda s: s["verified_generation"] == s["desired_generation"], every_s=0.1
        )
        stored = {
            (pkey, int(m["guid"], 16))
            for pkey in PKEYS
            for m in (await _json(http, "GET", f"/api/v1/partitions/0x{pkey:04x}"))["members"]
        }
    tables = await read_pkey_tables(fabric, GUIDS)

    print(
        f"\nOpenSM outage: down {outage_s:.1f} s, {accepted_while_down} of {len(writes)} "
        f"streamed writes answered 200 meanwhile (all {len(acked)} were; status said "
        f"pending: {pending_error!r}); after SUBNET UP "
        f"generation {target} was applied in {applied_s:.2f} s and verified on the ports "
        f"in {verified_s:.2f} s; final generation {final['verified_generation']} verified"
    )
    assert failures == []
    assert len(acked) == len(writes)
    assert accepted_while_down > 0
    assert stored == set(writes)
    for pkey, guid in writes:
        assert pkey_membership(tables[guid], pkey) == "full"
    assert opensm_parse_errors(fabric) == []
