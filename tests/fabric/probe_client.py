"""A client for `python -m pkeyd.fabric.probe --serve` and ibsim's console, for tests.

The probe runs in the simulator's environment (LD_PRELOAD must be set when a
process starts), so tests that need SMPs - reads, or Sets that tamper with a
table behind OpenSM's back - talk to it over JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pkeyd
from pkeyd.fabric.model import FabricSnapshot
from pkeyd.sim.fabric import SimFabric


class ProbeError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ProbeServer:
    """``python -m pkeyd.fabric.probe --serve`` in the simulator's environment."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.hello: dict[str, Any] = {}

    @classmethod
    async def start(cls, fabric: SimFabric, *args: str) -> ProbeServer:
        proc = await asyncio.create_subprocess_exec(
            *probe_argv("--serve", *args),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=probe_env(fabric),
            cwd=fabric.tool_cwd,  # libumad2sim writes ./sys-<pid> here
            limit=16 * 1024 * 1024,  # a whole snapshot is one JSON line
        )
        server = cls(proc)
        server.hello = await server._reply()
        return server

    async def call(self, op: str, **kwargs: Any) -> Any:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"op": op, **kwargs}).encode() + b"\n")
        await self._proc.stdin.drain()
        return await self._reply()

    async def read_all(self) -> FabricSnapshot:
        return FabricSnapshot.from_json(await self.call("read_all"))

    async def _reply(self) -> Any:
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), 30)
        if not line:
            raise ProbeError("exited", f"probe exited with {await self._proc.wait()}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise ProbeError(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    async def close(self) -> None:
        # EOF on stdin, never a kill: a umad2sim client killed at the wrong
        # moment can take ibsim down with it.
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        await asyncio.wait_for(self._proc.wait(), 10)


def probe_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pkeyd.fabric.probe", *args]


def probe_env(fabric: SimFabric | None) -> dict[str, str]:
    root = str(Path(pkeyd.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    return {**env, **fabric.env} if fabric is not None else env


async def ibsim_console(fabric: SimFabric, command: str) -> None:
    """A console command, returning once ibsim has run it (it prompts again after each)."""
    prompts = fabric.ibsim_log.read_text().count("sim> ")
    await fabric.ibsim_command(command)
    for _ in range(500):
        if fabric.ibsim_log.read_text().count("sim> ") > prompts:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"ibsim did not run {command!r}")
