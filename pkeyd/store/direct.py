"""Statements run on the driver's own cursor, compiled by SQLAlchemy once.

A group commit runs about ten statements on the event loop, between
requests. Through SQLAlchemy's execution machinery they cost 2.8 ms a group
there (measured in `pkeyd serve` at 1,000 writes/s): little of that code is
still in the CPU's caches after a round of request handling, and a statement
costs several times what it does in a tight loop. On the driver's cursor the
same group costs 1.7 ms, most of it SQLite's own work. So the statements
are compiled once per dialect, with the column types' own bind and result
conversions taken from SQLAlchemy, and run on the cursor of the
connection's DBAPI connection.

Only a connection whose engine carries the DIRECT_STATEMENTS execution
option (pkeyd.store.engine.make_sync_engine) is used this way; a statement
must be fully written out, with every column it writes named and no
defaults left for SQLAlchemy to fill in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from pkeyd.store.engine import DIRECT_STATEMENTS

Convert = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    base: tuple[Any, ...]  # per position: the statement's own value, if it has one
    given: tuple[tuple[int, str], ...]  # (position, name) of each caller's parameter
    binds: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, conversion)
    results: tuple[Convert, ...]  # per result column; empty if none converts

    def bound(self, params: Mapping[str, Any]) -> Sequence[Any]:
        values = list(self.base)
        for position, name in self.given:
            values[position] = params[name]
        for position, convert in self.binds:
            values[position] = convert(values[position])
        return values


# By (statement identity, dialect, parameter names); the statement is kept
# in the value, so that its identity cannot be reused while cached.
_plans: dict[tuple[int, str, tuple[str, ...]], tuple[Executable, _Plan]] = {}


def direct(conn: Connection) -> bool:
    """Whether `conn` runs statements on the driver's cursor."""
    return bool(conn.get_execution_options().get(DIRECT_STATEMENTS))


def _plan(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> _Plan:
    key = (id(statement), dialect.name, keys)
    hit = _plans.get(key)
    if hit is not None and hit[0] is statement:
        return hit[1]
    assert isinstance(statement, ClauseElement)
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    assert isinstance(compiled, SQLCompiler)
    if not compiled.positional or compiled.positiontup is None:
        raise TypeError(f"{dialect.name}: not a positional parameter style")
    if compiled.insert_prefetch or compiled.update_prefetch or getattr(compiled, "postfetch", ()):
        raise TypeError(f"a default left for SQLAlchemy to fill in: {compiled}")
    names = tuple(compiled.positiontup)
    if compiled.post_compile_params or compiled.literal_execute_params:  # an IN list, say
        raise TypeError(f"a parameter expanded at execution: {compiled}")
    missing = [n for n in names if n not in keys and compiled.binds[n].required]
    if missing:
        raise TypeError(f"parameters not given: {', '.join(missing)}")
    own = compiled.construct_params(dict.fromkeys(keys))
    converts = (compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names)
    columns = getattr(statement, "selected_columns", ())
    results = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
    plan = _Plan(
        sql=str(compiled),
        base=tuple(None if n in keys else own[n] for n in names),
        given=tuple((i, n) for i, n in enumerate(names) if n in keys),
        binds=tuple((i, c) for i, c in enumerate(converts) if c is not None),
        results=results if any(results) else (),
    )
    _plans[key] = (statement, plan)
    return plan


def rows(
    conn: Connection, statement: Executable, params: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """The rows a SELECT returns, converted as SQLAlchemy would."""
    given = params or {}
    plan = _plan(statement, conn.dialect, tuple(given))
    cursor = conn.connection.cursor()
    try:
        cursor.execute(plan.sql, plan.bound(given))
        fetched = cursor.fetchall()
    finally:
        cursor.close()
    if not plan.results:
        return [tuple(r) for r in fetched]
    return [
        tuple(v if c is None else c(v) for v, c in zip(r, plan.results, strict=True))
        for r in fetched
    ]


def execute_many(
    conn: Connection, statement: Executable, params: Sequence[Mapping[str, Any]]
) -> None:
    """An INSERT, UPDATE or DELETE once per parameter set (all with the same names)."""
    if not params:
        return
    plan = _plan(statement, conn.dialect, tuple(params[0]))
    cursor = conn.connection.cursor()
    try:
        if len(params) == 1:
            cursor.execute(plan.sql, plan.bound(params[0]))
        else:
            cursor.executemany(plan.sql, [plan.bound(p) for p in params])
    finally:
        cursor.close()
