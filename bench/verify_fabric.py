"""Verify pass: every PKey table of a 256-HCA fabric, read in process vs. by smpquery.

Side by side, interleaved round by round on one simulated fabric (so machine
noise hits every method alike), with partitions applied so the tables are
not all default:

- reader: ``SmpFabricReader.read_all()`` in a long-lived process (``python
  -m pkeyd.fabric.probe --serve``), as a daemon would run it: discovery plus
  NodeInfo, PortInfo and the whole PKey table of every port; once more with
  NodeDescription too (``--node-desc``). Also shown: the one-shot CLI, whose
  wall time adds Python start-up, imports and umad2sim's attach to ibsim.
- loop: ``smpquery pkeys LID PORT`` for every CA port, one after the other
  from a shell loop, as a naive operator script would (LIDs looked up once
  beforehand with ``ibnetdiscover -p``, not counted).
- concurrent: ``pkeyd.sim.pkeys.read_pkey_tables`` (6 smpquery at a time), for
  reference.

Target: loop median >= 20 x reader median.

Run: /tmp/venv/bin/python -m bench.verify_fabric [--hcas 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pkeyd
from pkeyd.fabric.model import FabricSnapshot
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.pkeys import read_pkey_tables, wait_for_pkeys
from pkeyd.sim.topology import fat_tree

PKEY = 0x0A12
TARGET = 20.0
STREAM_LIMIT = 64 * 1024 * 1024
SETTLE_S = 0.5


def _env(fabric: SimFabric) -> dict[str, str]:
    root = str(Path(pkeyd.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": root, **fabric.env}


class Probe:
    """One long-lived reader process, driven over JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @classmethod
    async def start(cls, fabric: SimFabric, *args: str) -> Probe:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pkeyd.fabric.probe",
            "--serve",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=_env(fabric),
            cwd=fabric.tool_cwd,
            limit=STREAM_LIMIT,  # a whole snapshot is one JSON line
        )
        probe = cls(proc)
        await probe._reply()
        return probe

    async def read_all(self) -> FabricSnapshot:
        assert self._proc.stdin is not None
        self._proc.stdin.write(b'{"op": "read_all"}\n')
        await self._proc.stdin.drain()
        return FabricSnapshot.from_json(await self._reply())

    async def _reply(self) -> Any:
        assert self._proc.stdout is not None
        reply = json.loads(await asyncio.wait_for(self._proc.stdout.readline(), 60))
        if not reply["ok"]:
            raise RuntimeError(f"probe: {reply['error']}")
        return reply["result"]

    async def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        await asyncio.wait_for(self._proc.wait(), 10)


async def _one_shot(fabric: SimFabric) -> tuple[float, FabricSnapshot]:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pkeyd.fabric.probe",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        env=_env(fabric),
        cwd=fabric.tool_cwd,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"probe --json exited {proc.returncode}")
    return time.perf_counter() - started, FabricSnapshot.from_json(json.loads(out))


async def _smpquery_loop(fabric: SimFabric, script: Path) -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(script),
        env={**os.environ, **fabric.env},
        cwd=fabric.tool_cwd,
        stdout=asyncio.subprocess.DEVNULL,
    )
    if await proc.wait() != 0:
        raise RuntimeError("smpquery loop failed")
    return time.perf_counter() - started


def _line(label: str, xs: list[float]) -> str:
    ms = [x * 1000 for x in xs]
    return (
        f"  {label:34} median {statistics.median(ms):8.1f} ms"
        f"  (min {min(ms):7.1f}, max {max(ms):7.1f})"
    )


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def bench(hcas: int, rounds: int) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-bench-verify-"))
    topo = fat_tree(hcas)
    guids = topo.hca_port_guids()
    members = ", ".join(
        f"0x{g:016x}={'full' if i % 3 else 'limited'}" for i, g in enumerate(guids[1::4])
    )
    conf = f"Default=0x7fff : ALL=full ;\nbench=0x{PKEY:04x} : {members} ;\n"
    times: dict[str, list[float]] = {k: [] for k in ("reader", "desc", "cli", "loop", "conc")}
    load_before = _load()
    try:
        async with SimFabric(topo, workdir) as fabric:
            fabric.partitions_conf.write_text(conf)
            await fabric.sighup()
            await wait_for_pkeys(fabric, lambda t: PKEY | 0x8000 in t[guids[5]], [guids[5]])
            lids = await fabric.port_lids()
            ports = {guid: port for _, port, guid in topo.hca_ports()}
            script = workdir / "loop.sh"
            script.write_text(
                "while read lid port; do smpquery pkeys $lid $port; done <<'EOF'\n"
                + "".join(f"{lids[g]} {ports[g]}\n" for g in guids)
                + "EOF\n"
            )
            probe = await Probe.start(fabric)
            named = await Probe.start(fabric, "--node-desc")
            reference = await read_pkey_tables(fabric)
            for reader in (probe, named):  # warm-up, and the proof both read the same
                first = await reader.read_all()
                if first.pkey_tables() != reference or first.failures:
                    raise SystemExit("reader and smpquery disagree - not a valid comparison")
            mads = {"reader": 0, "desc": 0}
            for _ in range(rounds):
                # Settle before each method: exiting tools detach from ibsim late.
                for key, reader in (("reader", probe), ("desc", named)):
                    await asyncio.sleep(SETTLE_S)
                    snap = await reader.read_all()
                    times[key].append(snap.duration_s)
                    mads[key] = snap.mad_stats.sent
                await asyncio.sleep(SETTLE_S)
                times["cli"].append((await _one_shot(fabric))[0])
                await asyncio.sleep(SETTLE_S)
                times["loop"].append(await _smpquery_loop(fabric, script))
                await asyncio.sleep(SETTLE_S)
                started = time.perf_counter()
                await read_pkey_tables(fabric)
                times["conc"].append(time.perf_counter() - started)
            await probe.close()
            await named.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    median = {k: statistics.median(v) for k, v in times.items()}
    ratio = median["loop"] / median["reader"]
    print(f"verify pass on a {hcas}-HCA simulated fabric ({len(guids)} CA ports), {rounds} rounds")
    print(f"  load average before/after: {load_before} / {_load()} ({os.cpu_count()} CPUs)")
    print(_line(f"reader, in process ({mads['reader']} MADs)", times["reader"]))
    print(_line(f"  + NodeDescription ({mads['desc']} MADs)", times["desc"]))
    print(_line("reader, one-shot CLI (wall)", times["cli"]))
    print(_line("smpquery pkeys, sequential loop", times["loop"]))
    print(_line("smpquery, 6 concurrent (sim.pkeys)", times["conc"]))
    print(f"  loop / reader (median):            {ratio:6.1f} x")
    print(f"  loop / reader + NodeDescription:   {median['loop'] / median['desc']:6.1f} x")
    print(f"  loop / one-shot CLI (median):      {median['loop'] / median['cli']:6.1f} x")
    met = ratio >= TARGET
    print(f"  target loop / reader >= {TARGET:.0f} x: {'met' if met else 'MISSED'}")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hcas", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(bench(args.hcas, args.rounds)) else 1)


if __name__ == "__main__":
    main()
