"""The aiohttp application factory. The app owns every lifecycle (cleanup_ctx)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from functools import partial

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from pkeyd.api.keys import METRICS, RECONCILE_TASK, RECONCILER, SERVICE, SETTINGS
from pkeyd.api.middleware import request_context
from pkeyd.api.routes import routes
from pkeyd.capacity import CapacityGuard
from pkeyd.config import Settings
from pkeyd.metrics import Metrics
from pkeyd.opensm.reload import CommandReloader, Reloader, SighupReloader
from pkeyd.reconcile import Reconciler
from pkeyd.service import PartitionService, load_desired_state
from pkeyd.store.engine import ensure_schema, make_engine, make_sessionmaker

log = structlog.get_logger("pkeyd.app")


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
) -> web.Application:
    app = web.Application(middlewares=[request_context], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = Metrics(registry if registry is not None else CollectorRegistry())
    app.add_routes(routes)
    app.cleanup_ctx.append(_database_and_reconciler(reloader or reloader_for(settings)))
    return app


def _database_and_reconciler(
    reloader: Reloader,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        engine = make_engine(settings.db_url)
        try:
            await ensure_schema(engine)
            sessions = make_sessionmaker(engine)
            reconciler = Reconciler(
                settings, partial(load_desired_state, sessions), reloader, app[METRICS]
            )
            app[SERVICE] = PartitionService(
                sessions,
                settings,
                reconciler.wake,
                CapacityGuard(settings.default_partition_cap),
            )
            app[RECONCILER] = reconciler
            task = asyncio.create_task(reconciler.run(), name="pkeyd-reconcile")
            task.add_done_callback(_report_death)
            app[RECONCILE_TASK] = task
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            await engine.dispose()

    return ctx


def _report_death(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    # run() only returns by cancellation; anything else fails /healthz.
    log.critical("reconciler_died", error=repr(exc))
