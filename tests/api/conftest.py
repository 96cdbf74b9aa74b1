"""A real pkeyd app on a real socket, in a thread of its own.

schemathesis and other synchronous clients block their thread, so the app
cannot share the test's event loop. Only the subnet side is faked (OpenSM's
reload and the ports' tables, tests/fakesubnet.py), so verification is on
and the fabric routes answer as on a real SM node.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from pkeyd.api.app import create_app
from pkeyd.config import Settings
from tests.fakesubnet import FakeSubnet, open_subnet


@dataclass
class LiveServer:
    url: str
    settings: Settings


def api_settings(tmp: Path) -> Settings:
    return Settings(
        db_url=f"sqlite+aiosqlite:///{tmp}/pkeyd.db",
        listen_port=0,
        partitions_conf=tmp / "partitions.conf",
        opensm_pid_file=tmp / "opensm.pid",
        state_dir=tmp / "state",
        coalesce_delay_s=0.0,
        min_reload_interval_s=0.0,
        verify_interval_s=0.2,
        verify_settle_s=0.0,
        # Both on, so that generated bodies using `both` or an SL are valid too.
        allow_both_pkeys=True,
        qos=True,
    )


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = api_settings(tmp_path_factory.mktemp("api"))
    loop = asyncio.new_event_loop()
    subnet = FakeSubnet(settings.partitions_conf)
    app = create_app(settings, reloader=subnet, open_reader=lambda: open_subnet(subnet))
    runner = web.AppRunner(app)
    started = threading.Event()
    port: list[int] = []

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # the bound port of port 0
        assert isinstance(server, asyncio.base_events.Server)
        port.append(server.sockets[0].getsockname()[1])
        started.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name="pkeyd-live-server", daemon=True)
    thread.start()
    assert started.wait(30), "the app did not start"
    try:
        yield LiveServer(f"http://127.0.0.1:{port[0]}", settings)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
