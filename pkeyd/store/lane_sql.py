"""The statements of grouped member writes, as blocking calls on one connection.

Written once, run two ways: inside the asyncio transaction of a group
commit (through AsyncSession.run_sync), or on a blocking SQLite connection
(pkeyd.groupcommit), where a group of writes costs no thread hop per
statement and each statement runs on the driver's cursor
(pkeyd.store.direct). Never commits.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import (
    BindParameter,
    Executable,
    Insert,
    Table,
    bindparam,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection

from pkeyd.domain import PKey
from pkeyd.history import MemberChange, MemberState
from pkeyd.store import direct
from pkeyd.store.journal import NewRevision
from pkeyd.store.models import (
    KeywordMemberRow,
    MemberRow,
    PartitionRow,
    RevisionChangeRow,
    RevisionRow,
    StateRow,
)

T = TypeVar("T")

# Past this many GUIDs named, a scan of each partition beats many IN lists.
_SCAN_PAST = 5000
# Rows per INSERT: bound parameters stay well under SQLite's and asyncpg's limits.
_INSERT_BATCH = 10_000
_MEMBERS = cast(Table, MemberRow.__table__)
_KEYWORDS = cast(Table, KeywordMemberRow.__table__)
_PARTITIONS = cast(Table, PartitionRow.__table__)
_REVISIONS = cast(Table, RevisionRow.__table__)
_CHANGES = cast(Table, RevisionChangeRow.__table__)


@dataclass(frozen=True, slots=True)
class Head:
    """A partition's identity and the columns a member write needs."""

    id: int
    pkey: PKey
    generation: int
    defmember: str | None


