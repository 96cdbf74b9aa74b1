"""API throughput: durable single-member writes, reads, and one bulk add of 100,000 GUIDs.

A real `pkeyd serve` (its own process, SQLite with synchronous=FULL, reload
by a no-op command, no fabric reader) on a real socket; 50 concurrent
clients in this process on keep-alive connections (aiohttp). Measured:
- writes: each client adds one new GUID per request to its own partition
  (POST .../members, answered with the whole partition);
- reads: each client GETs its partition;
- the same writes again with `Prefer: return=minimal` (answered 204, no
  document), which shows what serialising the partition costs;
- bulk: one POST .../members with 100,000 GUIDs, to a new partition.
Targets: >= 1,000 writes/s, >= 5,000 reads/s, p99 < 50 ms each, bulk < 3 s.

Run: make bench   (or .venv/bin/python -m bench.api_throughput --writes 200 --reads 1000)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from pkeyd.sim.daemon import free_port

CLIENTS = 50
MINIMAL = {"Prefer": "return=minimal"}
BULK = 100_000


def _config(workdir: Path, port: int) -> Path:
    path = workdir / "pkeyd.toml"
    path.write_text(
        f'db_url = "sqlite+aiosqlite:///{workdir}/pkeyd.db"\n'
        f'listen_host = "127.0.0.1"\nlisten_port = {port}\n'
        f'partitions_conf = "{workdir}/partitions.conf"\n'
        f'state_dir = "{workdir}/state"\n'
        'reload_command = ["true"]\n'
        'fabric_reader = "off"\n'
        'log_level = "warning"\nlog_format = "json"\n'
        # Room for the bulk request: 100,000 members are about 5.5 MB of JSON.
        "max_body_bytes = 16777216\n"
    )
    return path


async def _start(workdir: Path, port: int) -> asyncio.subprocess.Process:
    log = (workdir / "pkeyd.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pkeyd", "serve", "--config", str(_config(workdir, port)),
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip
    log.close()
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return proc
            await asyncio.sleep(0.05)
    proc.kill()
    raise SystemExit(f"pkeyd did not start; see {workdir}/pkeyd.log")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _guid(client: int, i: int) -> str:
    return f"0x0002c9{client:02x}{i:08x}"


def _quantile(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _load(
    clients: int, per_client: int, request: Callable[[int, int], Awaitable[None]]
) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def client(c: int) -> None:
        for i in range(per_client):
            started = time.perf_counter()
            await request(c, i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return time.perf_counter() - started, latencies


def _report(
    label: str, wall: float, latencies: list[float], target_rate: float, cpu: tuple[float, float]
) -> None:
    rate = len(latencies) / wall
    p50, p99 = _quantile(latencies, 0.50) * 1000, _quantile(latencies, 0.99) * 1000
    rate_ok = "met" if rate >= target_rate else "MISSED"
    p99_ok = "met" if p99 < 50 else "MISSED"
    print(
        f"  {label}: {len(latencies)} in {wall:.2f} s = {rate:,.0f}/s "
        f"({rate_ok}, >= {target_rate:,.0f}/s); "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({p99_ok}, < 50 ms)"
    )
    server, client = (c / len(latencies) * 1e6 for c in cpu)
    print(f"    CPU per request: pkeyd {server:.0f} us, the clients {client:.0f} us")


async def bench(writes: int, reads: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-bench-api-"))
    port = free_port()
    proc = await _start(workdir, port)
    try:
        connector = aiohttp.TCPConnector(limit=CLIENTS)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(base, connector=connector) as http:
            for c in range(CLIENTS):
                body = {"name": f"bench-{c}", "pkey": f"0x{0x100 + c:04x}"}
                async with http.post("/api/v1/partitions", json=body) as resp:
                    assert resp.status == 201, await resp.text()

            async def write(c: int, i: int) -> None:
                body = {"members": [{"guid": _guid(c, i)}]}
                async with http.post(f"/api/v1/partitions/0x{0x100 + c:04x}/members",
                                     json=body) as resp:  # fmt: skip
                    assert resp.status == 200, await resp.text()
                    await resp.read()

            async def write_minimal(c: int, i: int) -> None:
                body = {"members": [{"guid": _guid(c, writes + i)}]}
                async with http.post(f"/api/v1/partitions/0x{0x100 + c:04x}/members",
                                     json=body, headers=MINIMAL) as resp:  # fmt: skip
                    assert resp.status == 204, await resp.text()

            async def read(c: int, i: int) -> None:
                async with http.get(f"/api/v1/partitions/0x{0x100 + c:04x}") as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()

            # After the warm-up (creating the partitions): CPU of each phase alone.
            cpu = (_cpu_s(proc.pid), time.process_time())
            write_wall, write_lat = await _load(CLIENTS, writes, write)
            after_writes = (_cpu_s(proc.pid), time.process_time())
            read_wall, read_lat = await _load(CLIENTS, reads, read)
            after_reads = (_cpu_s(proc.pid), time.process_time())
            minimal_wall, minimal_lat = await _load(CLIENTS, writes, write_minimal)
            after_minimal = (_cpu_s(proc.pid), time.process_time())
            write_cpu = (after_writes[0] - cpu[0], after_writes[1] - cpu[1])
            read_cpu = (after_reads[0] - after_writes[0], after_reads[1] - after_writes[1])
            minimal_cpu = (after_minimal[0] - after_reads[0], after_minimal[1] - after_reads[1])

            async with http.post("/api/v1/partitions", json={"name": "bulk"}) as resp:
                pkey = (await resp.json())["pkey"]
            members = [{"guid": _guid(0xFF, i)} for i in range(BULK)]
            started = time.perf_counter()
            async with http.post(f"/api/v1/partitions/{pkey}/members",
                                 json={"members": members}) as resp:  # fmt: skip
                assert resp.status == 200, await resp.text()
                answered = len((await resp.json())["members"])
            bulk_s = time.perf_counter() - started
            async with http.get("/api/v1/status") as resp:
                generation = (await resp.json())["desired_generation"]
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"API throughput: pkeyd serve on SQLite (synchronous=FULL), {CLIENTS} keep-alive "
          f"clients, {os.cpu_count()} CPUs shared by server and clients")  # fmt: skip
    _report("single-member writes", write_wall, write_lat, 1000, write_cpu)
    _report("reads of one partition", read_wall, read_lat, 5000, read_cpu)
    _report(
        "single-member writes, Prefer: return=minimal",
        minimal_wall,
        minimal_lat,
        1000,
        minimal_cpu,
    )
    verdict = "met" if bulk_s < 3 else "MISSED"
    print(f"  bulk add of {BULK:,} GUIDs in one request: {bulk_s:.2f} s ({verdict}, < 3 s); "
          f"answer lists {answered:,} members")  # fmt: skip
    print(f"  desired generation after the run: {generation}")
    print(f"  load average at the end (other processes share the CPUs): {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200, help="writes per client")
    parser.add_argument("--reads", type=int, default=1000, help="reads per client")
    args = parser.parse_args()
    asyncio.run(bench(args.writes, args.reads))


if __name__ == "__main__":
    main()
