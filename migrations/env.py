"""Alembic environment: runs on the connection pkeyd hands in, or on its own.

pkeyd calls Alembic with an open connection (config.attributes["connection"]);
the plain `alembic` command line builds an async engine from sqlalchemy.url.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from pkeyd.store.engine import make_engine
from pkeyd.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    async with engine.begin() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_standalone())


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported; run pkeyd migrate")
run_migrations_online()
