"""Grouped member writes on the driver's cursor (pkeyd.store.direct): the same rows,
values and conversions as through SQLAlchemy, and no fallback under real load."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from sqlalchemy import bindparam, create_engine, insert, select
from sqlalchemy.engine import Connection, Engine, make_url

from pkeyd.config import Settings
from pkeyd.domain import PKey
from pkeyd.history import MemberChange
from pkeyd.store import direct, lane_sql
from pkeyd.store.engine import make_sync_engine
from pkeyd.store.journal import NewRevision
from pkeyd.store.models import PartitionRow, RevisionRow
from tests.helpers import Daemon


def guid(i: int) -> str:
    return f"0x0002c903{i:08x}"


def _engines(settings: Settings) -> Iterator[tuple[str, Engine]]:
    """The blocking engine of group commits (driver path), and a plain SQLAlchemy one."""
    fast = make_sync_engine(settings.db_url)
    assert fast is not None
    plain = create_engine(make_url(settings.db_url).set(drivername="sqlite+pysqlite"))
    yield "driver", fast
    yield "sqlalchemy", plain


async def _populate(daemon: Daemon) -> None:
    members = [
        {"guid": guid(i), "membership": "limited" if i % 3 == 0 else "full", "index0": i % 4 == 0}
        for i in range(700)
    ]
    await daemon.json("POST", "/api/v1/partitions", 201,
                      json={"name": "a", "pkey": "0x0a12", "members": members})  # fmt: skip
    await daemon.json("POST", "/api/v1/partitions", 201,
                      json={"name": "b", "pkey": "0x0a13", "members": members[::7],
                            "keywords": [{"keyword": "ALL_CAS"}]})  # fmt: skip
    await daemon.wait_applied()


def _reads(conn: Connection, pids: list[int]) -> dict[str, Any]:
    # 1,000 GUIDs: several IN lists, the last padded; 300 of them stored nowhere.
    named = {pid: {guid(i) for i in range(0, 1000)} for pid in pids}
    return {
        "heads": lane_sql.heads(conn, [0x0A12, 0x0A13, 0x0ABC]),
        "states": lane_sql.states_of(conn, named),
        "listed": lane_sql.explicit_pkeys(conn, [guid(i) for i in range(0, 1000)]),
        "keywords": lane_sql.ca_keyword_pkeys(conn),
        "generation": lane_sql.locked_generation(conn),
    }


async def test_the_driver_path_reads_what_sqlalchemy_reads(
    daemon: Daemon, settings: Settings
) -> None:
    await _populate(daemon)
    seen = {}
    for name, engine in _engines(settings):
        with engine.connect() as conn:
            assert direct.direct(conn) == (name == "driver")
            heads = lane_sql.heads(conn, [0x0A12, 0x0A13])
            seen[name] = _reads(conn, [h.id for h in heads.values()])
        engine.dispose()
    assert seen["driver"] == seen["sqlalchemy"]
    got = seen["driver"]
    assert set(got["heads"]) == {0x0A12, 0x0A13}  # 0x0abc does not exist
    a, b = got["heads"][0x0A12], got["heads"][0x0A13]
    assert a.pkey == PKey(0x0A12)
    assert len(got["states"][a.id]) == 700
    assert len(got["states"][b.id]) == 100
    assert got["states"][a.id][guid(0)] == ("limited", True)
    assert got["states"][a.id][guid(1)] == ("full", False)
    # Booleans come back as bool, as SQLAlchemy's own conversion makes them.
    assert {type(i) for _, i in got["states"][a.id].values()} == {bool}
    assert got["listed"][guid(7)] == {0x0A12, 0x0A13}
    assert got["listed"][guid(8)] == {0x0A12}
    assert guid(900) not in got["listed"]
    assert 0x0A13 in got["keywords"]
    assert 0x0A12 not in got["keywords"]
    assert got["generation"] == (await daemon.wait_applied())["desired_generation"]


async def test_the_driver_path_writes_what_sqlalchemy_reads_back(
    daemon: Daemon, settings: Settings
) -> None:
    await _populate(daemon)
    fast, plain = (engine for _, engine in _engines(settings))
    now = datetime(2026, 11, 28, 9, 30, 15, 123456, tzinfo=UTC)
    with fast.begin() as conn:
        head = lane_sql.heads(conn, [0x0A12])[0x0A12]
        first = lane_sql.locked_generation(conn)
        changes = [
            (head.id, MemberChange(guid(0), ("limited", True), None)),  # removed
            (head.id, MemberChange(guid(1), ("full", False), ("limited", True))),  # changed
            (head.id, MemberChange(guid(5000), None, ("full", True))),  # added
            (head.id, MemberChange("ALL", None, ("limited", False))),  # a keyword
        ]
        lane_sql.write_many(conn, changes)
        lane_sql.add_revisions(conn, [NewRevision(first + 1, "tester", "test", ())], now)
        lane_sql.stamp_many(conn, {head.id: first + 1}, now)
        lane_sql.set_generation(conn, first + 1)
    with plain.connect() as conn:
        states = lane_sql.states_of(conn, {head.id: {guid(0), guid(1), guid(5000)}})[head.id]
        assert states == {guid(1): ("limited", True), guid(5000): ("full", True)}
        assert {0x0A12, 0x0A13} <= lane_sql.ca_keyword_pkeys(conn)
        assert lane_sql.locked_generation(conn) == first + 1
        at = conn.scalar(select(RevisionRow.at).where(RevisionRow.generation == first + 1))
        updated = conn.scalar(select(PartitionRow.updated_at).where(PartitionRow.id == head.id))
        generation = conn.scalar(select(PartitionRow.generation).where(PartitionRow.id == head.id))
    # The timestamps went through the column type's own conversion: aware, exact.
    assert at == now
    assert updated == now
    assert generation == first + 1
    fast.dispose()
    plain.dispose()


async def test_statements_it_cannot_run_as_written_are_refused(
    daemon: Daemon, settings: Settings
) -> None:
    fast = make_sync_engine(settings.db_url)
    assert fast is not None
    with fast.connect() as conn:
        expanding = select(PartitionRow.id).where(
            PartitionRow.pkey.in_(bindparam("pkeys", expanding=True))
        )
        with pytest.raises(TypeError, match="expanded at execution"):
            direct.rows(conn, expanding, {"pkeys": [1, 2]})
        # Columns left out of an INSERT would need SQLAlchemy's defaults.
        partial = insert(PartitionRow)
        with pytest.raises(TypeError, match="default"):
            direct.execute_many(conn, partial, [{"pkey": 5, "name": "x"}])
        with pytest.raises(TypeError, match="not given"):
            direct.rows(conn, select(PartitionRow.id).where(PartitionRow.pkey == bindparam("p")))
    fast.dispose()


async def test_grouped_writes_run_on_the_driver_path_without_falling_back(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    await daemon.json("POST", "/api/v1/partitions", 201, json={"name": "a", "pkey": "0x0a12"})
    runs = []
    real = direct.rows

    def counted(*args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        runs.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(direct, "rows", counted)
    url = "/api/v1/partitions/0x0a12/members"

    async def add(i: int) -> None:
        body = {"members": [{"guid": guid(i), "membership": "limited", "index0": i % 2 == 0}]}
        await daemon.json("POST", url, 200, json=body)

    async def change_then_remove(i: int) -> None:
        await daemon.json("POST", url, 200, json={"members": [{"guid": guid(i)}]})
        await daemon.json("POST", f"{url}/remove", 200, json={"guids": [guid(i)]})

    with structlog.testing.capture_logs() as logs:
        await asyncio.gather(*(add(i) for i in range(60)))
        await asyncio.gather(*(change_then_remove(i) for i in range(0, 60, 2)))
    assert [e for e in logs if e["event"] == "write_lane_failed"] == []
    assert runs  # the grouped writes read through the driver's cursor
    got = await daemon.json("GET", "/api/v1/partitions/0x0a12", 200)
    assert [(m["guid"], m["membership"], m["index0"]) for m in got["members"]] == [
        (guid(i), "limited", False) for i in range(1, 60, 2)
    ]
    revisions = await daemon.json("GET", "/api/v1/revisions?limit=1000", 200)
    assert len(revisions["revisions"]) == 1 + 60 + 60
