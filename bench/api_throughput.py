"""API throughput: durable single-member writes, reads, and bulk adds of 100,000 GUIDs.

A real `pkeyd serve` (its own process, SQLite with synchronous=FULL, reload
by a no-op command, no fabric reader) on a real socket; 50 concurrent
clients in this process on keep-alive connections (aiohttp). Measured:
- idle: the daemon's CPU over 3 s with no request (its periodic work);
- writes: each client adds one new GUID per request to its own partition
  (POST .../members, answered with the whole partition);
- reads: each client GETs its partition;
- the same writes again with `Prefer: return=minimal` (answered 204, no
  document), which shows what serialising the partition costs;
- the writes and the reads again at the target rates, on a fixed schedule,
  each latency counted from when its request was due;
- bulk: one POST .../members with 100,000 GUIDs to a new partition, three
  times (the verdict by the median).
Each phase prints the CPU a request cost pkeyd, its event loop's thread and
the clients, and the share of a core that thread used: pkeyd's ceiling.
Each phase starts when pkeyd has applied every change so far. For scale,
the same clients then drive bench.floor_server (aiohttp alone, answering a
document as large as pkeyd's from memory) right after pkeyd's closed-loop
writes and reads; and a fixed piece of Python is timed before, between and
after, since this shared machine's speed varies.
Targets: >= 1,000 writes/s, >= 5,000 reads/s, p99 < 50 ms each, bulk < 3 s.

Run: make bench   (or .venv/bin/python -m bench.api_throughput --writes 200 --reads 1000)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from bench.httpclient import Connection, request
from pkeyd.sim.daemon import free_port

CLIENTS = 50
MINIMAL = {"Prefer": "return=minimal"}
BULK = 100_000
BULK_RUNS = 3  # the verdict goes by their median
IDLE_S = 3.0  # how long the daemon's idle CPU is measured


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
    try:
        await _answering(port, "/healthz")
    except SystemExit:
        proc.kill()
        raise SystemExit(f"pkeyd did not start; see {workdir}/pkeyd.log") from None
    return proc


async def _answering(port: int, path: str) -> None:
    """Wait (30 s at most) until the server on `port` answers GET `path` with 200."""
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise SystemExit(f"nothing answered on port {port}")


def _cpu_s(pid: int, *, main_thread: bool = False) -> float:
    """CPU seconds (user + system) a process, or its main thread, has used so far (Linux /proc)."""
    stat = Path(f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat")
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _guid(client: int, i: int) -> str:
    return f"0x0002c9{client:02x}{i:08x}"


def _quantile(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Request = Callable[[Connection, int, int], Awaitable[None]]


async def _settled(http: aiohttp.ClientSession) -> None:
    """Wait until pkeyd has applied every change so far (no pass left from the last phase)."""
    for _ in range(600):
        async with http.get("/api/v1/status") as resp:
            if not (await resp.json())["pending"]:
                return
        await asyncio.sleep(0.05)
    raise SystemExit("pkeyd did not apply the changes within 30 s")


async def _load(
    connections: list[Connection], per_client: int, request: Request
) -> tuple[float, list[float]]:
    """Closed loop: each client sends its next request when the last is answered."""
    latencies: list[float] = []

    async def client(c: int) -> None:
        for i in range(per_client):
            started = time.perf_counter()
            await request(connections[c], c, i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(len(connections))))
    return time.perf_counter() - started, latencies


async def _paced(
    connections: list[Connection], rate: float, seconds: float, request: Request
) -> tuple[float, list[float]]:
    """Open loop: the clients together offer `rate` requests/s, on a fixed schedule.

    Each latency counts from the time the request was due, not from when it
    could be sent, so a stall shows in every request it delayed.
    """
    clients = len(connections)
    interval = clients / rate
    per_client = int(seconds * rate / clients)
    latencies: list[float] = []
    start = time.perf_counter() + 0.05

    async def client(c: int) -> None:
        for i in range(per_client):
            due = start + i * interval + c * interval / clients
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await request(connections[c], c, i)
            latencies.append(time.perf_counter() - due)

    await asyncio.gather(*(client(c) for c in range(clients)))
    return time.perf_counter() - start, latencies


# A phase's wall time, latencies, and CPU seconds: pkeyd, its event loop's
# thread (the main one), and the clients.
Phase = tuple[float, list[float], tuple[float, float, float]]


def _report(label: str, phase: Phase, target_rate: float | None) -> None:
    wall, latencies, cpu = phase
    rate = len(latencies) / wall
    p50, p99 = _quantile(latencies, 0.50) * 1000, _quantile(latencies, 0.99) * 1000
    verdict = ""
    if target_rate is not None:
        verdict = f" ({'met' if rate >= target_rate else 'MISSED'}, >= {target_rate:,.0f}/s)"
    p99_ok = "met" if p99 < 50 else "MISSED"
    print(
        f"  {label}: {len(latencies)} in {wall:.2f} s = {rate:,.0f}/s{verdict}; "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({p99_ok}, < 50 ms)"
    )
    server, loop, client = (c / len(latencies) * 1e6 for c in cpu)
    print(f"    CPU per request: pkeyd {server:.0f} us (its event loop's thread {loop:.0f} us, "
          f"{cpu[1] / wall:.2f} of a core), the clients {client:.0f} us")  # fmt: skip


class _Cpu:
    """CPU seconds of a server, of its main thread and of this process since the last call."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._last = self._now()

    def _now(self) -> tuple[float, float, float]:
        pid = self._pid
        return _cpu_s(pid), _cpu_s(pid, main_thread=True), time.process_time()

    def lap(self) -> tuple[float, float, float]:
        now = self._now()
        spent = (now[0] - self._last[0], now[1] - self._last[1], now[2] - self._last[2])
        self._last = now
        return spent


