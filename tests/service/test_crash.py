"""kill -9 at random moments while a client streams writes: nothing acknowledged is lost.

pkeyd runs as `pkeyd serve` on the simulated fabric and reloads the real
OpenSM by SIGHUP. A client streams 640 single-member writes (10 partitions x
64 port GUIDs) over 4 connections, retrying on connection errors; pkeyd is
SIGKILLed 20 times at random moments and restarted each time. A reader thread
polls partitions.conf the whole time and checks every version it sees:
OpenSM's parser (pkeyd's exact copy) finds nothing fatal, and it is a
complete pkeyd render (the header's SHA-256 matches the body). Afterwards
every acknowledged write is in the store, and the fabric's PKey tables hold
exactly the final desired state, verified by pkeyd itself.

The killed daemons run with the SMP reader off: a libumad2sim client killed
while it connects to ibsim can take the simulator down (see pkeyd.sim.fabric),
which would test ibsim, not pkeyd. The final daemon verifies with it on.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pkeyd.opensm.parse import parse
from pkeyd.opensm.render import is_intact_render, rendered_generation
from pkeyd.opensm.writer import TEMP_MARK
from pkeyd.sim.daemon import DaemonProcess
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.pkeys import pkey_membership, read_pkey_tables
from tests.service.conftest import TOPOLOGY, opensm_parse_errors

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

KILLS = 20
PKEYS = [0x0C01 + i for i in range(10)]
GUIDS = TOPOLOGY.hca_port_guids()
WORKERS = 4
SEED = random.randrange(1 << 30)


@dataclass(frozen=True)
class Write:
    pkey: int
    guid: int
    membership: str


@dataclass
class FileWatch:
    """What the reader thread saw of partitions.conf."""

    reads: int = 0
    versions: set[str] = field(default_factory=set)
    generations: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def _watch_file(path: Path, stop: threading.Event, seen: FileWatch) -> None:
    while not stop.wait(0.002):
        try:
            data = path.read_bytes()
        except OSError as exc:  # missing even for an instant is a failure
            seen.problems.append(f"read failed: {exc}")
            continue
        seen.reads += 1
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen.versions:
            continue
        seen.versions.add(digest)
        result = parse(data)
        if result.fatal is not None:
            seen.problems.append(f"fatal for OpenSM: {result.fatal.message}")
        if not is_intact_render(data):
            seen.problems.append(f"not a complete render ({len(data)} bytes)")
        generation = rendered_generation(data.decode("ascii", "replace"))
        if generation is not None:
            seen.generations.add(generation)


def _guid(g: int) -> str:
    return f"0x{g:016x}"


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with http.request(method, url, **kw) as resp:
        assert resp.status < 300, (resp.status, await resp.text())
        return await resp.json() if resp.content_type == "application/json" else None


async def test_sigkill_at_random_moments_loses_nothing(
    service_fabric: SimFabric, tmp_path: Path
) -> None:
    fabric = service_fabric
    rng = random.Random(SEED)
    flags = ("--fabric-reader", "off", "--retry-max", "0.5", "--resync-interval", "5")
    daemon = DaemonProcess(fabric, tmp_path, *flags)
    await daemon.start()
    base = daemon.base_url
    writes = [
        Write(pkey, guid, "full" if (i + j) % 2 == 0 else "limited")
        for i, pkey in enumerate(PKEYS)
        for j, guid in enumerate(GUIDS)
    ]
    acked: dict[tuple[int, int], str] = {}
    errors: list[str] = []
    retried = 0
    kills = 0
    per_cycle = -(-len(writes) // KILLS)
    queue = iter(writes)
    next_cycle = asyncio.Condition()
    stop_reader = threading.Event()
    seen = FileWatch()
    reader: threading.Thread | None = None
    started = time.monotonic()

    async def writer(http: aiohttp.ClientSession) -> None:
        nonlocal retried
        for w in queue:
            # Spread the writes over all the kill cycles.
            async with next_cycle:
                await next_cycle.wait_for(lambda: len(acked) < (kills + 1) * per_cycle)
            body = {"members": [{"guid": _guid(w.guid), "membership": w.membership}]}
            url = f"{base}/api/v1/partitions/0x{w.pkey:04x}/members"
            while True:
                try:
                    async with http.post(url, json=body) as resp:
                        await resp.read()
                        if resp.status == 200:
                            acked[(w.pkey, w.guid)] = w.membership
                            break
                        errors.append(f"{resp.status} for {w}")
                except (aiohttp.ClientConnectionError, TimeoutError):
                    retried += 1  # pkeyd is down: the write was not acknowledged
                await asyncio.sleep(0.05)

    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for pkey in PKEYS:
                await _json(
                    http, "POST", f"{base}/api/v1/partitions",
                    json={"name": f"crash{pkey:04x}", "pkey": f"0x{pkey:04x}"},
                )  # fmt: skip
            await _until_applied(http, base)
            reader = threading.Thread(
                target=_watch_file, args=(fabric.partitions_conf, stop_reader, seen), daemon=True
            )
            reader.start()
            workers = [asyncio.create_task(writer(http)) for _ in range(WORKERS)]
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.05, 0.8))
                await daemon.stop(signal.SIGKILL)
                async with next_cycle:
                    kills += 1
                    next_cycle.notify_all()
                await daemon.start()
            await asyncio.wait_for(asyncio.gather(*workers), 120)
            await _until_applied(http, base)
        assert await daemon.stop() == 0  # SIGTERM: a clean exit
    finally:
        stop_reader.set()
        if reader is not None:
            reader.join(10)
        await daemon.stop(signal.SIGKILL)
    stream_s = time.monotonic() - started

    # pkeyd verifies the final state on the ports with the SMP reader.
    verify = ("--verify-interval", "1", "--verify-settle", "3", "--mad-retries", "10")
    async with (
        DaemonProcess(fabric, tmp_path, *verify, log_name="final.log") as final,
        aiohttp.ClientSession() as http,
    ):
        status = await _until_verified(http, final.base_url)
        stored: dict[tuple[int, int], str] = {}
        for pkey in PKEYS:
            partition = await _json(http, "GET", f"{final.base_url}/api/v1/partitions/0x{pkey:04x}")
            for m in partition["members"]:
                stored[(pkey, int(m["guid"], 16))] = m["membership"]
    tables = await read_pkey_tables(fabric, GUIDS)

    print(
        f"\ncrash test (seed {SEED}): {len(acked)} writes acknowledged, {retried} retried "
        f"after a kill, {kills} SIGKILLs in {stream_s:.1f} s; reader: {seen.reads} reads, "
        f"{len(seen.versions)} versions, generations {min(seen.generations)}-"
        f"{max(seen.generations)}; verified generation {status['verified_generation']}"
    )
    assert kills >= 20
    assert errors == []
    assert len(acked) == len(writes) >= 500
    assert stored == acked  # every acknowledged write, and nothing else
    assert seen.problems == [], seen.problems[:5]
    assert seen.reads > 1000
    # The reader saw the file replaced many times (how many depends on how
    # many writes each reload coalesced, so on the machine's speed).
    assert len(seen.versions) >= KILLS // 2
    for (pkey, guid), membership in acked.items():
        assert pkey_membership(tables[guid], pkey) == membership, (hex(pkey), hex(guid))
    assert opensm_parse_errors(fabric) == []
    assert not list(fabric.partitions_conf.parent.glob(f".*{TEMP_MARK}*"))


async def _until_applied(http: aiohttp.ClientSession, base: str, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while True:
        status = await _json(http, "GET", f"{base}/api/v1/status")
        if status["applied_generation"] == status["desired_generation"]:
            return
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)


async def _until_verified(
    http: aiohttp.ClientSession, base: str, within_s: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        status: dict[str, Any] = await _json(http, "GET", f"{base}/api/v1/status")
        if status["verified_generation"] == status["desired_generation"]:
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.2)