def _rows(
    conn: Connection, statement: Executable, params: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    if direct.direct(conn):
        return direct.rows(conn, statement, params)
    return [tuple(r) for r in conn.execute(statement, params).all()]


def _execute_many(
    conn: Connection, statement: Executable, params: Sequence[Mapping[str, Any]]
) -> None:
    if not params:
        return
    if direct.direct(conn):
        direct.execute_many(conn, statement, params)
    else:
        conn.execute(statement, list(params))


# IN lists: at most _IN_LIST values each, padded (with the last value
# repeated) to a power of two, so that few statements are ever compiled and
# the driver's statement cache keeps them prepared.
_IN_LIST = 512


def _slots(name: str, length: int) -> list[BindParameter[Any]]:
    return [bindparam(f"{name}{i}") for i in range(length)]


def _in_lists(name: str, values: Sequence[T]) -> Iterator[tuple[int, dict[str, T]]]:
    """Per IN list: its length and the parameters of `_slots(name, length)`."""
    for start in range(0, len(values), _IN_LIST):
        batch = values[start : start + _IN_LIST]
        length = 1 << (len(batch) - 1).bit_length()
        padded = [*batch, *[batch[-1]] * (length - len(batch))]
        yield length, {f"{name}{i}": v for i, v in enumerate(padded)}


# The statements, built once (or once per IN list length): building one costs
# more than running it, and a group commit runs each of them once per transaction.
# FOR UPDATE serialises writers of other processes on a shared server
# database; SQLite's BEGIN IMMEDIATE has already taken the write lock.
_LOCKED_GENERATION = select(StateRow.desired_generation).where(StateRow.id == 1).with_for_update()
_SET_GENERATION = (
    update(StateRow).where(StateRow.id == 1).values(desired_generation=bindparam("generation"))
)


@functools.cache
def _heads(length: int) -> Executable:
    return select(
        PartitionRow.id, PartitionRow.pkey, PartitionRow.generation, PartitionRow.defmember
    ).where(PartitionRow.pkey.in_(_slots("p", length)))


_MEMBER_STATES = select(
    MemberRow.partition_id, MemberRow.guid, MemberRow.membership, MemberRow.index0
)
_STATES_ALL = _MEMBER_STATES.where(MemberRow.partition_id == bindparam("pid"))


@functools.cache
def _states_named(length: int) -> Executable:
    return _MEMBER_STATES.where(MemberRow.guid.in_(_slots("g", length)))


@functools.cache
def _listing_pkeys(length: int) -> Executable:
    return (
        select(MemberRow.guid, PartitionRow.pkey)
        .join(PartitionRow)
        .where(MemberRow.guid.in_(_slots("g", length)))
    )


_CA_KEYWORD_PKEYS = (
    select(PartitionRow.pkey)
    .join(KeywordMemberRow)
    .where(or_(KeywordMemberRow.keyword == "ALL", KeywordMemberRow.keyword == "ALL_CAS"))
    .distinct()
)
_STAMP = (
    update(_PARTITIONS)
    .where(_PARTITIONS.c.id == bindparam("pid"))
    .values(generation=bindparam("to_generation"), updated_at=bindparam("to_updated"))
)
_ADD_REVISION = insert(_REVISIONS)
_ADD_CHANGE = insert(_CHANGES)


def _by_target(table: Table, key: str) -> tuple[Any, Any, Any]:
    """Delete, insert and update of a member table, by (partition id, GUID or keyword)."""
    match = (table.c.partition_id == bindparam("pid"), table.c[key] == bindparam("target"))
    changed: dict[str, Any] = {
        "membership": bindparam("to_membership"),
        "index0": bindparam("to_index0"),
    }
    return delete(table).where(*match), insert(table), update(table).where(*match).values(changed)


_MEMBER_WRITES = {False: _by_target(_MEMBERS, "guid"), True: _by_target(_KEYWORDS, "keyword")}


def locked_generation(conn: Connection) -> int:
    found = _rows(conn, _LOCKED_GENERATION)
    return int(found[0][0]) if found else 0


def set_generation(conn: Connection, generation: int) -> None:
    _execute_many(conn, _SET_GENERATION, [{"generation": generation}])


def heads(conn: Connection, pkeys: Sequence[int]) -> dict[int, Head]:
    found: dict[int, Head] = {}
    for length, params in _in_lists("p", pkeys):
        for id_, pkey, generation, defmember in _rows(conn, _heads(length), params):
            found[pkey] = Head(id_, PKey(pkey), generation, defmember)
    return found


def states_of(conn: Connection, named: Mapping[int, set[str]]) -> dict[int, dict[str, MemberState]]:
    """The stored state of the GUIDs named per partition id (absent: not a member)."""
    found: dict[int, dict[str, MemberState]] = {pid: {} for pid in named}
    guids = set().union(*named.values()) if named else set()
    if len(guids) > _SCAN_PAST:
        for pid, wanted in named.items():
            rows = _rows(conn, _STATES_ALL, {"pid": pid})
            found[pid] = {g: (m, i) for _, g, m, i in rows if g in wanted}
        return found
    for length, params in _in_lists("g", sorted(guids)):
        # Every partition's rows of these GUIDs: a GUID is in few partitions.
        for pid, g, m, i in _rows(conn, _states_named(length), params):
            if g in named.get(pid, ()):
                found[pid][g] = (m, i)
    return found


def explicit_pkeys(conn: Connection, guids: Iterable[str]) -> dict[str, set[int]]:
    """PKeys of the partitions that list each GUID."""
    found: dict[str, set[int]] = {}
    for length, params in _in_lists("g", sorted(guids)):
        for guid, pkey in _rows(conn, _listing_pkeys(length), params):
            found.setdefault(str(guid), set()).add(int(pkey))
    return found


def ca_keyword_pkeys(conn: Connection) -> set[int]:
    """PKeys of the partitions whose keywords cover every CA port (ALL, ALL_CAS)."""
    return {int(p) for (p,) in _rows(conn, _CA_KEYWORD_PKEYS)}


def write_many(conn: Connection, changes: Iterable[tuple[int, MemberChange]]) -> None:
    """Make member changes of any partitions: deletes, inserts, updates, each one statement."""
    tables = {False: (_MEMBERS, "guid"), True: (_KEYWORDS, "keyword")}
    added: dict[bool, list[dict[str, object]]] = {False: [], True: []}
    altered: dict[bool, list[dict[str, object]]] = {False: [], True: []}
    gone: dict[bool, list[dict[str, object]]] = {False: [], True: []}
    for pid, change in changes:
        keyword = change.is_keyword
        if change.after is None:
            gone[keyword].append({"pid": pid, "target": change.target})
        elif change.before is None:
            added[keyword].append(
                {
                    "partition_id": pid,
                    tables[keyword][1]: change.target,
                    "membership": change.after[0],
                    "index0": change.after[1],
                }
            )
        else:
            altered[keyword].append(
                {"pid": pid, "target": change.target, "to_membership": change.after[0],
                 "to_index0": change.after[1]}
            )  # fmt: skip
    for keyword, (remove, add, alter) in _MEMBER_WRITES.items():
        _execute_many(conn, remove, gone[keyword])
        rows = added[keyword]
        for start in range(0, len(rows), _INSERT_BATCH):
            _insert_rows(conn, add, rows[start : start + _INSERT_BATCH])
        _execute_many(conn, alter, altered[keyword])


# Past this many rows an INSERT goes to the driver directly (below).
_DRIVER_ROWS = 500
_compiled: dict[tuple[int, str], tuple[str, tuple[str, ...]] | None] = {}


def _insert_rows(conn: Connection, statement: Insert, rows: list[dict[str, object]]) -> None:
    """executemany of an INSERT; many rows are handed to the driver as they are.

    A bulk add inserts 100,000 members, and SQLAlchemy's per-row parameter
    processing costs about a third as much as the insert itself. The
    statement is still compiled by SQLAlchemy for the database at hand (once),
    and the values are plain str, int and bool, which every driver binds alike.
    """
    key = (id(statement), conn.dialect.name)  # the statements are module constants
    if key not in _compiled:
        compiled = statement.compile(dialect=conn.dialect)
        positional = compiled.positional and compiled.positiontup is not None
        _compiled[key] = (str(compiled), tuple(compiled.positiontup or ())) if positional else None
    driver = _compiled[key]
    if len(rows) < _DRIVER_ROWS or driver is None:
        _execute_many(conn, statement, rows)
        return
    sql, names = driver
    conn.exec_driver_sql(sql, [tuple(row[n] for n in names) for row in rows])


def add_revisions(conn: Connection, new: Sequence[NewRevision], at: datetime) -> None:
    """Several revisions in two statements."""
    if not new:
        return
    _execute_many(
        conn,
        _ADD_REVISION,
        [
            {"generation": r.generation, "at": at, "actor": r.actor, "action": r.action,
             "restored": None}
            for r in new
        ],
    )  # fmt: skip
    _execute_many(
        conn,
        _ADD_CHANGE,
        [
            {"generation": r.generation, "pkey": d.pkey.value, "delta": d.dumps()}
            for r in new
            for d in r.deltas
        ],
    )


def stamp_many(conn: Connection, generations: Mapping[int, int], now: datetime) -> None:
    """Give each partition (by id) the generation of the last change made to it."""
    _execute_many(
        conn,
        _STAMP,
        [{"pid": pid, "to_generation": g, "to_updated": now} for pid, g in generations.items()],
    )
