"""How long a UFM client waits, and whether last_updated is ever early.

`pkeyd serve` (verification on, defaults) on a simulated fat tree. Each
change is the call ib-kubernetes makes for a pod (POST /ufmRest/resources/pkeys,
index0, ip_over_ib, full); then, side by side:
- the port: poll its PKey table (smpquery) until the PKey shows;
- the client: poll last_updated until it reaches the second of the call,
  as ib-kubernetes does with the Date of a HEAD of ufm_version.
Printed: both delays (median, max); and, read from the port the moment the
client saw last_updated pass its call, how often the table did not yet hold
the PKey (must be 0).

Run: .venv/bin/python -m bench.ufm_last_updated --changes 20
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from pkeyd.sim.daemon import DaemonProcess
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.pkeys import pkey_membership, read_pkey_tables
from pkeyd.sim.topology import fat_tree

PKEY = 0x0A12
GO_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


async def _server_time(http: aiohttp.ClientSession) -> datetime:
    async with http.head("/ufmRest/app/ufm_version") as resp:
        date = resp.headers["Date"]
    return datetime.strptime(date, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC)


async def _last_updated(http: aiohttp.ClientSession) -> datetime | None:
    async with http.get("/ufmRest/resources/pkeys/last_updated") as resp:
        raw = (await resp.json())["last_updated"]
    if raw is None:
        return None
    return datetime.strptime(raw, "%a %b %d %H:%M:%S UTC %Y").replace(tzinfo=UTC)


async def _port_has(fabric: SimFabric, guid: int) -> float:
    while True:
        tables = await read_pkey_tables(fabric, [guid], concurrency=1)
        if pkey_membership(tables[guid], PKEY) == "full":
            return time.perf_counter()


async def _client_sees(http: aiohttp.ClientSession, since: datetime) -> float:
    while True:
        stamp = await _last_updated(http)
        if stamp is not None and stamp >= since:
            return time.perf_counter()
        await asyncio.sleep(0.05)


async def _held(fabric: SimFabric, guid: int) -> bool:
    tables = await read_pkey_tables(fabric, [guid], concurrency=1)
    return pkey_membership(tables[guid], PKEY) == "full"


async def _one(
    http: aiohttp.ClientSession, fabric: SimFabric, guid: int
) -> tuple[float, float, bool]:
    previous = await _last_updated(http)
    since = await _server_time(http)
    while previous is not None and since <= previous:  # a new second, as in the e2e test
        await asyncio.sleep(0.05)
        since = await _server_time(http)
    body = (
        '{"pkey": "0x0A12", "index0": true, "ip_over_ib": true, "membership": "full", '
        f'"guids": ["{guid:016x}"]}}'
    )
    async with http.post("/ufmRest/resources/pkeys", data=body.encode(), headers=GO_HEADERS) as r:
        assert r.status == 200, await r.text()
    answered = time.perf_counter()
    port_task = asyncio.create_task(_port_has(fabric, guid))
    seen = await asyncio.wait_for(_client_sees(http, since), 60)
    held = await _held(fabric, guid)
    on_port = await asyncio.wait_for(port_task, 60)
    return on_port - answered, seen - answered, held


async def bench(hcas: int, changes: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-bench-ufm-"))
    try:
        async with SimFabric(fat_tree(hcas), workdir) as fabric:
            ports = fabric.topology.hca_port_guids()[1:]
            if len(ports) < changes:
                raise SystemExit(f"{hcas} HCAs give {len(ports)} ports, fewer than {changes}")
            daemon_dir = workdir / "daemon"
            daemon_dir.mkdir()
            async with (
                DaemonProcess(fabric, daemon_dir, "--mad-retries", "10") as daemon,
                aiohttp.ClientSession(daemon.base_url) as http,
            ):
                for _ in range(600):  # until the first pass is verified
                    if await _last_updated(http) is not None:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise SystemExit("the fabric was never verified")
                port_s, client_s, early = [], [], 0
                for guid in ports[:changes]:
                    on_port, seen, held = await _one(http, fabric, guid)
                    port_s.append(on_port)
                    client_s.append(seen)
                    early += not held
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"fabric: fat tree of {hcas} HCAs; {changes} pod-style adds through /ufmRest")
    print(
        f"PKey on the port after the 200:        median {statistics.median(port_s):.3f} s, "
        f"max {max(port_s):.3f} s"
    )
    print(
        f"last_updated past the call after 200:  median {statistics.median(client_s):.3f} s, "
        f"max {max(client_s):.3f} s"
    )
    print(f"port without the PKey when last_updated had passed: {early} of {changes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hcas", type=int, default=64)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(bench(args.hcas, args.changes))


if __name__ == "__main__":
    main()
