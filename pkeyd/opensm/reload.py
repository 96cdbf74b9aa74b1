"""Telling OpenSM to re-read partitions.conf: SIGHUP to its pid, or a command."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Protocol

from pkeyd.errors import ReloadError


class Reloader(Protocol):
    async def reload(self) -> None:
        """Ask OpenSM for a heavy sweep; raise ReloadError if it can't be asked."""


class SighupReloader:
    """SIGHUP to the pid in OpenSM's pid file (re-read every time: OpenSM restarts)."""

    def __init__(self, pid_file: Path) -> None:
        self._pid_file = pid_file

    def _pid(self) -> int:
        try:
            text = self._pid_file.read_text().strip()
        except OSError as exc:
            raise ReloadError(f"cannot read OpenSM pid file {self._pid_file}: {exc}") from exc
        if not text.isdigit() or int(text) <= 1:
            raise ReloadError(f"OpenSM pid file {self._pid_file} holds no pid: {text[:40]!r}")
        pid = int(text)
        # A stale pid file may name a recycled pid; SIGHUP would end that process.
        comm = Path(f"/proc/{pid}/comm")
        try:
            name = comm.read_text().strip()
        except FileNotFoundError:
            raise ReloadError(f"OpenSM is not running (pid {pid} from {self._pid_file})") from None
        except OSError:
            return pid
        if not name.startswith("opensm"):
            raise ReloadError(f"pid {pid} from {self._pid_file} is {name!r}, not opensm")
        return pid

    def alive(self) -> bool:
        """Whether the pid file names a running opensm (for status between reloads)."""
        try:
            self._pid()
        except ReloadError:
            return False
        return True

    async def reload(self) -> None:
        pid = self._pid()
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            raise ReloadError(f"OpenSM is not running (pid {pid})") from None
        except PermissionError as exc:
            raise ReloadError(f"not allowed to signal OpenSM (pid {pid}): {exc}") from exc


class CommandReloader:
    """Run a command such as `systemctl reload opensm`; non-zero exit is a failure."""

    def __init__(self, argv: tuple[str, ...], timeout_s: float) -> None:
        self._argv = argv
        self._timeout_s = timeout_s

    async def reload(self) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            raise ReloadError(f"cannot run reload command {self._argv[0]!r}: {exc}") from exc
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the
            # output and drops a cancellation that lands as the command ends
            # (SIGTERM during a reload); the reconcile loop would then run on
            # and the daemon's stop would wait for it for ever.
            async with asyncio.timeout(self._timeout_s):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ReloadError(f"reload command timed out after {self._timeout_s:g} s") from None
        if proc.returncode != 0:
            tail = out.decode(errors="replace").strip()[-500:]
            raise ReloadError(f"reload command exited {proc.returncode}: {tail}")
