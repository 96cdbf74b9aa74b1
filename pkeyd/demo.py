"""`pkeyd demo`: the daemon on SQLite against a generated simulated fabric.

Starts ibsim and OpenSM in a temp dir, then `pkeyd serve` as a child process
in the simulator's environment (so it reads the real PKey tables over SMPs),
prints where and how to call it, and shows each generation as the daemon
verifies it on the ports. Ctrl-C stops pkeyd, then OpenSM, then ibsim.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import signal
import tempfile
from pathlib import Path

import aiohttp

from pkeyd.sim.daemon import DaemonProcess
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.topology import fat_tree


async def run_demo(hcas: int, listen: tuple[str, int], *, keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-demo-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"Starting a simulated fat tree of {hcas} HCAs (ibsim + OpenSM) in {workdir} ...")
        async with (
            SimFabric(fat_tree(hcas), workdir) as fabric,
            DaemonProcess(fabric, workdir, "--verify-interval", "10", port=listen[1]) as daemon,
        ):
            _print_banner(fabric, daemon)
            watcher = asyncio.create_task(_show_verified(daemon.base_url, stop))
            await stop.wait()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            print("\nStopping pkeyd, OpenSM and ibsim ...")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if keep:
            print(f"Kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _print_banner(fabric: SimFabric, daemon: DaemonProcess) -> None:
    base_url = daemon.base_url
    guids = [f"0x{g:016x}" for g in fabric.topology.hca_port_guids()]
    members = (
        f'[{{"guid":"{guids[1]}","membership":"full"}},'
        f'{{"guid":"{guids[2]}","membership":"limited"}}]'
    )
    body = f'{{"name":"tenant-a","pkey":"0x0a12","ipoib":true,"members":{members}}}'
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in fabric.env.items())
    print(
        f"""
pkeyd is serving the REST API at {base_url}/api/v1
  partitions.conf: {fabric.partitions_conf}
  OpenSM log:      {fabric.opensm_log}
  pkeyd log:       {daemon.log_path}
  HCA port GUIDs:  {guids[0]} ... {guids[-1]} ({len(guids)} ports; {guids[0]} is the SM)

Create a partition with one full and one limited member:
  curl -s -X POST {base_url}/api/v1/partitions -H 'Content-Type: application/json' \\
    -d '{body}'
Then:
  curl -s {base_url}/api/v1/status
  curl -s {base_url}/api/v1/partitions/0x0a12/status
  curl -s {base_url}/api/v1/ports/{guids[1]}
  curl -s {base_url}/api/v1/drift
Read a port's PKey table from the simulated fabric yourself:
  (cd {fabric.tool_cwd} && env {env} smpquery -G pkeys {guids[1]} 1)

Each generation is shown below once pkeyd has verified it on the ports. Ctrl-C stops everything.
""",
        flush=True,
    )


async def _show_verified(base_url: str, stop: asyncio.Event) -> None:
    shown: int | None = None
    async with aiohttp.ClientSession(base_url) as http:
        while not stop.is_set():
            await asyncio.sleep(0.5)
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get("/api/v1/status") as resp:
                    status = await resp.json()
                verified = status.get("verified_generation")
                if verified is None or verified == shown:
                    continue
                shown = verified
                info = status["verification"]
                print(
                    f"generation {verified} verified on {info['ports_read']} ports in "
                    f"{info['duration_s'] * 1000:.0f} ms; drift entries: "
                    f"{sum(info['drift_entries'].values())}",
                    flush=True,
                )
