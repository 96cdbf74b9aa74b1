"""Engine setup and schema revision checks.

This is the only module that knows which database it talks to: the SQLite
pragmas live here and nowhere else.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from pkeyd.errors import SchemaOutdatedError
from pkeyd.store.models import StateRow


def migrations_dir() -> Path:
    """The Alembic scripts: packaged in a wheel, or the checkout's migrations/."""
    here = Path(__file__).resolve().parent.parent
    packaged = here / "_migrations"
    return packaged if packaged.is_dir() else here.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# How long a statement waits for another connection's lock before it fails.
_BUSY_TIMEOUT_MS = 10_000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers run beside the single writer; synchronous=FULL makes a
    # commit durable before the API acknowledges it, even on power loss.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    cursor.close()
    # The driver would open transactions lazily, before the first write only,
    # which breaks SAVEPOINTs and makes reads see no snapshot; pkeyd emits
    # BEGIN itself (below) instead.
    dbapi_conn.isolation_level = None


# A connection given this execution option opens a write transaction. SQLite
# then takes the write lock at BEGIN (IMMEDIATE), so the generation read first
# cannot be overtaken by another process before the commit.
WRITE_TRANSACTION = "pkeyd_write_transaction"
# The option's value for a write transaction that must not wait: it fails
# at once (WriteLockBusyError) when another connection holds the write lock.
_NOW = "now"


# An engine with this execution option runs the statements of pkeyd.store.direct
# on the driver's cursor: a blocking driver with a positional parameter style.
DIRECT_STATEMENTS = "pkeyd_direct_statements"


class WriteLockBusyError(Exception):
    """Another connection holds a lock a statement needed, and it was not to wait.

    The write lock for WRITE_TRANSACTION="now"; any lock that keeps a reader
    out for stored_generation_now."""


def _sqlite_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get(WRITE_TRANSACTION, False)
    if write != _NOW:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
        return
    # On the driver's own cursor: this runs once per group commit, on the
    # event loop, and needs none of SQLAlchemy's statement handling.
    with _without_waiting(conn.connection) as cursor:
        cursor.execute("BEGIN IMMEDIATE")


@contextlib.contextmanager
def _without_waiting(dbapi_conn: Any) -> Iterator[sqlite3.Cursor]:
    """A cursor whose statements fail at once (WriteLockBusyError) rather than wait for a lock.

    The connection waits for locks again (busy_timeout) once the block ends.
    """
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=0")
        try:
            yield cursor
        except sqlite3.OperationalError as exc:
            # The primary code: SQLite may report an extended one (BUSY_SNAPSHOT, ...).
            if (exc.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise WriteLockBusyError(str(exc)) from exc
            raise
        finally:
            cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


# Plain SQL that SQLite and PostgreSQL read alike.
_STORED_GENERATION = str(
    select(StateRow.desired_generation)
    .where(StateRow.id == 1)
    .compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
)


def stored_generation_now(engine: Engine) -> int | None:
    """The desired generation as stored, read on the calling thread without waiting.

    For the read cache's poll on the event loop (SQLite's blocking engine,
    make_sync_engine): one read of one row on the driver's cursor, where the
    asyncio driver's hop to its thread and back cost about 4 ms of CPU a
    poll, 2% of a core on an idle daemon at the default five polls a second.
    None when SQLite cannot answer at once (another connection holds the
    file locked, or is recovering its WAL): the caller reads it off the loop.
    """
    dbapi_conn = engine.raw_connection()
    try:
        with _without_waiting(dbapi_conn) as cursor:
            row = cursor.execute(_STORED_GENERATION).fetchone()
    except WriteLockBusyError:
        return None
    finally:
        dbapi_conn.close()  # back to the pool
    return int(row[0]) if row else 0


class GenerationProbe:
    """Reads the stored desired generation the cheapest way the database allows.

    For the read cache's poll, five times a second by default, mostly to
    find nothing new. On SQLite: on the event loop (stored_generation_now).
    On PostgreSQL through asyncpg: one statement on the driver's own
    connection, outside any transaction, about a third of the CPU of the
    same read in a session (measured: 0.5-0.65 ms against 1.6-2.1 ms).
    """

    def __init__(self, engine: AsyncEngine, blocking: Engine | None) -> None:
        self._engine = engine
        self._blocking = blocking

    async def read(self) -> int | None:
        """The generation; None when it cannot be had cheaply right now."""
        if self._blocking is not None:
            return stored_generation_now(self._blocking)
        if self._engine.dialect.driver != "asyncpg":
            return None
        async with self._engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            if driver is None:  # the pool's connection was invalidated
                return None
            value = await driver.fetchval(_STORED_GENERATION)
        return int(value or 0)


def begin_write_now(session: Session) -> Connection | None:
    """Open `session`'s write transaction if the write lock is free right now.

    None when another connection holds it: the session is then closed, and
    the caller opens a new one that waits for the lock (off the event loop).
    Taking a free lock costs microseconds, so a writer on the event loop
    need not hand that step to a worker thread. SQLite's blocking engine
    (make_sync_engine) only.
    """
    session.begin()
    try:
        return session.connection(execution_options={WRITE_TRANSACTION: _NOW})
    except WriteLockBusyError:
        session.close()  # BEGIN failed: nothing to roll back
        return None


def make_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(url, pool_pre_ping=True)


def make_sync_engine(url: str) -> Engine | None:
    """A blocking engine on the same SQLite file, for grouped member writes.

    Each statement through the asyncio driver costs a thread hop; on this
    engine a group of member writes runs its statements without one (see
    pkeyd.groupcommit). None for other databases, which keep the asyncio path.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    engine = create_engine(
        parsed.set(drivername="sqlite+pysqlite"), execution_options={DIRECT_STATEMENTS: True}
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _upgrade(conn: Connection, url: str) -> None:
    cfg = alembic_config(url)
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def _revision_state(conn: Connection, url: str) -> tuple[str | None, str | None, bool]:
    current = MigrationContext.configure(conn).get_current_revision()
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    has_tables = bool(inspect(conn).get_table_names())
    return current, head, has_tables


async def migrate(engine: AsyncEngine) -> None:
    """Bring the database to the newest schema (`pkeyd migrate`)."""
    url = engine.url.render_as_string(hide_password=False)
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, url)


async def ensure_schema(engine: AsyncEngine) -> None:
    """Create a brand-new empty database; refuse one at another revision.

    Upgrading an existing database is an operator's decision (backups, other SM
    nodes sharing it), so it is never done behind their back.
    """
    url = engine.url.render_as_string(hide_password=False)
    async with engine.connect() as conn:
        current, head, has_tables = await conn.run_sync(_revision_state, url)
    if current == head:
        return
    if current is None and not has_tables:
        await migrate(engine)
        return
    shown = engine.url.render_as_string(hide_password=True)
    raise SchemaOutdatedError(
        f"database {shown} is at schema revision {current or 'none (not made by pkeyd)'}, "
        f"this pkeyd needs {head}; run: pkeyd migrate --db '{shown}'"
    )
