"""The daemon process: TLS, systemd notification, signals, a bounded graceful stop.

`pkeyd serve` (pkeyd.cli) resolves the settings and hands them here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from pkeyd import __version__, notify
from pkeyd.config import Settings, is_loopback
from pkeyd.tls import server_context

log = structlog.get_logger("pkeyd.daemon")

# After SIGTERM, in-flight requests get this long to finish before they are cancelled.
SHUTDOWN_GRACE_S = 10.0
# ...and the background loops this long more to stop. Past that the daemon logs
# what every task still waits on and exits hard: each acknowledged write is
# already committed and partitions.conf is only ever replaced whole, so nothing
# is lost, while a stop that never ends would leave systemd to SIGKILL it
# without a word of why.
STOP_LOOPS_S = 3.0
EXIT_STUCK = 70  # EX_SOFTWARE
# The cyclic collector's first threshold (Python's default is 700). Fifty
# requests in flight keep thousands of young objects alive at any moment, so
# at the default each young collection promotes them and full collections
# follow every second or so, each walking the whole heap (the cached
# partitions and their members) for 0.1 s or more while every request waits.
# Reference counting frees nearly all of pkeyd's garbage; this only spaces
# out the search for cycles.
GC_YOUNG_THRESHOLD = 20_000


def serve(settings: Settings, config_path: Path | None, reread: Callable[[], Settings]) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit status."""
    tls = server_context(settings)
    if settings.auth and tls is None and not is_loopback(settings.listen_host):
        log.warning("tokens_sent_in_clear", hint="set tls_cert and tls_key")
    # sd_notify: read once, and keep children (a reload command) from speaking for us.
    env = notify.NotifyEnv.from_environ(os.environ, os.getpid())
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)
    notifier = notify.Notifier.from_env(env)
    log.info(
        "pkeyd_starting",
        version=__version__,
        config=str(config_path) if config_path else None,
        listen=f"{settings.listen_host}:{settings.listen_port}",
        partitions_conf=str(settings.partitions_conf),
        systemd_notify=notifier.enabled,
        watchdog_s=env.watchdog_s,
    )
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    try:
        return asyncio.run(_run_daemon(settings, notifier, reread, tls))
    finally:
        notifier.close()


async def _run_daemon(
    settings: Settings,
    notifier: notify.Notifier,
    reread: Callable[[], Settings],
    tls: ssl.SSLContext | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; then finish in-flight requests (bounded) and stop the loops."""
    from pkeyd.api.app import create_app
    from pkeyd.api.keys import RECONCILER

    app = create_app(settings, notifier=notifier, reread_settings=reread)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()  # the store is open and the loops run
        site = web.TCPSite(runner, settings.listen_host, settings.listen_port, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:
            log.error("listen_failed", listen=f"{settings.listen_host}:{settings.listen_port}",
                      error=str(exc))  # fmt: skip
            return 1
        log.info("pkeyd_listening", listen=f"{settings.listen_host}:{settings.listen_port}",
                 tls=tls is not None, auth=settings.auth)  # fmt: skip
        ready = asyncio.create_task(
            notify.announce_ready(notifier, app[RECONCILER].first_pass_done, app[RECONCILER])
        )
        # What startup made (modules, the schema, the routes) lives as long as
        # the process: out of every later collection's walk.
        gc.collect()
        gc.freeze()
        await stop.wait()
        ready.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ready
        log.info("pkeyd_stopping", grace_s=SHUTDOWN_GRACE_S)
        notify.stopping(notifier)
    finally:
        await _cleanup_or_exit(runner)  # stop listening, finish requests, stop the loops
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("pkeyd_stopped")
    return 0


async def _cleanup_or_exit(runner: web.AppRunner) -> None:
    # A timer, not a timeout around the cleanup: a timeout cancels the cleanup,
    # and code that swallows a cancellation (the very kind of bug that makes
    # a stop hang) would let the stop run on, or end, past the bound without a
    # word; the cancellation would also unwind the waiting tasks before
    # their stacks were taken.
    stuck = asyncio.get_running_loop().call_later(SHUTDOWN_GRACE_S + STOP_LOOPS_S, _exit_stuck)
    try:
        await runner.cleanup()
    finally:
        stuck.cancel()


def _exit_stuck() -> None:
    log.error("shutdown_stuck", waiting=_task_stacks(), exit_code=EXIT_STUCK)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_STUCK)


def _task_stacks() -> dict[str, str]:
    """Where each unfinished task waits: what a stuck stop is reported with."""
    return {
        task.get_name(): _awaiting(task)
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task()
    }


def _awaiting(task: asyncio.Task[Any]) -> str:
    """The task's chain of awaits, innermost first.

    Task.get_stack() gives only the outermost frame of a suspended coroutine
    ("run"), not what it waits on inside ("reload", "acquire"...): follow
    what each coroutine awaits instead.
    """
    where = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        frame = frame or getattr(awaited, "ag_frame", None)
        if frame is None:
            break
        where.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        awaited = (
            getattr(awaited, "cr_await", None)
            or getattr(awaited, "gi_yieldfrom", None)
            or getattr(awaited, "ag_await", None)
        )
    return " <- ".join(reversed(where)) or "(no frame)"
