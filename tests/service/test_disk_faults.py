"""A full disk or a read-only folder under partitions.conf.

Whatever the fault, the live file keeps its last good bytes (no temp file is
left beside it), the API still accepts and stores changes, status, metrics
and logs name the error, and pkeyd applies everything by itself once the
fault clears. Each fault is made for real where the sandbox allows it (a tiny
tmpfs filled up, a tmpfs remounted read-only: root bypasses mode bits, so
chmod 0555 would prove nothing), and injected into the writer's system calls
otherwise (os.write raising ENOSPC, os.open raising EROFS), so the same
checks run everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog

from pkeyd.config import Settings
from pkeyd.opensm import writer
from pkeyd.opensm.render import is_intact_render
from tests.helpers import Daemon, running_daemon
from tests.service.conftest import FakeReloader, sample

GUID_BASE = 0x0002C90300AB0000
PKEY = "0x0a00"


def _members(first: int, last: int) -> list[dict[str, str]]:
    return [{"guid": f"0x{GUID_BASE + i:016x}", "membership": "full"} for i in range(first, last)]


def _settings(conf: Path, tmp_path: Path) -> Settings:
    return Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path}/pkeyd.db",
        partitions_conf=conf,
        reload_command=("true",),
        state_dir=tmp_path / "state",
        fabric_reader="off",
        coalesce_delay_s=0.0,
        min_reload_interval_s=0.0,
        retry_min_s=0.05,
        retry_max_s=0.2,
    )


@contextlib.contextmanager
def tmpfs(path: Path, size_kib: int) -> Iterator[Path]:
    path.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip()}): injected faults only")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as out:
        while True:
            try:
                out.write(b"\0" * 4096)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return filler


class Injected:
    """ENOSPC or EROFS from the writer's own system calls, switched on and off."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, kind: int) -> None:
        self.active = False
        real_write, real_open = os.write, os.open

        def write(fd: int, data: Any) -> int:
            if self.active and kind == errno.ENOSPC:
                target = ""
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/self/fd/{fd}")
                if writer.TEMP_MARK in target:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        def open_(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
            if self.active and kind == errno.EROFS and writer.TEMP_MARK in str(path):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, mode, **kw)

        # The writer calls os.write/os.open through the os module.
        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "open", open_)


@pytest_asyncio.fixture
async def conf_dir(tmp_path: Path) -> AsyncIterator[Path]:
    folder = tmp_path / "opensm"
    folder.mkdir()
    yield folder


async def _until_status(
    daemon: Daemon, check: Callable[[dict[str, Any]], bool], within_s: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        status: dict[str, Any] = await daemon.json("GET", "/api/v1/status", 200)
        if check(status):
            return status
        assert time.monotonic() < deadline, f"status never matched: {status}"
        await asyncio.sleep(0.02)


async def _fault_scenario(
    conf: Path,
    tmp_path: Path,
    fault_on: Callable[[], None],
    fault_off: Callable[[], None],
    expect: str,
) -> None:
    reloader = FakeReloader()
    async with running_daemon(_settings(conf, tmp_path), reloader) as daemon:
        await daemon.json(
            "POST", "/api/v1/partitions", 201,
            json={"name": "tenant", "pkey": PKEY, "members": _members(1, 3)},
        )  # fmt: skip
        await daemon.wait_applied()
        before = conf.read_bytes()
        reloads_before = reloader.calls
        metrics = await (await daemon.client.get("/metrics")).text()
        errors_before = sample(metrics, 'pkeyd_config_writes_total{result="error"}')

        fault_on()
        with structlog.testing.capture_logs() as logs:
            # Accepted and stored while the file cannot be written.
            await daemon.json(
                "POST", f"/api/v1/partitions/{PKEY}/members", 200,
                json={"members": _members(3, 120)},
            )  # fmt: skip
            status = await _until_status(daemon, lambda s: expect in (s["last_error"] or ""))
        assert status["pending"] is True
        assert conf.read_bytes() == before  # the live file is untouched
        assert reloader.calls == reloads_before  # and OpenSM was not reloaded
        assert not list(conf.parent.glob(f".*{writer.TEMP_MARK}*"))
        metrics = await (await daemon.client.get("/metrics")).text()
        assert sample(metrics, 'pkeyd_config_writes_total{result="error"}') > errors_before
        failed = [e for e in logs if e["event"] == "config_write_failed"]
        assert failed
        assert expect in failed[0]["error"]
        assert failed[0]["log_level"] == "error"
        stored = await daemon.json("GET", f"/api/v1/partitions/{PKEY}", 200)
        assert len(stored["members"]) == 119

        fault_off()  # nobody calls anything: pkeyd retries by itself
        status = await daemon.wait_applied(within_s=10.0)
        assert status["last_error"] is None
        assert status["pending"] is False
        after = conf.read_bytes()
        assert after != before
        assert is_intact_render(after)
        assert f"0x{GUID_BASE + 119:016x}" in after.decode()
        assert not list(conf.parent.glob(f".*{writer.TEMP_MARK}*"))


async def test_disk_full_for_real(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "opensm", 64) as folder:
        fill: list[Path] = []
        await _fault_scenario(
            folder / "partitions.conf",
            tmp_path,
            lambda: fill.append(_fill(folder)),
            lambda: fill[0].unlink(),
            "No space left on device",
        )


async def test_read_only_config_dir_for_real(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "opensm", 1024) as folder:
        await _fault_scenario(
            folder / "partitions.conf",
            tmp_path,
            lambda: _remount(folder, "ro"),
            lambda: _remount(folder, "rw"),
            "Read-only file system",
        )


@pytest.mark.parametrize(
    ("kind", "expect"),
    [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")],
)
async def test_injected_write_faults(
    conf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: int, expect: str
) -> None:
    faults = Injected(monkeypatch, kind)

    def on() -> None:
        faults.active = True

    def off() -> None:
        faults.active = False

    await _fault_scenario(conf_dir / "partitions.conf", tmp_path, on, off, expect)
