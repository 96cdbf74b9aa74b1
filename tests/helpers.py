"""Helpers shared by unit and e2e tests: a running daemon and convergence waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pkeyd.api.app import create_app
from pkeyd.api.keys import RECONCILER
from pkeyd.config import Settings
from pkeyd.opensm.reload import Reloader
from pkeyd.reconcile import Reconciler
from pkeyd.store.engine import make_engine, make_sessionmaker
from pkeyd.verification import ReaderFactory


@dataclass
class Daemon:
    client: TestClient[web.Request, web.Application]
    settings: Settings
    app: web.Application

    @property
    def reconciler(self) -> Reconciler:
        return self.app[RECONCILER]

    async def json(self, method: str, path: str, expect: int, **kw: Any) -> Any:
        resp = await self.client.request(method, path, **kw)
        body = await resp.json() if resp.content_type == "application/json" else None
        assert resp.status == expect, (resp.status, body)
        return body

    async def wait_applied(self, within_s: float = 15.0) -> dict[str, Any]:
        """Until the newest committed generation was written and reloaded."""
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            status: dict[str, Any] = await self.json("GET", "/api/v1/status", 200)
            if status["applied_generation"] == status["desired_generation"]:
                return status
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not applied within {within_s} s: {status}")
            await asyncio.sleep(0.02)


@asynccontextmanager
async def running_daemon(
    settings: Settings,
    reloader: Reloader | None = None,
    *,
    open_reader: ReaderFactory | None = None,
) -> AsyncIterator[Daemon]:
    app = create_app(settings, reloader=reloader, open_reader=open_reader)
    async with TestClient(TestServer(app)) as client:
        yield Daemon(client, settings, app)


@contextmanager
def sqlalchemy_statements() -> Iterator[list[str]]:
    """The statements any engine sends through SQLAlchemy while the block runs."""
    executed: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *_: object) -> None:
        executed.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        yield executed
    finally:
        event.remove(Engine, "before_cursor_execute", seen)


@asynccontextmanager
async def other_connection(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a database of its own engine, as another process would open them."""
    engine = make_engine(db_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()
