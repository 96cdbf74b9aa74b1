"""Read the PKey tables of a simulated fabric's HCA ports, for assertions.

The tables are read from the ports themselves (SMP Get PKeyTable through
``smpquery pkeys``), not from OpenSM's SA cache: a test must see what the
hardware would enforce, which is exactly what a broken partitions.conf wipes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable
from typing import Literal

from pkeyd.sim.fabric import SimError, SimFabric

Membership = Literal["full", "limited"]
PKeyTables = dict[int, list[int]]

FULL_MEMBER_BIT = 0x8000
# ibsim serves 10 clients in total and OpenSM holds one; more parallel tools
# only collect "connect failed" and retry, so stay well under the limit.
DEFAULT_CONCURRENCY = 6
# "  8: 0x0000 0x8a12 ..." - index of the first entry, then up to 8 entries
_ROW = re.compile(r"^\s*(\d+):((?:\s+0x[0-9a-fA-F]{4})+)\s*$")


def pkey_membership(table: list[int], pkey: int) -> Membership | None:
    """How a port with this table belongs to ``pkey`` (membership bit ignored).

    A table holding both the full and the limited entry (allow_both_pkeys)
    counts as full: the port can talk to every member.
    """
    if not 0 <= pkey <= 0xFFFF:
        raise ValueError(f"PKey {pkey:#x} is not a 16-bit value")
    base = pkey & ~FULL_MEMBER_BIT
    if base | FULL_MEMBER_BIT in table:
        return "full"
    if base in table:
        return "limited"
    return None


def parse_smpquery_pkeys(output: str) -> list[int]:
    """Non-zero entries of ``smpquery pkeys`` output, in table order."""
    entries: list[int] = []
    for line in output.splitlines():
        m = _ROW.match(line)
        if m is None:
            continue  # e.g. the trailing "64 pkeys capacity for this port"
        if int(m.group(1)) != len(entries):
            raise SimError(f"smpquery pkeys output out of order at {line!r}")
        entries.extend(int(v, 16) for v in m.group(2).split())
    if not entries:
        raise SimError(f"no PKey table in smpquery output: {output[:200]!r}")
    return [e for e in entries if e != 0]


async def read_pkey_tables(
    fabric: SimFabric,
    port_guids: Iterable[int] | None = None,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> PKeyTables:
    """Port GUID -> non-zero PKey entries (raw, full bit included), table order.

    ``port_guids`` defaults to every cabled HCA port of the topology. LIDs are
    resolved once per fabric run (``SimFabric.port_lids``) and again only when
    a port is missing, e.g. after an ibsim ReLink.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    port_numbers = {guid: port for _, port, guid in fabric.topology.hca_ports()}
    wanted = sorted(set(fabric.topology.hca_port_guids() if port_guids is None else port_guids))
    unknown = [g for g in wanted if g not in port_numbers]
    if unknown:
        raise ValueError(f"not cabled HCA ports of the topology: {_guids(unknown)}")

    lids = await fabric.port_lids()
    if any(g not in lids for g in wanted):
        lids = await fabric.port_lids(refresh=True)
    missing = [g for g in wanted if g not in lids]
    if missing:
        raise SimError(f"ports without a LID (down or unreachable): {_guids(missing)}")

    gate = asyncio.Semaphore(concurrency)

    async def read_one(guid: int) -> list[int]:
        async with gate:
            out = await fabric.run_tool(
                "smpquery", "pkeys", str(lids[guid]), str(port_numbers[guid])
            )
        try:
            return parse_smpquery_pkeys(out)
        except SimError as exc:
            raise SimError(f"port {guid:#018x} (LID {lids[guid]}): {exc}") from None

    # TaskGroup: the first failure cancels the other reads instead of letting
    # them run on against a fabric the caller has given up on.
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = {guid: tg.create_task(read_one(guid)) for guid in wanted}
    except ExceptionGroup as group:
        # Callers handle one SimError, not a group of near-identical ones.
        first = next((e for e in group.exceptions if isinstance(e, SimError)), None)
        if first is None:
            raise
        raise first from None
    return {guid: task.result() for guid, task in tasks.items()}


async def wait_for_pkeys(
    fabric: SimFabric,
    predicate: Callable[[PKeyTables], bool],
    port_guids: Iterable[int] | None = None,
    *,
    # A deadline of our own rather than asyncio.timeout(): on expiry we still
    # hold the last tables, and they are the useful part of the failure.
    timeout: float = 30.0,  # noqa: ASYNC109
    interval: float = 0.2,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> PKeyTables:
    """Poll the PKey tables until ``predicate`` holds; AssertionError on timeout.

    Read errors while polling are remembered, not raised: a fabric that is
    being reprogrammed may answer late. The failure message shows the last
    tables (or the last error) for the ports concerned only.
    """
    guids = None if port_guids is None else list(port_guids)
    deadline = time.monotonic() + timeout
    last: PKeyTables | None = None
    last_error: Exception | None = None
    while True:
        try:
            last = await read_pkey_tables(fabric, guids, concurrency=concurrency)
            last_error = None
            if predicate(last):
                return last
        except SimError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(interval)
    detail = format_tables(last) if last is not None else "<no table read>"
    if last_error is not None:
        detail += f"\nlast read error: {last_error}"
    raise AssertionError(f"PKey tables did not match within {timeout:g}s:\n{detail}")


def format_tables(tables: PKeyTables, *, limit: int = 40) -> str:
    """One line per port, ``0x<guid>: 0xffff 0x8a12``; at most ``limit`` lines."""
    lines = [
        f"{guid:#018x}: {' '.join(f'{e:#06x}' for e in table) or '<empty>'}"
        for guid, table in sorted(tables.items())
    ]
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more ports"]
    return "\n".join(lines)


def _guids(guids: Iterable[int]) -> str:
    return ", ".join(f"{g:#018x}" for g in guids)
