"""opensm_up follows the OpenSM process between reloads, not only at reload time."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from pkeyd.config import Settings
from tests.helpers import Daemon, running_daemon

# A stand-in process whose name (/proc/PID/comm) is "opensm" and that survives
# SIGHUP like OpenSM does: what SighupReloader checks before it signals.
_FAKE_OPENSM = """
import ctypes, signal, sys, time
ctypes.CDLL(None).prctl(15, b"opensm", 0, 0, 0)  # PR_SET_NAME
signal.signal(signal.SIGHUP, lambda *_: None)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def fake_opensm(settings: Settings) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _FAKE_OPENSM], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        assert settings.opensm_pid_file is not None
        settings.opensm_pid_file.write_text(f"{proc.pid}\n")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


async def _until_up_is(d: Daemon, up: bool) -> dict[str, Any]:
    for _ in range(250):
        status: dict[str, Any] = await d.json("GET", "/api/v1/status", 200)
        if status["opensm_up"] is up:
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"opensm_up never became {up}")


async def test_opensm_up_follows_the_process(settings: Settings, fake_opensm: Any) -> None:
    proc = fake_opensm()
    quick = dataclasses.replace(settings, resync_interval_s=0.05)
    async with running_daemon(quick) as d:  # the real SIGHUP reloader
        await d.wait_applied()
        await _until_up_is(d, True)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        await _until_up_is(d, False)
        metrics = await (await d.client.get("/metrics")).text()
        assert "pkeyd_opensm_up 0.0" in metrics
        fake_opensm()
        await _until_up_is(d, True)
