from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg import PostgresCluster, postgres_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
async def pg_url(pg_cluster: PostgresCluster) -> str:
    return await pg_cluster.create_database()