async def _bulk(http: aiohttp.ClientSession, prefix: int) -> tuple[float, int]:
    """One request adding BULK new GUIDs to a new partition: seconds, members answered."""
    async with http.post("/api/v1/partitions", json={"name": f"bulk-{prefix:02x}"}) as resp:
        pkey = (await resp.json())["pkey"]
    await _settled(http)
    # The clock runs from the request's first byte sent to the answer's last
    # byte received: encoding the request and decoding the answer are the
    # client's work.
    members = json.dumps({"members": [{"guid": _guid(prefix, i)} for i in range(BULK)]})
    started = time.perf_counter()
    async with http.post(f"/api/v1/partitions/{pkey}/members", data=members,
                         headers={"Content-Type": "application/json"}) as resp:  # fmt: skip
        answer = await resp.read()
    seconds = time.perf_counter() - started
    assert resp.status == 200, answer
    return seconds, len(json.loads(answer)["members"])


async def _floor(document: bytes, method: str, per_client: int) -> Phase:
    """The same closed loop against bench.floor_server answering `document`.

    Run right after the pkeyd phase it is set beside, so that both see the
    shared machine at about the same speed.
    """
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-bench-floor-"))
    (workdir / "document.json").write_bytes(document)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.floor_server", str(port), str(workdir / "document.json"),
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip

    async def send(conn: Connection, c: int, i: int) -> None:
        path = f"/api/v1/partitions/0x{0x100 + c:04x}"
        if method == "GET":
            status, answer = await conn.send(request("GET", path))
        else:
            body = {"members": [{"guid": _guid(c, i)}]}
            status, answer = await conn.send(request("POST", f"{path}/members", body))
        assert status == 200, answer

    try:
        await _answering(port, "/")
        connections = [await Connection.open("127.0.0.1", port) for _ in range(CLIENTS)]
        cpu = _Cpu(proc.pid)
        wall, latencies = await _load(connections, per_client, send)
        for conn in connections:
            conn.close()
        return wall, latencies, cpu.lap()
    finally:
        proc.terminate()
        await proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _run_s(pid: int) -> dict[str, float]:
    """Seconds each live thread of a process has run (/proc schedstat, in nanoseconds).

    Exact where /proc/PID/stat counts 10 ms clock ticks, which at idle
    (tens of milliseconds over IDLE_S) would round the figure by a third.
    """
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            times[task.name] = int((task / "schedstat").read_text().split()[0]) / 1e9
    return times


async def _idle_cpu(pid: int) -> float:
    """CPU seconds a second the daemon spends while no request comes (its periodic work)."""
    started, before = time.monotonic(), _run_s(pid)
    await asyncio.sleep(IDLE_S)
    after = _run_s(pid)
    spent = sum(t - before.get(tid, 0.0) for tid, t in after.items())
    return spent / (time.monotonic() - started)


def _reference_s() -> float:
    """CPU seconds of a fixed piece of Python: how fast the shared machine is right now."""
    started = time.process_time()
    total = 0
    for i in range(2_000_000):
        total += i * i
    assert total > 0
    return time.process_time() - started


