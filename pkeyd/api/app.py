"""The aiohttp application factory. The app owns every lifecycle (cleanup_ctx)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import partial
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pkeyd.api.auth import authenticate, token_routes
from pkeyd.api.bodies import PartitionBodies
from pkeyd.api.fabric_routes import fabric_routes
from pkeyd.api.history_routes import history_routes
from pkeyd.api.keys import (
    BACKGROUND_TASKS,
    BODIES,
    METRICS,
    RECONCILER,
    SERVICE,
    SETTINGS,
    TOKEN_CACHE,
    TOKEN_SERVICE,
    VERIFIER,
)
from pkeyd.api.middleware import request_context
from pkeyd.api.openapi import openapi_routes
from pkeyd.api.query_routes import query_routes
from pkeyd.api.routes import routes
from pkeyd.api.ufm_clock import last_updated_ctx
from pkeyd.api.ufm_routes import ufm_routes
from pkeyd.auth import TokenCache, TokenService
from pkeyd.cache import PartitionCache
from pkeyd.capacity import CapacityGuard
from pkeyd.config import Settings
from pkeyd.configfile import runtime_update
from pkeyd.fabric.verbs import read_local_ports
from pkeyd.loopwatch import watch_loop
from pkeyd.metrics import Metrics
from pkeyd.notify import Notifier, heartbeat, stuck_limit
from pkeyd.opensm.reload import CommandReloader, Reloader, SighupReloader
from pkeyd.reconcile import Reconciler
from pkeyd.retention import keep_revisions
from pkeyd.service import PartitionService
from pkeyd.snapshots import DesiredStateLoader
from pkeyd.store.engine import (
    GenerationProbe,
    ensure_schema,
    make_engine,
    make_sessionmaker,
    make_sync_engine,
)
from pkeyd.verification import LocalReader, ReaderFactory, Verifier, open_smp_source

log = structlog.get_logger("pkeyd.app")

# At stop, the last reconcile pass (writes acknowledged just before SIGTERM)
# gets this long; it fits in the daemon's bound on stopping the loops.
FINAL_PASS_S = 2.0


def reloader_for(settings: Settings) -> Reloader:
    if settings.opensm_pid_file is not None:
        return SighupReloader(settings.opensm_pid_file)
    assert settings.reload_command is not None  # Settings enforces exactly one
    return CommandReloader(settings.reload_command, settings.reload_timeout_s)


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    reloader: Reloader | None = None,
    open_reader: ReaderFactory | None = None,
    read_local: LocalReader = read_local_ports,
    notifier: Notifier | None = None,
    reread_settings: Callable[[], Settings] | None = None,
) -> web.Application:
    """The daemon. Tests hand in the OpenSM side (reloader, fabric readers) only.

    `notifier` talks to systemd (watchdog, STATUS=); `reread_settings` is
    called on SIGHUP and its runtime-changeable values are applied.
    """
    app = web.Application(
        middlewares=[request_context, authenticate], client_max_size=settings.max_body_bytes
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics(registry if registry is not None else CollectorRegistry())
    app[BODIES] = PartitionBodies()
    app.add_routes(routes)
    app.add_routes(query_routes)
    app.add_routes(history_routes)
    app.add_routes(fabric_routes)
    app.add_routes(openapi_routes)
    app.add_routes(ufm_routes())
    app.add_routes(token_routes)
    if open_reader is None and settings.fabric_reader == "smp":
        open_reader = partial(open_smp_source, settings)
    app.cleanup_ctx.append(
        _lifecycle(
            reloader or reloader_for(settings), open_reader, read_local, notifier, reread_settings
        )
    )
    # After the lifecycle: it follows the reconciler that one starts.
    app.cleanup_ctx.append(last_updated_ctx)
    return app


def _lifecycle(
    reloader: Reloader,
    open_reader: ReaderFactory | None,
    read_local: LocalReader,
    notifier: Notifier | None,
    reread_settings: Callable[[], Settings] | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        engine = make_engine(settings.db_url)
        blocking = make_sync_engine(settings.db_url)
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            await ensure_schema(engine)
            sessions = make_sessionmaker(engine)
            metrics = app[METRICS]
            capacity = CapacityGuard(settings.default_partition_cap)
            # The reconciler's loader takes unchanged partitions from the API's cache.
            cache = PartitionCache()
            gate = asyncio.Lock()
            loader = DesiredStateLoader(sessions, cache.at, gate)
            reconciler = Reconciler(settings, loader.load, reloader, metrics)
            app[RECONCILER] = reconciler
            service = PartitionService(
                sessions,
                settings,
                reconciler.committed,
                capacity,
                cache,
                blocking,
                gate,
                GenerationProbe(engine, blocking),
            )
            app[SERVICE] = service
            tasks["cache"] = _guarded(service.keep_cache_fresh(), "pkeyd-cache")
            app[VERIFIER] = None
            if open_reader is not None:
                verifier = Verifier(
                    settings, reconciler, metrics, open_reader, read_local, capacity
                )
                app[VERIFIER] = verifier
                tasks["verify"] = _guarded(verifier.run(), "pkeyd-verify")
            tasks["reconcile"] = _guarded(reconciler.run(), "pkeyd-reconcile")
            tasks["loop"] = _guarded(watch_loop(metrics), "pkeyd-loopwatch")
            if settings.revision_ttl_s > 0:
                pruning = keep_revisions(service.prune_revisions, settings.revision_ttl_s)
                tasks["retention"] = _guarded(pruning, "pkeyd-retention")
            if notifier is not None and notifier.enabled:
                feed = heartbeat(notifier, reconciler, tasks, stuck_limit_s=stuck_limit(settings))
                tasks["watchdog"] = _guarded(feed, "pkeyd-watchdog")
            await _start_tokens(app, sessions, tasks)
            app[BACKGROUND_TASKS] = tasks
            if reread_settings is not None:
                on_hup = _settings_reloader(settings, reread_settings, reconciler, app, notifier)
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)
            yield
        finally:
            if reread_settings is not None:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            for task in tasks.values():
                task.cancel()
            for task in tasks.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if SERVICE in app:
                await app[SERVICE].aclose()
            if RECONCILER in app:
                await app[RECONCILER].final_pass(FINAL_PASS_S)
            await engine.dispose()
            if blocking is not None:
                blocking.dispose()

    return ctx


async def _start_tokens(
    app: web.Application,
    sessions: async_sessionmaker[AsyncSession],
    tasks: dict[str, asyncio.Task[None]],
) -> None:
    settings = app[SETTINGS]
    service = TokenService(sessions)
    cache = TokenCache(service, settings.auth_cache_s)
    app[TOKEN_CACHE] = cache
    app[TOKEN_SERVICE] = service
    if settings.auth:
        await cache.refresh()  # before the first request: no window where valid tokens fail
        tasks["tokens"] = _guarded(cache.run(), "pkeyd-tokens")
        if cache.count == 0:
            log.warning("auth_without_tokens", hint="pkeyd token create --role admin --name NAME")


def _settings_reloader(
    settings: Settings,
    reread: Callable[[], Settings],
    reconciler: Reconciler,
    app: web.Application,
    notifier: Notifier | None,
) -> Callable[[], None]:
    """SIGHUP: re-read the config; apply what the loops read live, name what needs a restart."""
    current = [settings]

    def on_sighup() -> None:
        if notifier is not None:
            notifier.send("RELOADING=1")
        try:
            new = reread()
        except ValueError as exc:
            log.error("config_reload_failed", error=str(exc), kept="the running configuration")
        else:
            merged, applied, restart = runtime_update(current[0], new)
            current[0] = merged
            # The loops read these fields on every use; the rest is built into
            # objects (socket, engine, reloader, SMP reader) and needs a restart.
            reconciler.replace_settings(merged)
            verifier = app[VERIFIER]
            if verifier is not None:
                verifier.replace_settings(merged)
            log.info("config_reloaded", applied=applied, restart_needed=restart)
            if restart:
                log.warning("config_restart_needed", settings=restart)
            reconciler.wake()
        finally:
            if notifier is not None:
                notifier.send("READY=1")

    return on_sighup


def _guarded(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_report_death)
    return task


def _report_death(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    # The loops only end by cancellation; anything else fails /healthz.
    log.critical("background_task_died", task=task.get_name(), error=repr(task.exception()))
