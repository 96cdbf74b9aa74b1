"""A throwaway PostgreSQL cluster for the tests that must run on the shared-store backend.

The server binaries come from Debian's postgresql package (`make install`
installs it). initdb refuses to run as root, so as root the cluster belongs to
the `postgres` user that package creates. It listens on a Unix socket only,
in a temporary directory, with trust authentication.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg


def _bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found; run `make install`")
    return Path(candidates[-1]).parent


def _as_owner(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class PostgresCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.socket_dir = root

    @property
    def user(self) -> str:
        return "postgres"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@/{database}?host={self.socket_dir}"

    async def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"pkeyd_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(host=str(self.socket_dir), user=self.user, database="postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    bindir = _bindir()
    # Not under pytest's tmp_path: that is private to root, and the server
    # runs as `postgres` when the tests run as root.
    root = Path(tempfile.mkdtemp(prefix="pkeyd-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = PostgresCluster(root)
    subprocess.run(
        _as_owner(
            [str(bindir / "initdb"), "-D", str(cluster.data), "-U", "postgres", "--auth=trust"]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses='' -c unix_socket_directories={root} -c fsync=off"
    subprocess.run(
        _as_owner(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(cluster.data),
                "-o",
                options,
                "-l",
                str(root / "server.log"),
                "-w",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield cluster
    finally:
        subprocess.run(
            _as_owner([str(bindir / "pg_ctl"), "-D", str(cluster.data), "-m", "immediate", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