async def bench(writes: int, reads: int, paced_s: float) -> None:
    speed = [_reference_s()]
    bulk: list[tuple[float, int]] = []
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-bench-api-"))
    port = free_port()
    proc = await _start(workdir, port)
    written = [0] * CLIENTS  # GUIDs added so far, per client
    document = [b""]  # a partition document as the last write or read got it
    floor: dict[str, Phase] = {}

    def path(c: int) -> str:
        return f"/api/v1/partitions/0x{0x100 + c:04x}"

    async def write(
        conn: Connection, c: int, _: int, headers: dict[str, str] | None = None
    ) -> None:
        body = {"members": [{"guid": _guid(c, written[c])}]}
        written[c] += 1
        status, answer = await conn.send(request("POST", f"{path(c)}/members", body, headers))
        assert status == (204 if headers else 200), answer
        document[0] = answer or document[0]

    async def write_minimal(conn: Connection, c: int, i: int) -> None:
        await write(conn, c, i, MINIMAL)

    async def read(conn: Connection, c: int, _: int) -> None:
        status, answer = await conn.send(request("GET", path(c)))
        assert status == 200, answer
        assert answer, "an empty document"
        document[0] = answer

    results: dict[str, Phase] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(base) as http:
            for c in range(CLIENTS):
                body = {"name": f"bench-{c}", "pkey": f"0x{0x100 + c:04x}"}
                async with http.post("/api/v1/partitions", json=body) as resp:
                    assert resp.status == 201, await resp.text()
            connections = [await Connection.open("127.0.0.1", port) for _ in range(CLIENTS)]
            await _settled(http)
            idle = await _idle_cpu(proc.pid)
            cpu = _Cpu(proc.pid)

            async def phase(run: Awaitable[tuple[float, list[float]]]) -> Phase:
                """Once pkeyd is settled: the phase's wall time, latencies and CPU."""
                await _settled(http)
                cpu.lap()
                return (*await run, cpu.lap())

            results["writes"] = await phase(_load(connections, writes, write))
            floor["writes"] = await _floor(document[0], "POST", writes)
            results["reads"] = await phase(_load(connections, reads, read))
            floor["reads"] = await _floor(document[0], "GET", reads)
            results["minimal"] = await phase(_load(connections, writes, write_minimal))
            results["paced_writes"] = await phase(_paced(connections, 1000, paced_s, write))
            results["paced_reads"] = await phase(_paced(connections, 5000, paced_s, read))
            for conn in connections:
                conn.close()

            speed.append(_reference_s())
            for run in range(BULK_RUNS):
                bulk.append(await _bulk(http, 0xFF - run))
            async with http.get("/api/v1/status") as resp:
                generation = (await resp.json())["desired_generation"]
            async with http.get("/metrics") as resp:
                scraped = _samples(await resp.text())
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"API throughput: pkeyd serve on SQLite (synchronous=FULL), {CLIENTS} keep-alive "
          f"clients, {os.cpu_count()} CPUs shared by server and clients")  # fmt: skip
    print(f" Idle before the first phase: pkeyd used {idle * 1000:.1f} ms of CPU a second "
          f"over {IDLE_S:.0f} s (its periodic work)")  # fmt: skip
    print(" As fast as the clients can go (each sends its next request when answered):")
    _report("single-member writes", results["writes"], 1000)
    _report("reads of one partition", results["reads"], 5000)
    _report("single-member writes, Prefer: return=minimal", results["minimal"], 1000)
    print(" At the target rates (requests due on a fixed schedule; latency from when due):")
    _report("single-member writes offered at 1,000/s", results["paced_writes"], None)
    _report("reads offered at 5,000/s", results["paced_reads"], None)
    median = sorted(s for s, _ in bulk)[len(bulk) // 2]
    verdict = "met" if median < 3 else "MISSED"
    each = ", ".join(f"{s:.2f} s" for s, _ in bulk)
    print(f"  bulk add of {BULK:,} GUIDs in one request, {len(bulk)} times (each to a new "
          f"partition): {each}; median {median:.2f} s ({verdict}, < 3 s); answers list "
          f"{', '.join(f'{n:,}' for _, n in bulk)} members")  # fmt: skip
    print(f"  desired generation after the run: {generation}")
    passes = scraped.get("pkeyd_render_duration_seconds_count", 0.0)
    if passes:
        mean = scraped["pkeyd_render_duration_seconds_sum"] / passes * 1000
        print(f"  reconcile passes meanwhile: {passes:.0f}, render and self-check {mean:.1f} ms "
              "each on average (on the event loop, in slices between requests)")  # fmt: skip
    print(" The HTTP framework alone, for scale: aiohttp answering a partition document as")
    print("  pkeyd's answers were, from memory, to the same clients, right after pkeyd's phase;")
    print("  no store, no auth, no checks")
    for kind, label in (("writes", "single-member POSTs, each body decoded"), ("reads", "GETs")):
        wall, latencies, spent = floor[kind]
        rate, ours = len(latencies) / wall, len(results[kind][1]) / results[kind][0]
        print(f"  {label}: {rate:,.0f}/s, {spent[0] / len(latencies) * 1e6:.0f} us of CPU each; "
              f"pkeyd's {kind} above ran at {ours / rate:.0%} of that rate")  # fmt: skip
    speed.append(_reference_s())
    print(f"  load average at the end (other processes share the CPUs): {os.getloadavg()[0]:.2f}")
    print("  a fixed piece of Python took " + ", ".join(f"{s:.2f}" for s in speed)
          + " CPU seconds before the run, before the bulk adds and after them: "
          "this shared machine's speed meanwhile")  # fmt: skip


def _samples(metrics: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text exposition, by name."""
    found = {}
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            found[name] = float(value)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200, help="writes per client")
    parser.add_argument("--reads", type=int, default=1000, help="reads per client")
    parser.add_argument("--paced", type=float, default=5.0, help="seconds of each paced phase")
    args = parser.parse_args()
    asyncio.run(bench(args.writes, args.reads, args.paced))


if __name__ == "__main__":
    main()
