"""Run `pkeyd serve` as a child process attached to a simulated fabric.

libumad2sim must be preloaded when a process starts (LD_PRELOAD), so a pkeyd
that reads PKey tables over SMPs from ibsim runs as its own process with the
fabric's environment, from the fabric's scratch directory (libumad2sim builds
a fake sysfs in the working directory). Used by `pkeyd demo` and the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp

from pkeyd.sim.fabric import SimFabric


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class DaemonProcess:
    def __init__(
        self,
        fabric: SimFabric,
        workdir: Path,
        *extra_args: str,
        port: int | None = None,
        log_name: str = "pkeyd.log",
    ) -> None:
        self.fabric = fabric
        self.workdir = workdir
        self.port = port or free_port()
        self.db_url = f"sqlite+aiosqlite:///{workdir}/pkeyd.db"
        self.log_path = workdir / log_name
        self._extra = extra_args
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "pkeyd", "--log-format", "json", "serve",
            "--db", self.db_url,
            "--listen", f"127.0.0.1:{self.port}",
            "--partitions-conf", str(self.fabric.partitions_conf),
            "--opensm-pid-file", str(self.fabric.pid_file),
            "--state-dir", str(self.workdir / "state"),
            *self._extra,
        ]  # fmt: skip

    async def start(self, ready_within_s: float = 30.0) -> None:
        env = {**os.environ, **self.fabric.env}
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv(),
                cwd=self.fabric.tool_cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + ready_within_s
        async with aiohttp.ClientSession() as http:
            while True:
                if self._proc.returncode is not None:
                    raise RuntimeError(f"pkeyd exited {self._proc.returncode}: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.base_url}/healthz") as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    await self.stop()
                    raise RuntimeError(f"pkeyd not ready in {ready_within_s} s: {self.log_tail()}")
                await asyncio.sleep(0.05)

    async def stop(self, sig: int = signal.SIGTERM, within_s: float = 15.0) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(sig)
        try:
            return await asyncio.wait_for(proc.wait(), within_s)
        except TimeoutError:
            proc.kill()
            return await proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no log>"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
