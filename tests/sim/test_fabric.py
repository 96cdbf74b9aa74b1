"""End-to-end tests: real ibsim + OpenSM in tmp_path, PKey tables read back."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from pkeyd.sim.fabric import SimError, SimFabric, find_umad2sim, sim_processes
from pkeyd.sim.pkeys import (
    format_tables,
    parse_smpquery_pkeys,
    pkey_membership,
    read_pkey_tables,
    wait_for_pkeys,
)
from pkeyd.sim.topology import fat_tree

_MISSING = [
    tool for tool in ("ibsim", "opensm", "smpquery", "ibnetdiscover") if not shutil.which(tool)
]
if find_umad2sim() is None:
    _MISSING.append("libumad2sim.so")
needs_sim = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"simulated fabric needs {', '.join(_MISSING)} (Debian: opensm, ibsim-utils, "
    "infiniband-diags)",
)

AsyncTest = Callable[..., Coroutine[Any, Any, None]]


def e2e(test: AsyncTest) -> AsyncTest:
    """Mark a test as needing the real simulator (pure helpers below run anyway)."""
    return pytest.mark.e2e(needs_sim(test))


PKEY = 0x0A12


def partition(pkey: int, members: dict[int, str]) -> str:
    listed = ", ".join(f"0x{guid:016x}={kind}" for guid, kind in members.items())
    return f"Default=0x7fff : ALL=full ;\nt=0x{pkey:04x} : {listed} ;\n"


def leftover_processes(fabric: SimFabric, workdir: Path) -> list[str]:
    """Processes of this fabric, found two independent ways: environ and argv."""
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True)
    by_args = [line.strip() for line in ps.stdout.splitlines() if str(workdir) in line]
    by_env = [f"pid {pid} (IBSIM_SOCKNAME)" for pid in sim_processes(fabric.sockname)]
    return by_args + by_env


@e2e
async def test_partition_applied_and_reloaded_on_sighup(tmp_path: Path) -> None:
    topo = fat_tree(8, hcas_per_leaf=4)
    full, limited, outsider, newcomer = topo.hca_port_guids()[1:5]
    fabric = SimFabric(topo, tmp_path)
    fabric.partitions_conf.write_text(partition(PKEY, {full: "full", limited: "limited"}))

    async with fabric:
        pid = int(fabric.pid_file.read_text())
        assert pid == fabric.opensm_pid
        tables = await wait_for_pkeys(
            fabric,
            lambda t: (
                pkey_membership(t[full], PKEY) == "full"
                and pkey_membership(t[limited], PKEY) == "limited"
            ),
            [full, limited, outsider],
        )
        assert PKEY | 0x8000 in tables[full]
        assert PKEY in tables[limited]
        assert PKEY | 0x8000 not in tables[limited]
        assert pkey_membership(tables[outsider], PKEY) is None
        assert tables[outsider] == [0xFFFF]  # Default partition, full member

        # Swap roles and add a member; SIGHUP makes OpenSM re-read the file.
        fabric.partitions_conf.write_text(partition(PKEY, {limited: "full", newcomer: "limited"}))
        started = time.monotonic()
        await fabric.sighup()
        # OpenSM reprograms port after port: wait for every expectation at once,
        # one changed port says nothing about the others.
        tables = await wait_for_pkeys(
            fabric,
            lambda t: (
                pkey_membership(t[limited], PKEY) == "full"
                and pkey_membership(t[newcomer], PKEY) == "limited"
                and pkey_membership(t[full], PKEY) is None
            ),
            [full, limited, newcomer],
            interval=0.02,
        )
        print(f"\nSIGHUP -> tables changed: {time.monotonic() - started:.3f}s")
        assert tables[full] == [0xFFFF]
        assert fabric.parse_errors() == []

    assert fabric.opensm_pid is None
    assert not fabric.pid_file.exists()
    assert leftover_processes(fabric, tmp_path) == []
    await fabric.stop()  # idempotent


@e2e
async def test_two_port_hcas_are_separate_members(tmp_path: Path) -> None:
    topo = fat_tree(4, ports_per_hca=2)
    hca = topo.node("hca-0002")
    port1, port2 = hca.port_guid(1), hca.port_guid(2)
    (tmp_path / "partitions.conf").write_text(partition(PKEY, {port2: "full"}))
    async with SimFabric(topo, tmp_path) as fabric:
        tables = await wait_for_pkeys(
            fabric, lambda t: pkey_membership(t[port2], PKEY) == "full", [port1, port2]
        )
        assert pkey_membership(tables[port1], PKEY) is None
        everything = await read_pkey_tables(fabric)
        assert sorted(everything) == topo.hca_port_guids()
        assert len(everything) == 8
        assert fabric.parse_errors() == []


@e2e
async def test_parse_error_is_reported_and_wipes_partitions(tmp_path: Path) -> None:
    topo = fat_tree(2)
    member = topo.hca_port_guids()[1]
    (tmp_path / "partitions.conf").write_text(
        partition(PKEY, {member: "full"}) + "this is not a statement\n"
    )
    async with SimFabric(topo, tmp_path) as fabric:
        tables = await read_pkey_tables(fabric, [member])
        assert tables[member] == [0xFFFF]
        errors = fabric.parse_errors()
    assert any("PARSE ERROR" in line for line in errors), errors
    assert any("retrying with default config" in line for line in errors), errors


@e2e
async def test_without_partitions_file_every_port_is_default_full(tmp_path: Path) -> None:
    async with SimFabric(fat_tree(3), tmp_path) as fabric:
        assert not fabric.partitions_conf.exists()
        tables = await read_pkey_tables(fabric)
        assert set(map(tuple, tables.values())) == {(0xFFFF,)}


@e2e
async def test_failed_start_leaves_no_process(tmp_path: Path) -> None:
    fabric = SimFabric(fat_tree(2), tmp_path, ready_timeout=0.0)
    with pytest.raises(SimError, match="SUBNET UP"):
        await fabric.start()
    assert leftover_processes(fabric, tmp_path) == []


@e2e
async def test_ibsim_console_command(tmp_path: Path) -> None:
    async with SimFabric(fat_tree(2), tmp_path) as fabric:
        await fabric.ibsim_command("Attached")
        expected = 'connected at "hca-0000"'  # OpenSM's client line
        for _ in range(100):
            if expected in fabric.ibsim_log.read_text():
                break
            await asyncio.sleep(0.02)
        assert expected in fabric.ibsim_log.read_text()
        with pytest.raises(ValueError, match="line breaks"):
            await fabric.ibsim_command("Attached\nQuit")


@e2e
async def test_wait_for_pkeys_timeout_shows_tables(tmp_path: Path) -> None:
    topo = fat_tree(2)
    guid = topo.hca_port_guids()[0]
    async with SimFabric(topo, tmp_path) as fabric:
        with pytest.raises(AssertionError, match=rf"{guid:#018x}: 0xffff"):
            await wait_for_pkeys(fabric, lambda t: False, [guid], timeout=0.3)
        with pytest.raises(ValueError, match="not cabled HCA ports"):
            await read_pkey_tables(fabric, [0x1234])


@e2e
async def test_256_hca_fabric_starts_and_reads_quickly(tmp_path: Path) -> None:
    topo = fat_tree(256)
    begin = time.monotonic()
    async with SimFabric(topo, tmp_path) as fabric:
        started = time.monotonic()
        tables = await read_pkey_tables(fabric)
        done = time.monotonic()
    print(
        f"\n256 HCAs: start {started - begin:.2f}s, read {len(tables)} tables {done - started:.2f}s"
    )
    assert len(tables) == 256
    assert all(table == [0xFFFF] for table in tables.values())
    assert done - begin < 60


def test_pkey_membership() -> None:
    assert pkey_membership([0xFFFF, 0x8A12], 0x0A12) == "full"
    assert pkey_membership([0xFFFF, 0x8A12], 0x8A12) == "full"
    assert pkey_membership([0xFFFF, 0x0A12], 0x0A12) == "limited"
    assert pkey_membership([0xFFFF, 0x0A12, 0x8A12], 0x0A12) == "full"
    assert pkey_membership([0xFFFF], 0x0A12) is None
    assert pkey_membership([0xFFFF], 0x7FFF) == "full"
    with pytest.raises(ValueError, match="16-bit"):
        pkey_membership([], 0x10000)


def test_parse_smpquery_pkeys() -> None:
    out = (
        "   0: 0xffff 0x8a12 0x0000 0x0000 0x0000 0x0000 0x0000 0x0000\n"
        "   8: 0x0000 0x0a13 0x0000 0x0000 0x0000 0x0000 0x0000 0x0000\n"
        "16 pkeys capacity for this port\n"
    )
    assert parse_smpquery_pkeys(out) == [0xFFFF, 0x8A12, 0x0A13]
    with pytest.raises(SimError, match="no PKey table"):
        parse_smpquery_pkeys("ibwarn: something\n")
    assert format_tables({2: [0xFFFF], 1: []}) == (
        "0x0000000000000001: <empty>\n0x0000000000000002: 0xffff"
    )
