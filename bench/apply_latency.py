"""Apply latency: from the 2xx of a member add to the PKey visible on the port.

Measured side by side in one run on one simulated 256-HCA fabric:
- floor: write partitions.conf + SIGHUP by hand, then poll the port, which is
  what OpenSM itself costs;
- pkeyd: POST a member over HTTP, then poll the port the same way.
Both poll the port's table with the same SMP read, so both carry the same
polling granularity. Target: pkeyd median <= 1.5 x floor median + 100 ms.

Run: make bench   (or .venv/bin/python -m bench.apply_latency --changes 50)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from pkeyd import logs
from pkeyd.api.app import create_app
from pkeyd.config import Settings
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.pkeys import pkey_membership, read_pkey_tables
from pkeyd.sim.topology import fat_tree

PKEY = 0x0A12


async def _until_visible(fabric: SimFabric, guid: int, membership: str) -> None:
    while True:
        tables = await read_pkey_tables(fabric, [guid], concurrency=1)
        if pkey_membership(tables[guid], PKEY) == membership:
            return


async def _measure(
    changes: int, start_change: Callable[[int], Awaitable[tuple[int, str]]], fabric: SimFabric
) -> list[float]:
    latencies = []
    for i in range(changes):
        guid, membership = await start_change(i)
        started = time.perf_counter()
        await asyncio.wait_for(_until_visible(fabric, guid, membership), 30)
        latencies.append(time.perf_counter() - started)
    return latencies


def _floor_file(members: dict[int, str]) -> str:
    entries = ", ".join(f"0x{g:016x}={m}" for g, m in sorted(members.items()))
    lines = ["Default=0x7fff, ipoib : ALL=limited, SELF=full ;"]
    if entries:
        lines.append(f"floor=0x{PKEY:04x}, ipoib : {entries} ;")
    return "\n".join(lines) + "\n"


async def bench(hcas: int, changes: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-bench-"))
    try:
        async with SimFabric(fat_tree(hcas), workdir) as fabric:
            ports = fabric.topology.hca_port_guids()[1:]
            if len(ports) < changes:
                raise SystemExit(f"{hcas} HCAs give {len(ports)} ports, fewer than {changes}")

            floor_members: dict[int, str] = {}

            async def floor_change(i: int) -> tuple[int, str]:
                floor_members[ports[i]] = "full"
                fabric.partitions_conf.write_text(_floor_file(floor_members))
                os.kill(int(fabric.pid_file.read_text()), 1)  # SIGHUP
                return ports[i], "full"

            floor = await _measure(changes, floor_change, fabric)

            settings = Settings(
                db_url=f"sqlite+aiosqlite:///{workdir}/pkeyd.db",
                listen_port=0,
                partitions_conf=fabric.partitions_conf,
                opensm_pid_file=fabric.pid_file,
                state_dir=workdir / "state",
                fabric_reader="off",
            )
            runner = web.AppRunner(create_app(settings))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            try:
                async with aiohttp.ClientSession(site.name) as http:
                    resp = await http.post(
                        "/api/v1/partitions", json={"name": "bench", "pkey": f"0x{PKEY:04x}"}
                    )
                    assert resp.status == 201, await resp.text()
                    # pkeyd's first pass replaces the floor file: start from there.
                    await asyncio.sleep(1.0)

                    async def pkeyd_change(i: int) -> tuple[int, str]:
                        guid = ports[-1 - i]  # ports the floor run did not touch
                        body = {"members": [{"guid": f"0x{guid:016x}", "membership": "full"}]}
                        r = await http.post(f"/api/v1/partitions/0x{PKEY:04x}/members", json=body)
                        assert r.status == 200, await r.text()
                        return guid, "full"

                    ours = await _measure(changes, pkeyd_change, fabric)
            finally:
                await runner.cleanup()
            parse_errors = fabric.parse_errors()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def p95(xs: list[float]) -> float:
        return statistics.quantiles(xs, n=20)[-1]

    f_med, o_med = statistics.median(floor), statistics.median(ours)
    limit = 1.5 * f_med + 0.100
    print(f"apply latency on a {hcas}-HCA simulated fabric, {changes} changes each")
    for label, xs in (("floor (write file + SIGHUP)", floor), ("pkeyd (HTTP 2xx -> port)", ours)):
        median_ms, p95_ms = statistics.median(xs) * 1000, p95(xs) * 1000
        print(f"  {label:28} median {median_ms:7.1f} ms  p95 {p95_ms:7.1f} ms")
    print(f"  ratio pkeyd/floor (median):  {o_med / f_med:.2f}x")
    verdict = "met" if o_med <= limit else "MISSED"
    print(f"  target median <= 1.5 x floor + 100 ms = {limit * 1000:.1f} ms: {verdict}")
    print(f"  OpenSM PARSE ERRORs during the run: {len(parse_errors)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hcas", type=int, default=256)
    parser.add_argument("--changes", type=int, default=50)
    args = parser.parse_args()
    logs.configure("warning")
    asyncio.run(bench(args.hcas, args.changes))


if __name__ == "__main__":
    main()
