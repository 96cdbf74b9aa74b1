"""systemd's service notifications (sd_notify(3)) without libsystemd, and the watchdog feed.

The protocol is tiny: NOTIFY_SOCKET names a unix datagram socket (a leading
`@` means the abstract namespace) and each datagram holds newline-separated
KEY=VALUE lines. pkeyd sends READY=1 once the store is open, the API listens
and the first reconcile pass has finished; STATUS= lines that `systemctl
status` shows; WATCHDOG=1 every WatchdogSec/2 while it is healthy;
RELOADING=1 ... READY=1 around a config re-read; STOPPING=1 on the way out.

"Healthy" is what a restart could fix: every background task still runs and
no reconcile pass has been running for longer than `stuck_limit_s`. Waiting
out a backoff (OpenSM down, disk full) is not being stuck: those are recorded
in status and metrics, and a restart would not help. Without NOTIFY_SOCKET
(not under systemd) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from pkeyd.config import Settings
from pkeyd.reconcile import ReconcileStatus

log = structlog.get_logger("pkeyd.notify")

# Between watchdog pings when systemd asked for none: STATUS= stays fresh.
STATUS_INTERVAL_S = 5.0
# A pass reads the store, renders, fsyncs one file and reloads OpenSM (bounded
# by reload_timeout_s): anything this much longer is a hang.
STUCK_MARGIN_S = 60.0


def stuck_limit(settings: Settings) -> float:
    """Seconds a reconcile pass may run before the watchdog is starved."""
    return settings.reload_timeout_s + STUCK_MARGIN_S


@dataclass(frozen=True)
class NotifyEnv:
    """What systemd put in the environment for this process."""

    socket: str | None
    watchdog_s: float | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int) -> NotifyEnv:
        address = environ.get("NOTIFY_SOCKET") or None
        watchdog_s: float | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        owner = environ.get("WATCHDOG_PID", "")
        # WATCHDOG_PID, when set, names the process meant to feed (sd_watchdog_enabled).
        if usec.isdigit() and int(usec) > 0 and (not owner or owner == str(pid)):
            watchdog_s = int(usec) / 1_000_000
        return cls(address, watchdog_s)


class Notifier:
    """Sends notification datagrams; failures are logged, never raised."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.watchdog_s = watchdog_s
        self._address: str | None = None
        if address is not None:
            if address.startswith("@"):
                self._address = "\0" + address[1:]
            elif address.startswith("/"):
                self._address = address
            else:  # e.g. vsock: addresses (systemd 253+) are not for an SM node's service
                log.warning("notify_socket_unsupported", address=address)
        self._sock: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_env(cls, env: NotifyEnv) -> Notifier:
        return cls(env.socket, env.watchdog_s)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram of KEY=VALUE lines; True if it was handed to the socket."""
        if self._address is None:
            return False
        data = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(data, self._address)
        except OSError as exc:
            if not self._failing:  # once per outage, not once per ping
                log.warning("notify_failed", error=str(exc))
            self._failing = True
            return False
        self._failing = False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watched(Protocol):
    """What the heartbeat looks at: the reconciler."""

    @property
    def status(self) -> ReconcileStatus: ...

    def stuck_for(self) -> float: ...


def unhealthy_reason(
    watched: Watched, tasks: Mapping[str, asyncio.Task[None]], stuck_limit_s: float
) -> str | None:
    """Why a restart is needed now, or None while pkeyd is healthy."""
    stopped = sorted(name for name, task in tasks.items() if task.done())
    if stopped:
        return f"background task stopped: {', '.join(stopped)}"
    stuck = watched.stuck_for()
    if stuck > stuck_limit_s:
        return f"reconcile pass running for {stuck:.0f} s"
    return None


def status_text(status: ReconcileStatus) -> str:
    """One line for `systemctl status`: in sync, or what holds the change back."""
    if status.held:
        return "held: partitions.conf was edited behind pkeyd; POST /api/v1/reconcile/resume"
    if status.refused is not None:
        return f"refused: generation {status.refused.generation} failed the self-check"
    seen = status.seen_generation
    if seen is None:
        return "starting"
    if status.applied_generation == seen and status.last_error is None:
        return f"in sync: generation {seen} applied"
    applied = "none" if status.applied_generation is None else status.applied_generation
    reason = status.last_error or "waiting for the next pass"
    return f"pending: generation {seen} not applied (applied {applied}): {reason}"


async def heartbeat(
    notifier: Notifier,
    watched: Watched,
    tasks: Mapping[str, asyncio.Task[None]],
    *,
    stuck_limit_s: float,
) -> None:
    """Feed systemd's watchdog while healthy and keep STATUS= current; runs until cancelled."""
    interval = notifier.watchdog_s / 2 if notifier.watchdog_s else STATUS_INTERVAL_S
    last_status: str | None = None
    starved_by: str | None = None
    while True:
        reason = unhealthy_reason(watched, tasks, stuck_limit_s)
        if reason is None:
            if notifier.watchdog_s:
                notifier.send("WATCHDOG=1")
            if starved_by is not None:
                log.info("watchdog_fed_again", was=starved_by)
            text = status_text(watched.status)
        else:
            if reason != starved_by:
                log.error("watchdog_starved", reason=reason)
            text = f"unhealthy: {reason}"
        starved_by = reason
        if text != last_status:
            notifier.send(f"STATUS={text}")
            last_status = text
        await asyncio.sleep(interval)


async def announce_ready(notifier: Notifier, first_pass: asyncio.Event, watched: Watched) -> None:
    """READY=1 once the first reconcile pass is done (the caller knows the API listens)."""
    await first_pass.wait()
    text = status_text(watched.status)
    log.info("pkeyd_ready", status=text)
    notifier.send("READY=1", f"STATUS={text}")


def stopping(notifier: Notifier) -> None:
    notifier.send("STOPPING=1", "STATUS=stopping: finishing in-flight requests")
