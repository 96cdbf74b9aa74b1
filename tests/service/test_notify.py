"""sd_notify: the datagram protocol, the watchdog feed, and a real `pkeyd serve` speaking it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import structlog

from pkeyd.notify import (
    Notifier,
    NotifyEnv,
    heartbeat,
    status_text,
    unhealthy_reason,
)
from pkeyd.reconcile import ReconcileStatus, ReloadOutcome
from tests.service.conftest import ChildDaemon, NotifySocket


class Watched:
    def __init__(self) -> None:
        self.status = ReconcileStatus()
        self.stuck = 0.0

    def stuck_for(self) -> float:
        return self.stuck


def test_notifier_sends_datagrams(notify_socket: NotifySocket) -> None:
    notifier = Notifier(str(notify_socket.path))
    assert notifier.enabled
    assert notifier.send("READY=1", "STATUS=two\nlines")
    notifier.close()
    assert notify_socket.drain() == ["READY=1\nSTATUS=two lines"]


def test_abstract_socket_address() -> None:
    name = f"pkeyd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        notifier = Notifier("@" + name)
        assert notifier.send("WATCHDOG=1")
        assert server.recv(100) == b"WATCHDOG=1"
        notifier.close()


def test_without_socket_nothing_happens_and_failures_do_not_raise(tmp_path: Path) -> None:
    assert not Notifier(None).send("READY=1")
    assert not Notifier("vsock:2:1234").enabled
    gone = Notifier(str(tmp_path / "gone.sock"))
    with structlog.testing.capture_logs() as logs:
        assert not gone.send("WATCHDOG=1")
        assert not gone.send("WATCHDOG=1")
    assert [e["event"] for e in logs] == ["notify_failed"]  # once per outage


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, NotifyEnv(None, None)),
        ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}, NotifyEnv("/run/x", 30.0)),
        (
            {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "42"},
            NotifyEnv("/run/x", 0.001),
        ),
        (
            {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "41"},
            NotifyEnv("/run/x", None),
        ),
        ({"NOTIFY_SOCKET": "", "WATCHDOG_USEC": "junk"}, NotifyEnv(None, None)),
    ],
)
def test_notify_env(environ: dict[str, str], expected: NotifyEnv) -> None:
    assert NotifyEnv.from_environ(environ, pid=42) == expected


def test_status_text() -> None:
    status = ReconcileStatus()
    assert status_text(status) == "starting"
    status.seen_generation = status.applied_generation = 4
    assert status_text(status) == "in sync: generation 4 applied"
    status.seen_generation = 5
    status.last_error = "OpenSM is not running (pid 77)"
    status.last_reload = ReloadOutcome("error", 5, datetime.now(UTC))
    assert status_text(status) == (
        "pending: generation 5 not applied (applied 4): OpenSM is not running (pid 77)"
    )


@pytest.fixture
def watched() -> Watched:
    return Watched()


async def test_heartbeat_feeds_while_healthy_and_starves_when_stuck(
    notify_socket: NotifySocket, watched: Watched
) -> None:
    notifier = Notifier(str(notify_socket.path), watchdog_s=0.1)
    alive: asyncio.Task[None] = asyncio.create_task(asyncio.sleep(60))
    tasks = {"reconcile": alive}
    feed = asyncio.create_task(heartbeat(notifier, watched, tasks, stuck_limit_s=1.0))
    try:
        await asyncio.sleep(0.3)
        healthy = notify_socket.drain().count("WATCHDOG=1")
        assert healthy >= 4  # every 50 ms
        watched.stuck = 5.0  # a pass hangs
        await asyncio.sleep(0.1)
        notify_socket.messages.clear()
        await asyncio.sleep(0.3)
        assert "WATCHDOG=1" not in notify_socket.drain()
        assert "STATUS=unhealthy: reconcile pass running for 5 s" in notify_socket.messages
        watched.stuck = 0.0
        await notify_socket.wait_for("WATCHDOG=1", 1.0)
        alive.cancel()  # a background task died
        await asyncio.sleep(0.1)
        assert unhealthy_reason(watched, tasks, 1.0) == "background task stopped: reconcile"
        notify_socket.messages.clear()
        await asyncio.sleep(0.3)
        assert "WATCHDOG=1" not in notify_socket.drain()
    finally:
        feed.cancel()
        alive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
        notifier.close()


# -- a real daemon ----------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "pkeyd.toml"
    path.write_text('log_level = "info"\non_external_edit = "restore"\nretry_max_s = 30\n')
    return path


async def test_serve_speaks_sd_notify(
    tmp_path: Path,
    notify_socket: NotifySocket,
    config_file: Path,
    child_daemons: list[ChildDaemon],
) -> None:
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"}
    daemon = ChildDaemon(tmp_path, "--config", str(config_file), env=env)
    child_daemons.append(daemon)
    await daemon.start()

    ready_at = await notify_socket.wait_for("READY=1")
    ready = notify_socket.messages[ready_at].split("\n")
    assert "STATUS=in sync: generation 0 applied" in ready
    # READY came after the API listened and the first pass reloaded OpenSM.
    events = [e["event"] for e in daemon.events()]
    assert events.index("pkeyd_listening") < events.index("pkeyd_ready")
    assert events.index("opensm_reloaded") < events.index("pkeyd_ready")
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.base_url}/healthz") as resp:
        assert resp.status == 200

    # Fed every WatchdogSec/2 = 0.2 s.
    notify_socket.messages.clear()
    await asyncio.sleep(1.0)
    assert notify_socket.drain().count("WATCHDOG=1") >= 3

    # systemctl reload: SIGHUP re-reads the file; live keys apply, others are named.
    config_file.write_text(
        'log_level = "debug"\non_external_edit = "hold"\nretry_max_s = 5\n'
        "default_partition_cap = 64\n"
    )
    notify_socket.messages.clear()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    ready_again = await notify_socket.wait_for("READY=1")
    assert any("RELOADING=1" in m for m in notify_socket.messages[:ready_again])
    reloaded = next(e for e in daemon.events() if e["event"] == "config_reloaded")
    assert reloaded["applied"] == ["on_external_edit", "retry_max_s"]
    assert reloaded["restart_needed"] == ["default_partition_cap"]
    assert any(e["event"] == "log_settings_changed" for e in daemon.events())

    # A broken file is refused and the running configuration kept.
    config_file.write_text("retry_max_s = 'x'\n")
    daemon.proc.send_signal(signal.SIGHUP)
    await notify_socket.wait_for("READY=1")
    await asyncio.sleep(0.2)
    failed = [e for e in daemon.events() if e["event"] == "config_reload_failed"]
    assert failed
    assert "retry_max_s: must be a number" in failed[0]["error"]
    async with aiohttp.ClientSession() as http, http.get(f"{daemon.base_url}/healthz") as resp:
        assert resp.status == 200

    notify_socket.messages.clear()
    assert await daemon.stop() == 0
    assert any("STOPPING=1" in m for m in notify_socket.drain())


async def test_ready_even_when_the_first_pass_fails(
    tmp_path: Path, notify_socket: NotifySocket, child_daemons: list[ChildDaemon]
) -> None:
    env = {"NOTIFY_SOCKET": str(notify_socket.path)}
    daemon = ChildDaemon(tmp_path, "--reload-command", "false", env=env)
    child_daemons.append(daemon)
    await daemon.start()
    at = await notify_socket.wait_for("READY=1")
    status = [line for line in notify_socket.messages[at].split("\n") if line.startswith("STATUS")]
    assert status == ["STATUS=pending: generation 0 not applied (applied none): "
                      "reload command exited 1: "]  # fmt: skip
