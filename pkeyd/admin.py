"""Offline commands on a store: migrate, render, import. The daemon need not run."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TextIO

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pkeyd.api.schemas import partition_json
from pkeyd.config import Settings
from pkeyd.domain import DEFAULT_PKEY
from pkeyd.opensm.importer import as_state, plan_import
from pkeyd.opensm.parse import parse
from pkeyd.opensm.render import render
from pkeyd.opensm.selfcheck import self_check
from pkeyd.opensm.writer import atomic_write
from pkeyd.service import PartitionService, load_desired_state
from pkeyd.store.engine import ensure_schema, make_engine, make_sessionmaker, migrate


@asynccontextmanager
async def open_store(url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(url)
    try:
        await ensure_schema(engine)
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


async def migrate_store(url: str) -> None:
    engine = make_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


async def render_store(url: str, output: Path | None, out: TextIO = sys.stdout) -> int:
    """Print or write the file the daemon would write now (the same bytes)."""
    async with open_store(url) as sessions:
        state = await load_desired_state(sessions)
    text = render(state)
    if output is None:
        out.write(text)
    else:
        atomic_write(output, text.encode("ascii"))
    return 0


async def import_file(
    url: str,
    path: Path,
    settings: Settings,
    *,
    dry_run: bool,
    replace: bool,
    out: TextIO = sys.stdout,
) -> int:
    """Take over a hand-written partitions.conf. 0 done, 2 refused."""
    data = await asyncio.to_thread(path.read_bytes)
    result = parse(data, allow_both_pkeys=settings.allow_both_pkeys, qos=settings.qos)
    for d in result.diagnostics:
        out.write(f"{path}:{d.line}: {d.severity}: {d.code}: {d.message}\n")
    if result.fatal is not None:
        out.write(
            f"{path}: refused: OpenSM would drop every partition on this file "
            f"(line {result.fatal.line}: {result.fatal.message})\n"
        )
        return 2
    plan = plan_import(result)
    for note in plan.notes:
        out.write(f"{path}: note: {note}\n")
    problems = self_check(
        render(as_state(plan)),
        as_state(plan),
        allow_both_pkeys=settings.allow_both_pkeys,
        qos=settings.qos,
    )
    if problems:
        out.write(f"{path}: refused: pkeyd cannot render this file faithfully:\n")
        out.writelines(f"  {p}\n" for p in problems)
        return 2
    if dry_run:
        out.write(json.dumps([partition_json(p) for p in plan.partitions], indent=2) + "\n")
        return 0
    async with open_store(url) as sessions:
        service = PartitionService(sessions, settings, on_commit=lambda: None)
        stored = [p for p in await service.list_partitions() if p.pkey.value != DEFAULT_PKEY]
        if stored and not replace:
            out.write(
                f"{path}: refused: the store already holds {len(stored)} partitions; "
                "pass --replace to make this file the whole desired state\n"
            )
            return 2
        generation = await service.replace_all(plan.partitions)
    out.write(
        f"{path}: imported {len(plan.partitions)} partitions as generation {generation}; "
        "a running pkeyd applies them on its next pass\n"
    )
    return 0
