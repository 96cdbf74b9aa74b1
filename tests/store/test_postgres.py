"""The store on PostgreSQL, the backend several SM nodes share: same schema, same answers.

Everything here also runs on SQLite elsewhere; these tests prove that nothing
in the migrations, the repository or the service is SQLite-only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from pkeyd.api.keys import SERVICE
from pkeyd.config import Settings
from pkeyd.store.engine import GenerationProbe, alembic_config, ensure_schema, make_engine
from tests.helpers import Daemon, running_daemon, sqlalchemy_statements
from tests.unit.test_retention import check_pruning_keeps_what_restores


class _Reloads:
    async def reload(self) -> None:
        return None


def _settings(db_url: str, tmp: Path) -> Settings:
    return Settings(
        db_url=db_url,
        partitions_conf=tmp / "partitions.conf",
        opensm_pid_file=tmp / "opensm.pid",
        state_dir=tmp / "state",
        fabric_reader="off",
        coalesce_delay_s=0.0,
        min_reload_interval_s=0.0,
    )


async def test_migrations_go_up_down_and_up_again(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        await ensure_schema(engine)  # a brand-new database gets the whole schema

        def tables(conn: Any) -> set[str]:
            return set(inspect(conn).get_table_names())

        async with engine.connect() as conn:
            created = await conn.run_sync(tables)
        assert {"partitions", "members", "keyword_members", "mgroups", "state"} <= created
        sync_url = pg_url  # alembic runs the async URL through env.py
        await asyncio.to_thread(command.downgrade, alembic_config(sync_url), "base")
        async with engine.connect() as conn:
            assert await conn.run_sync(tables) <= {"alembic_version"}
        await asyncio.to_thread(command.upgrade, alembic_config(sync_url), "head")
        async with engine.connect() as conn:
            assert await conn.run_sync(tables) == created
    finally:
        await engine.dispose()


async def test_the_database_refuses_a_membership_outside_the_three(
    pg_url: str, tmp_path: Path
) -> None:
    for url in (f"sqlite+aiosqlite:///{tmp_path}/pkeyd.db", pg_url):
        engine = make_engine(url)
        try:
            await ensure_schema(engine)

            def checks(sync: Any) -> dict[str, list[str | None]]:
                tables = ("members", "keyword_members")
                return {
                    t: [c["name"] for c in inspect(sync).get_check_constraints(t)] for t in tables
                }

            async with engine.connect() as conn:
                named = await conn.run_sync(checks)
            assert named == {
                "members": ["ck_members_membership"],
                "keyword_members": ["ck_keyword_members_membership"],
            }, url
            async with engine.begin() as conn:
                pid = (
                    await conn.execute(text("SELECT id FROM partitions WHERE pkey = 32767"))
                ).scalar_one()
                for table, column, target in (
                    ("members", "guid", "0x0002c90300000001"),
                    ("keyword_members", "keyword", "ALL_CAS"),
                ):
                    insert = text(
                        f"INSERT INTO {table} (partition_id, {column}, membership, index0) "
                        "VALUES (:pid, :target, :membership, false)"
                    )
                    for membership in ("full", "limited", "both"):
                        await conn.execute(insert, {"pid": pid, "target": target,
                                                    "membership": membership})  # fmt: skip
                        await conn.execute(text(f"DELETE FROM {table} WHERE {column} = :t"),
                                           {"t": target})  # fmt: skip
                    with pytest.raises(IntegrityError):
                        async with conn.begin_nested():
                            await conn.execute(insert, {"pid": pid, "target": target,
                                                        "membership": "Full"})  # fmt: skip
        finally:
            await engine.dispose()


async def _scenario(d: Daemon) -> str:
    """A bit of everything the API writes; returns the file pkeyd wrote for it."""
    guids = [f"0x0002c9030000{i:04x}" for i in range(1, 9)]
    await d.json(
        "POST",
        "/api/v1/partitions",
        201,
        json={
            "name": "tenant-a",
            "pkey": "0x0a12",
            "ipoib": True,
            "mtu": 4,
            "members": [{"guid": g} for g in guids[:4]],
            "keywords": [{"keyword": "SELF", "membership": "full"}],
            "mgroups": [{"mgid": "ff12:1234::5", "rate": 7}],
        },
    )
    second = {"name": "tenant-b", "defmember": "limited"}
    await d.json("POST", "/api/v1/partitions", 201, json=second)
    await d.json(
        "POST",
        "/api/v1/partitions/0x0001/members",
        200,
        json={"members": [{"guid": g, "index0": True} for g in guids[3:]]},
    )
    await d.json("PATCH", "/api/v1/partitions/0x0a12", 200, json={"sl": None, "rate": 7})
    await d.json("DELETE", f"/api/v1/partitions/0x0a12/members/{guids[0]}", 204)
    await d.json("POST", "/api/v1/partitions", 201, json={"name": "gone", "pkey": "0x0b00"})
    await d.json("DELETE", "/api/v1/partitions/0x0b00", 204)
    await d.json("POST", "/api/v1/partitions", 409, json={"name": "tenant-b"})
    # The API's write options on this backend: PUT, bulk removal, If-Match,
    # Idempotency-Key, a dry run, and a restore from the revision history.
    await d.json(
        "PUT",
        "/api/v1/partitions/0x0001/members",
        200,
        json={"members": [{"guid": g} for g in guids[2:7]]},
    )
    await d.json(
        "POST", "/api/v1/partitions/0x0001/members/remove", 200, json={"guids": guids[5:7]}
    )
    # A bulk add: its rows go to the database driver in one executemany.
    many = [{"guid": f"0x0002c9031000{i:04x}", "index0": i % 2 == 0} for i in range(1, 1201)]
    bulk = {"name": "bulk", "pkey": "0x0c00", "defmember": "limited"}
    await d.json("POST", "/api/v1/partitions", 201, json=bulk)
    added = await d.json("POST", "/api/v1/partitions/0x0c00/members", 200, json={"members": many})
    assert [(m["guid"], m["membership"], m["index0"]) for m in added["members"]] == [
        (m["guid"], "limited", m["index0"]) for m in many
    ]
    stale = await d.client.get("/api/v1/partitions/0x0001")
    tag = stale.headers["ETag"]
    await d.json("PATCH", "/api/v1/partitions/0x0001", 200, json={"ipoib": True})
    await d.json("PATCH", "/api/v1/partitions/0x0001", 412, json={"ipoib": False},
                 headers={"If-Match": tag})  # fmt: skip
    key = {"Idempotency-Key": "create-c"}
    once = await d.json("POST", "/api/v1/partitions", 201, json={"name": "c"}, headers=key)
    twice = await d.json("POST", "/api/v1/partitions", 201, json={"name": "c"}, headers=key)
    assert once == twice
    dry = await d.json("DELETE", "/api/v1/partitions/0x0002?dry_run=true", 200)
    assert dry["dry_run"] is True
    history = await d.json("GET", "/api/v1/revisions?limit=1000", 200)
    created_b = [r["id"] for r in history["revisions"] if r["action"] == "create"][-2]
    await d.json("POST", f"/api/v1/revisions/{created_b}/restore", 200)
    await d.wait_applied()
    return d.settings.partitions_conf.read_text()


async def test_the_api_writes_the_same_file_on_postgresql_as_on_sqlite(
    pg_url: str, tmp_path: Path
) -> None:
    files = []
    for name, url in (("sqlite", f"sqlite+aiosqlite:///{tmp_path}/pkeyd.db"), ("pg", pg_url)):
        (tmp_path / name).mkdir()
        async with running_daemon(_settings(url, tmp_path / name), _Reloads()) as d:
            await d.wait_applied()
            files.append(await _scenario(d))
    assert files[0] == files[1]
    assert "tenant-a=0x0a12" in files[1]
    assert "mgid=ff12:1234::5" in files[1]


async def test_revisions_are_pruned_on_postgresql_as_on_sqlite(pg_url: str, tmp_path: Path) -> None:
    async with running_daemon(_settings(pg_url, tmp_path), _Reloads()) as d:
        await d.wait_applied()
        await check_pruning_keeps_what_restores(d)


async def test_two_daemons_on_one_database_keep_names_and_pkeys_unique(
    pg_url: str, tmp_path: Path
) -> None:
    """Two SM nodes racing to create the same partition: the database decides."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    engine = make_engine(pg_url)
    await ensure_schema(engine)
    await engine.dispose()
    async with (
        running_daemon(_settings(pg_url, tmp_path / "a"), _Reloads()) as a,
        running_daemon(_settings(pg_url, tmp_path / "b"), _Reloads()) as b,
    ):
        for round_ in range(10):
            body = {"name": f"race-{round_}", "pkey": f"0x{0x100 + round_:04x}"}
            answers = await asyncio.gather(
                a.client.post("/api/v1/partitions", json=body),
                b.client.post("/api/v1/partitions", json=body),
            )
            assert sorted(r.status for r in answers) == [201, 409]
        listed = await a.json("GET", "/api/v1/partitions", 200)
        assert len([p for p in listed["partitions"] if p["name"].startswith("race-")]) == 10

        # Both nodes adding members to one partition at once: no lost update.
        async def add(node: Daemon, i: int) -> None:
            member = {"guid": f"0x0002c90300{i:06x}"}
            await node.json(
                "POST", "/api/v1/partitions/0x0100/members", 200, json={"members": [member]}
            )

        await asyncio.gather(*(add(a if i % 2 else b, i) for i in range(1, 51)))
        for node in (a, b):
            await asyncio.sleep(node.settings.cache_refresh_s * 2)  # the other's writes
            members = (await node.json("GET", "/api/v1/partitions/0x0100", 200))["members"]
            assert len(members) == 50


async def test_the_cache_poll_reads_the_generation_on_asyncpg_directly(
    pg_url: str, tmp_path: Path
) -> None:
    """Nothing new: the poll ends at one statement on the driver, none through SQLAlchemy."""
    async with running_daemon(_settings(pg_url, tmp_path), _Reloads()) as d:
        await d.json("POST", "/api/v1/partitions", 201, json={"name": "t", "pkey": "0x0a12"})
        service = d.app[SERVICE]
        status = await d.json("GET", "/api/v1/status", 200)
        engine = make_engine(pg_url)
        try:
            assert await GenerationProbe(engine, None).read() == status["desired_generation"]
        finally:
            await engine.dispose()
        assert await service.refresh_cache() == 0
        with sqlalchemy_statements() as executed:
            assert await service.refresh_cache() == 0
        assert executed == []
