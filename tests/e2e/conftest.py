"""One simulated fabric (ibsim + real OpenSM) for the whole e2e session.

Each test gets a fresh pkeyd on a new SQLite database; its first pass
rewrites partitions.conf, so no state leaks from one test into the next.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from pkeyd.config import Settings
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.topology import fat_tree
from tests.helpers import Daemon, running_daemon

HCAS = 128  # two ports each: 256 PKey tables, 4 leaves, 2 spines

pytestmark = pytest.mark.e2e


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = [tool for tool in ("ibsim", "opensm", "smpquery") if shutil.which(tool) is None]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"simulated fabric needs {', '.join(missing)} (see README)")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fabric() -> AsyncIterator[SimFabric]:
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-e2e-"))
    async with SimFabric(fat_tree(HCAS, ports_per_hca=2), workdir) as sim:
        yield sim
        # Every file pkeyd wrote during the session was parsed by OpenSM.
        assert sim.parse_errors() == []
    shutil.rmtree(workdir, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session")
async def daemon(fabric: SimFabric, tmp_path: Path) -> AsyncIterator[Daemon]:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path}/pkeyd.db",
        partitions_conf=fabric.partitions_conf,
        opensm_pid_file=fabric.pid_file,
        state_dir=tmp_path / "state",
        fabric_reader="off",
    )
    async with running_daemon(settings) as d:
        await d.wait_applied()
        yield d
