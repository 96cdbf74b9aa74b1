"""Running pkeyd as a service: systemd unit, notifications, crashes, outages, faults.

The tests marked e2e share one small simulated fabric (ibsim + real OpenSM);
the others run `pkeyd serve` as a child process with a stand-in reload
command, or the app in-process with a fake reloader.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from pkeyd.errors import ReloadError
from pkeyd.sim.daemon import free_port
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.topology import fat_tree

# 32 two-port HCAs: 64 port GUIDs, small enough to start in a few seconds.
TOPOLOGY = fat_tree(32, ports_per_hca=2, hcas_per_leaf=8)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = [tool for tool in ("ibsim", "opensm", "smpquery") if shutil.which(tool) is None]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"simulated fabric needs {', '.join(missing)} (see README)")
    for item in items:
        if "e2e" in item.keywords and "tests/service" in str(item.path):
            item.add_marker(skip)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def service_fabric() -> AsyncIterator[SimFabric]:
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-service-"))
    async with SimFabric(TOPOLOGY, workdir) as sim:
        yield sim
    shutil.rmtree(workdir, ignore_errors=True)


def opensm_parse_errors(fabric: SimFabric) -> list[str]:
    """Parse errors in OpenSM's log, including the run before a start_opensm()."""
    errors = fabric.parse_errors()
    previous = fabric.opensm_log.with_name(fabric.opensm_log.name + ".1")
    if previous.exists():
        errors += [
            line
            for line in previous.read_text(errors="replace").splitlines()
            if "PARSE ERROR" in line or "retrying with default config" in line
        ]
    return errors


class NotifySocket:
    """A NOTIFY_SOCKET stand-in: a unix datagram socket in a temp dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    async def wait_for(self, line: str, within_s: float = 20.0) -> int:
        """Index of the first message holding `line` (as a whole line)."""
        deadline = time.monotonic() + within_s
        while True:
            for i, msg in enumerate(self.drain()):
                if line in msg.split("\n"):
                    return i
            if time.monotonic() > deadline:
                raise AssertionError(f"no {line!r} within {within_s} s: {self.messages}")
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


class FakeReloader:
    """Stands in for OpenSM in in-process daemons."""

    def __init__(self) -> None:
        self.calls = 0
        self.failure: str | None = None

    async def reload(self) -> None:
        if self.failure is not None:
            raise ReloadError(self.failure)
        self.calls += 1


class ChildDaemon:
    """`pkeyd serve` as a plain child process (no fabric): a reload command stands in."""

    def __init__(self, workdir: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.partitions_conf = workdir / "conf" / "partitions.conf"
        self.partitions_conf.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "pkeyd.log"
        self.flags = flags
        self.env = env or {}
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "pkeyd", "--log-format", "json", "serve",
            "--db", f"sqlite+aiosqlite:///{self.workdir}/pkeyd.db",
            "--listen", f"127.0.0.1:{self.port}",
            "--partitions-conf", str(self.partitions_conf),
            "--reload-command", "true",
            "--state-dir", str(self.workdir / "state"),
            "--fabric-reader", "off",
            *self.flags,
        ]  # fmt: skip

    async def start(self) -> None:
        env = {**os.environ, **self.env}
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv(), env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
            )

    async def wait_healthy(self, within_s: float = 20.0) -> None:
        deadline = time.monotonic() + within_s
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.proc is not None
                assert self.proc.returncode is None, self.log()
                try:
                    async with http.get(f"{self.base_url}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, f"not healthy in {within_s} s: {self.log()}"
                await asyncio.sleep(0.05)

    async def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.returncode is None:
            proc.terminate()
            try:
                return await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
        return await proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return "<no log>"

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines so far."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@pytest_asyncio.fixture
async def child_daemons() -> AsyncIterator[list[ChildDaemon]]:
    """Children registered here are stopped even when a test fails."""
    started: list[ChildDaemon] = []
    yield started
    for daemon in started:
        await daemon.stop()


def sample(text: str, series: str) -> float:
    """One sample of Prometheus text: `name` or `name{label="value"}`."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    raise AssertionError(f"{series} not exposed")
