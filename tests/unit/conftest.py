from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pkeyd.config import Settings
from pkeyd.errors import ReloadError
from tests.helpers import Daemon, running_daemon


class CountingReloader:
    """Stands in for OpenSM: the only faked piece in these tests."""

    def __init__(self) -> None:
        self.calls = 0
        self.failure: str | None = None

    async def reload(self) -> None:
        if self.failure is not None:
            raise ReloadError(self.failure)
        self.calls += 1


@pytest.fixture
def reloader() -> CountingReloader:
    return CountingReloader()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path}/pkeyd.db",
        partitions_conf=tmp_path / "partitions.conf",
        opensm_pid_file=tmp_path / "opensm.pid",
        state_dir=tmp_path / "state",
        fabric_reader="off",
        coalesce_delay_s=0.0,
        min_reload_interval_s=0.0,
        retry_min_s=0.05,
        retry_max_s=0.2,
    )


@pytest.fixture
async def daemon(settings: Settings, reloader: CountingReloader) -> AsyncIterator[Daemon]:
    async with running_daemon(settings, reloader) as d:
        await d.wait_applied()
        yield d
