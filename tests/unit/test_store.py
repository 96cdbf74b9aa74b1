from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text

from pkeyd.cli import main
from pkeyd.errors import SchemaOutdatedError
from pkeyd.store.engine import alembic_config, ensure_schema, make_engine, migrate

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/store.db"


async def test_new_empty_database_is_created_with_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(_url(tmp_path))
    try:
        await ensure_schema(engine)
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == 2  # FULL
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
            assert version == HEAD
        await ensure_schema(engine)  # at head: nothing to do
    finally:
        await engine.dispose()


async def test_database_at_another_revision_is_refused_naming_migrate(tmp_path: Path) -> None:
    engine = make_engine(_url(tmp_path))
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
        with pytest.raises(SchemaOutdatedError, match="pkeyd migrate --db"):
            await ensure_schema(engine)
    finally:
        await engine.dispose()


async def test_foreign_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE unrelated (x INTEGER)")
    engine = make_engine(_url(tmp_path))
    try:
        with pytest.raises(SchemaOutdatedError, match="not made by pkeyd"):
            await ensure_schema(engine)
    finally:
        await engine.dispose()


def test_migrate_command_brings_an_old_database_to_head(tmp_path: Path) -> None:
    url = _url(tmp_path)
    assert main(["migrate", "--db", url]) == 0
    command.downgrade(alembic_config(url), "base")
    with sqlite3.connect(tmp_path / "store.db") as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (0,)
    assert main(["migrate", "--db", url]) == 0
    with sqlite3.connect(tmp_path / "store.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (HEAD,)
        assert conn.execute("SELECT desired_generation FROM state").fetchone() == (0,)


def test_serve_refuses_outdated_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(tmp_path)
    assert main(["migrate", "--db", url]) == 0
    with sqlite3.connect(tmp_path / "store.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0000'")
    rc = main(
        [
            "serve",
            "--db",
            url,
            "--listen",
            "127.0.0.1:0",
            "--partitions-conf",
            str(tmp_path / "p.conf"),
            "--opensm-pid-file",
            str(tmp_path / "pid"),
        ]
    )
    assert rc == 2
    assert "pkeyd migrate --db" in capsys.readouterr().err


def test_member_inserts_check_membership_without_a_table_per_row(tmp_path: Path) -> None:
    """SQLite builds a temporary B-tree for an IN list in a CHECK on every row written."""
    url = _url(tmp_path)
    assert main(["migrate", "--db", url]) == 0
    with sqlite3.connect(tmp_path / "store.db") as conn:
        for table, column in (("members", "guid"), ("keyword_members", "keyword")):
            plan = conn.execute(
                f"EXPLAIN INSERT INTO {table} (partition_id, {column}, membership, index0) "
                "VALUES (1, 'x', 'full', 0)"
            ).fetchall()
            opcodes = {row[1] for row in plan}
            assert "Insert" in opcodes
            assert "OpenEphemeral" not in opcodes, table
