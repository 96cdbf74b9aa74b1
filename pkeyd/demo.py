"""`pkeyd demo`: the daemon on SQLite against a generated simulated fabric.

Starts ibsim and OpenSM in a temp dir, serves the API, prints where and how to
call it, and shows each applied generation as it lands on the ports' PKey
tables. Ctrl-C stops the daemon, then OpenSM, then ibsim.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path

from aiohttp import web

from pkeyd.api.app import create_app
from pkeyd.api.keys import RECONCILER
from pkeyd.config import Settings
from pkeyd.reconcile import Reconciler
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.pkeys import FULL_MEMBER_BIT, read_pkey_tables
from pkeyd.sim.topology import fat_tree


async def run_demo(hcas: int, listen: tuple[str, int], *, keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-demo-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"Starting a simulated fat tree of {hcas} HCAs (ibsim + OpenSM) in {workdir} ...")
        async with SimFabric(fat_tree(hcas), workdir) as fabric:
            settings = Settings(
                db_url=f"sqlite+aiosqlite:///{workdir}/pkeyd.db",
                listen_host=listen[0],
                listen_port=listen[1],
                partitions_conf=fabric.partitions_conf,
                opensm_pid_file=fabric.pid_file,
                state_dir=workdir / "state",
            )
            app = create_app(settings)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            try:
                site = web.TCPSite(runner, settings.listen_host, settings.listen_port)
                await site.start()
                _print_banner(fabric, site.name)
                watcher = asyncio.create_task(_show_applied(fabric, app[RECONCILER], stop))
                await stop.wait()
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            finally:
                await runner.cleanup()
            print("\nStopping pkeyd, OpenSM and ibsim ...")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if keep:
            print(f"Kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _print_banner(fabric: SimFabric, base_url: str) -> None:
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
  HCA port GUIDs:  {guids[0]} ... {guids[-1]} ({len(guids)} ports; {guids[0]} is the SM)

Create a partition with one full and one limited member:
  curl -s -X POST {base_url}/api/v1/partitions -H 'Content-Type: application/json' \\
    -d '{body}'
Then:
  curl -s {base_url}/api/v1/status
  curl -s {base_url}/api/v1/partitions
Read a port's PKey table from the simulated fabric yourself:
  env {env} ibnetdiscover -p | grep {guids[1]}
  env {env} smpquery pkeys <LID from above> 1

Every applied change is shown below as the ports report it. Ctrl-C stops everything.
""",
        flush=True,
    )


async def _show_applied(fabric: SimFabric, reconciler: Reconciler, stop: asyncio.Event) -> None:
    """Print, per applied generation, which PKeys the HCA ports really hold."""
    shown: int | None = None
    while not stop.is_set():
        await asyncio.sleep(1.0)
        applied = reconciler.status.applied_generation
        if applied is None or applied == shown:
            continue
        shown = applied
        await asyncio.sleep(1.0)  # let OpenSM's heavy sweep program the tables
        tables = await read_pkey_tables(fabric)
        tally: Counter[tuple[int, str]] = Counter()
        for table in tables.values():
            for entry in table:
                kind = "full" if entry & FULL_MEMBER_BIT else "limited"
                tally[(entry & ~FULL_MEMBER_BIT, kind)] += 1
        parts = [
            f"0x{pkey:04x} {kind} on {count} port(s)"
            for (pkey, kind), count in sorted(tally.items())
            if pkey != 0x7FFF
        ]
        print(
            f"generation {applied} applied; {len(tables)} HCA ports hold: "
            + ("; ".join(parts) if parts else "only the Default partition"),
            flush=True,
        )
