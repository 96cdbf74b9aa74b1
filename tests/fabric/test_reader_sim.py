"""The SMP reader: against in-process fake agents, then against real ibsim + OpenSM.

The real reader must run in a process *started* with libumad2sim.so preloaded,
so the simulator tests drive ``python -m pkeyd.fabric.probe --serve`` (one
long-lived reader) over JSON lines, and compare what it reads with what
``smpquery`` (``pkeyd.sim.pkeys.read_pkey_tables``) reads from the same ports.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from pkeyd.fabric import smp
from pkeyd.fabric.model import (
    FabricError,
    FabricPort,
    FabricSnapshot,
    MadStats,
    MadTimeoutError,
    NodeType,
    PortNotFoundError,
    PortState,
)
from pkeyd.fabric.reader import SmpFabricReader, SmpReaderConfig
from pkeyd.sim.fabric import SimFabric, find_umad2sim
from pkeyd.sim.pkeys import read_pkey_tables, wait_for_pkeys
from pkeyd.sim.topology import Topology, fat_tree
from tests.fabric.probe_client import ProbeServer, ibsim_console, probe_argv, probe_env

pytestmark = pytest.mark.asyncio(loop_scope="module")

# 16 dual-port HCAs: 32 CA ports on 2 leaves and 2 spines.
TOPOLOGY = fat_tree(16, ports_per_hca=2, hcas_per_leaf=8)
ETIMEDOUT = 110
CA_CAP, SW_CAP, SW_ENFORCE_CAP = 64, 8, 64
Deliver = Callable[[Sequence[tuple[int, bytes]]], None]


# -- fake subnet management agents (the MadTransport seam) ----------------------


class FakeSma:
    """Answers SMPs for a Topology in process, the way ibsim does.

    ``drop(attr_id, node, port, attempt)`` decides losses; a lost MAD is
    bounced with status ETIMEDOUT (ibsim's way) or, with ``bounce=False``,
    vanishes (a real fabric's way: only the reader's timer notices).
    """

    def __init__(self, topo: Topology, *, bounce: bool = True) -> None:
        self.topo, self.bounce = topo, bounce
        self.drop: Callable[[int, str, int, int], bool] = lambda attr, node, port, n: False
        self.attempts: dict[tuple[int, str, int, int], int] = {}
        self.closed = False
        self._peer: dict[tuple[str, int], tuple[str, int]] = {}
        for a, pa, b, pb in topo.links:
            self._peer[(a, pa)], self._peer[(b, pb)] = (b, pb), (a, pa)
        self.lids: dict[tuple[str, int], int] = {}
        self.tables: dict[tuple[str, int], list[int]] = {}
        for n in topo.nodes:
            switch = n.kind == "switch"
            for p in [0] if switch else range(1, n.ports + 1):
                self.lids[(n.name, p)] = len(self.lids) + 1
            for p in range(0 if switch else 1, n.ports + 1):
                cap = SW_CAP if switch and p == 0 else SW_ENFORCE_CAP if switch else CA_CAP
                self.tables[(n.name, p)] = [0xFFFF] + [0] * (cap - 1)
        self._by_lid = {lid: where for where, lid in self.lids.items()}
        self._deliver: Deliver | None = None
        self._call_soon: Callable[..., Any] | None = None

    def start(self, on_receive: Deliver, call_soon: Callable[..., Any]) -> None:
        self._deliver, self._call_soon = on_receive, call_soon

    def send(self, mad: bytes, dlid: int, timeout_ms: int) -> None:
        assert self._call_soon is not None
        assert self._deliver is not None
        reply = self._answer(mad, dlid)
        if reply is not None:
            self._call_soon(self._deliver, [reply])

    def close(self) -> None:
        self.closed = True

    def _walk(self, mad: bytes) -> tuple[str, int] | None:
        node = self.topo.sm_node
        port = self.topo.cabled_ports(node)[0]
        for i, out in enumerate(mad[129 : 129 + mad[7]]):
            if (i == 0 and out != port) or (i and self.topo.node(node).kind != "switch"):
                return None
            if (node, out) not in self._peer:
                return None
            node, port = self._peer[(node, out)]
        return node, port

    def _answer(self, mad: bytes, dlid: int) -> tuple[int, bytes] | None:
        req = smp.decode_smp(mad)
        where = self._walk(mad) if dlid == smp.PERMISSIVE_LID else self._by_lid.get(dlid)
        if where is not None:
            key = (req.attr_id, *where, req.attr_mod)
            self.attempts[key] = attempt = self.attempts.get(key, 0) + 1
        if where is None or self.drop(req.attr_id, *where, attempt):
            return (ETIMEDOUT, mad) if self.bounce else None
        status, data = self._attribute(req, *where)
        out = bytearray(mad)
        out[3] = smp.METHOD_GET_RESP
        direction = smp.DR_DIRECTION_BIT if req.mgmt_class == smp.MGMT_CLASS_SMI_DR else 0
        out[4:6] = (status | direction).to_bytes(2, "big")
        out[64:128] = data.ljust(64, b"\0")
        return 0, bytes(out)

    def _attribute(self, req: smp.Smp, name: str, port: int) -> tuple[int, bytes]:
        node = self.topo.node(name)
        switch = node.kind == "switch"
        if req.attr_id == smp.ATTR_NODE_INFO:
            port_guid = node.guid if switch else node.port_guid(port)
            cap = SW_CAP if switch else CA_CAP
            return 0, struct.pack(
                ">BBBBQQQHHIB3s", 1, 1, 2 if switch else 1, node.ports, node.guid, node.guid,
                port_guid, cap, 0, 0, port, b"\0\0\0",
            )  # fmt: skip
        if req.attr_id == smp.ATTR_NODE_DESC:
            return 0, name.encode()
        if req.attr_id == smp.ATTR_SWITCH_INFO and switch:
            return 0, struct.pack(">HHHHBBBBHH", 48, 0, 0, 0, 0, 0, 0, 0, 1, SW_ENFORCE_CAP)
        if req.attr_id == smp.ATTR_PORT_INFO:
            target = req.attr_mod or port
            if target > node.ports:
                return 0x1C, b""
            data = bytearray(64)
            data[16:18] = self.lids.get((name, 0 if switch else target), 0).to_bytes(2, "big")
            data[28] = target
            data[32] = 0x20 | (4 if target == 0 or (name, target) in self._peer else 1)
            return 0, bytes(data)
        if req.attr_id == smp.ATTR_PKEY_TABLE:
            block, sw_port = req.attr_mod & 0xFFFF, req.attr_mod >> 16
            table = self.tables.get((name, sw_port if switch else port))
            if table is None or block * 32 >= len(table):
                return 0x1C, b""
            start = block * 32
            if req.method == smp.METHOD_SET:
                entries = smp.parse_pkey_block(req.data)[: len(table) - start]
                table[start : start + len(entries)] = entries
            return 0, smp.encode_pkey_block(table[start : start + 32])
        return 0x0C, b""  # attribute not supported


def _expected_ca_ports(sma: FakeSma) -> dict[int, tuple[int, int, str]]:
    """Port GUID -> (LID, port number, node name) for every cabled HCA port."""
    return {guid: (sma.lids[(name, port)], port, name) for name, port, guid in sma.topo.hca_ports()}


async def test_fake_discovery_finds_every_ca_port_once() -> None:
    sma = FakeSma(TOPOLOGY)
    async with SmpFabricReader(sma, SmpReaderConfig(max_in_flight=8, node_desc=True)) as reader:
        snap = await reader.read_all()
    expected = _expected_ca_ports(sma)
    found = {p.port_guid: (p.lid, p.port_num, p.node_desc) for p in snap.ca_ports()}
    assert found == expected
    assert len(snap.ports) == 32
    assert snap.failures == ()
    assert all(p.pkeys == (0xFFFF,) + (0,) * 63 and p.partition_cap == CA_CAP for p in snap.ports)
    assert all(p.state is PortState.ACTIVE and p.node_type is NodeType.CA for p in snap.ports)
    assert snap.mad_stats.max_in_flight == 8  # the cap holds, and it is used
    assert snap.mad_stats.sent == snap.mad_stats.received
    assert sma.closed


async def test_fake_bounced_drops_are_retried_and_counted() -> None:
    sma = FakeSma(TOPOLOGY)
    # Every PKeyTable Get to hca-0003 fails twice before it gets through.
    sma.drop = lambda attr, node, port, n: (
        attr == smp.ATTR_PKEY_TABLE and node == "hca-0003" and n <= 2
    )
    async with SmpFabricReader(sma, SmpReaderConfig(retries=2)) as reader:
        snap = await reader.read_all()
    assert snap.failures == ()
    assert len(snap.ca_ports()) == 32
    # 2 ports x 2 blocks x 2 lost attempts
    assert (snap.mad_stats.timeouts, snap.mad_stats.retries, snap.mad_stats.failed) == (8, 8, 0)


async def test_fake_silent_loss_times_out_then_gives_up_per_port() -> None:
    sma = FakeSma(TOPOLOGY, bounce=False)
    guid = TOPOLOGY.node("hca-0005").port_guid(2)
    sma.drop = lambda attr, node, port, n: (
        (node == "hca-0001" and n == 1)  # first attempts of everything: lost once
        or (node == "hca-0005" and port == 2 and attr == smp.ATTR_PKEY_TABLE)  # always lost
    )
    config = SmpReaderConfig(timeout_s=0.02, retries=2, node_desc=True)
    async with SmpFabricReader(sma, config) as reader:
        snap = await reader.read_all()
        with pytest.raises(MadTimeoutError, match="0x0016"):
            await reader.read_port(guid)
    assert {p.port_guid for p in snap.ports} == set(TOPOLOGY.hca_port_guids()) - {guid}
    (failure,) = snap.failures
    assert (failure.what, failure.port_guid, failure.port_num) == ("end_port", guid, 2)
    assert "after 3 attempt(s)" in failure.error
    stats = snap.mad_stats
    assert stats.failed == 2  # both PKey blocks of that port
    # hca-0001: 2 ports x (NodeInfo, NodeDesc, PortInfo, 2 blocks) lost once each
    assert stats.retries == 10 + 2 * 2
    assert stats.timeouts == stats.retries + stats.failed


async def test_fake_read_port_and_tamper_by_route_and_lid() -> None:
    sma = FakeSma(TOPOLOGY)
    name, port, guid = TOPOLOGY.hca_ports()[7]
    async with SmpFabricReader(sma, SmpReaderConfig(node_desc=True)) as reader:
        with pytest.raises(PortNotFoundError):
            await reader.read_port(0x1234)  # discovers first, then gives up
        echoed = await reader.set_pkey_block(guid, 0, [0xFFFF, 0x8B0B], routing="lid")
        assert echoed[:3] == (0xFFFF, 0x8B0B, 0)
        assert sma.tables[(name, port)][:3] == [0xFFFF, 0x8B0B, 0]
        for routing in ("directed", "lid"):
            read = await reader.read_port(guid, routing=routing)
            assert read.membership(0x0B0B) == "full"
            assert (read.lid, read.node_desc) == (sma.lids[(name, port)], name)
        with pytest.raises(ValueError, match="beyond PartitionCap"):
            await reader.set_pkey_block(guid, 2, [])
    with pytest.raises(FabricError, match="closed"):
        await reader.read_all()


async def test_fake_switch_ports_add_enforcement_tables() -> None:
    sma = FakeSma(TOPOLOGY)
    async with SmpFabricReader(sma, SmpReaderConfig(switch_ports=True)) as reader:
        snap = await reader.read_all()
    switch_ports = [p for p in snap.ports if p.node_type is NodeType.SWITCH]
    # port 0 of 4 switches + every cabled external port (2 x 18 leaf, 2 x 2 spine)
    assert len(switch_ports) == 4 + 36 + 4
    port0 = [p for p in switch_ports if p.port_num == 0]
    assert {p.partition_cap for p in port0} == {SW_CAP}
    assert all(p.lid for p in port0)
    external = [p for p in switch_ports if p.port_num]
    assert {p.partition_cap for p in external} == {SW_ENFORCE_CAP}
    assert all(p.lid == 0 and p.pkeys[0] == 0xFFFF for p in external)


# -- the real simulator ---------------------------------------------------------

_MISSING = [t for t in ("ibsim", "opensm", "smpquery", "ibnetdiscover") if not shutil.which(t)]
if find_umad2sim() is None:
    _MISSING.append("libumad2sim.so")
needs_sim = pytest.mark.skipif(
    bool(_MISSING), reason=f"simulated fabric needs {', '.join(_MISSING)}"
)
PKEY_A, PKEY_B = 0x0A12, 0x0B34


def _conf(full: Sequence[int], limited: Sequence[int]) -> str:
    members = [f"0x{g:016x}=full" for g in full] + [f"0x{g:016x}=limited" for g in limited]
    return (
        "Default=0x7fff : ALL=full ;\n"
        f"tenant_a=0x{PKEY_A:04x} : {', '.join(members)} ;\n"
        f"tenant_b=0x{PKEY_B:04x} : 0x{full[0]:016x}=limited ;\n"
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fabric() -> AsyncIterator[SimFabric]:
    if _MISSING:
        pytest.skip(f"simulated fabric needs {', '.join(_MISSING)}")
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-fabric-"))
    try:
        async with SimFabric(TOPOLOGY, workdir) as sim:
            yield sim
            assert sim.parse_errors() == []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def probe(fabric: SimFabric) -> AsyncIterator[ProbeServer]:
    # 10 retries: with ibsim dropping 30 % of some MADs, a MAD is lost for good
    # with p = 0.3 ** 11 (2e-6) - the loss test must not flake.
    server = await ProbeServer.start(fabric, "--retries", "10", "--node-desc")
    yield server
    await server.close()


@needs_sim
@pytest.mark.e2e
async def test_sim_every_ca_port_with_its_guids_and_lids(
    fabric: SimFabric, probe: ProbeServer
) -> None:
    local = probe.hello["local_port"]
    assert local["port_guid"] == f"0x{TOPOLOGY.sm_port_guid:016x}"
    assert local["state"] == "ACTIVE"
    snap = await probe.read_all()
    assert snap.failures == ()
    lids = await fabric.port_lids()
    assert {p.port_guid: p.lid for p in snap.ca_ports()} == lids
    assert len(lids) == 32
    for name, port_num, guid in TOPOLOGY.hca_ports():
        port = snap.port(guid)
        assert port is not None
        assert (port.node_guid, port.port_num, port.node_desc) == (
            TOPOLOGY.node(name).guid,
            port_num,
            name,
        )
        assert (port.state, port.partition_cap, len(port.pkeys)) == (PortState.ACTIVE, 64, 64)
    stats = snap.mad_stats
    assert stats.sent == stats.received
    assert stats.timeouts == 0


@needs_sim
@pytest.mark.e2e
async def test_sim_tables_equal_smpquery_after_sighup(
    fabric: SimFabric, probe: ProbeServer
) -> None:
    guids = TOPOLOGY.hca_port_guids()
    full, limited = guids[2:5], guids[5:9]
    fabric.partitions_conf.write_text(_conf(full, limited))
    await fabric.sighup()
    expected = await wait_for_pkeys(
        fabric,
        lambda t: (
            all(PKEY_A | 0x8000 in t[g] for g in full) and all(PKEY_A in t[g] for g in limited)
        ),
    )
    snap = await probe.read_all()
    assert snap.pkey_tables() == expected  # every port, entry for entry, same order
    assert snap.pkey_tables() == await read_pkey_tables(fabric)
    for guid in guids:
        port = snap.port(guid)
        assert port is not None
        membership = "full" if guid in full else "limited" if guid in limited else None
        assert port.membership(PKEY_A) == membership
        assert port.membership(PKEY_B) == ("limited" if guid == full[0] else None)
        assert port.membership(0x7FFF) == "full"
    # one port on its own, by directed route and by LID (via OpenSM's routes)
    for routing in ("directed", "lid"):
        one = FabricPort.from_json(
            await probe.call("read_port", port_guid=hex(full[0]), routing=routing)
        )
        assert one == snap.port(full[0])


@needs_sim
@pytest.mark.e2e
async def test_sim_tamper_is_visible_to_both_readers_and_outlives_a_sighup(
    fabric: SimFabric, probe: ProbeServer
) -> None:
    guids = TOPOLOGY.hca_port_guids()
    victim, bystander = guids[11], guids[12]
    full, limited = list(guids[2:5]), list(guids[5:9])
    fabric.partitions_conf.write_text(_conf(full, limited))
    await fabric.sighup()
    await wait_for_pkeys(fabric, lambda t: PKEY_A | 0x8000 in t[full[0]], [full[0]])
    assert (await read_pkey_tables(fabric, [victim]))[victim] == [0xFFFF]

    tampered = ["0xffff", "0x8bbb", "0x0000", "0x0ccc"]
    echoed = await probe.call("set_pkey_block", port_guid=hex(victim), block=0, entries=tampered)
    assert echoed[:4] == tampered
    by_smpquery = await read_pkey_tables(fabric, [victim, bystander])
    assert by_smpquery == {victim: [0xFFFF, 0x8BBB, 0x0CCC], bystander: [0xFFFF]}
    snap = await probe.read_all()
    assert snap.pkey_tables() == await read_pkey_tables(fabric)
    port = snap.port(victim)
    assert port is not None
    assert port.pkeys[:4] == (0xFFFF, 0x8BBB, 0, 0x0CCC)  # index order kept, holes included

    # A heavy sweep does not read tables back: OpenSM compares the desired
    # table with what it believes it wrote, so the tamper survives a SIGHUP...
    await fabric.sighup()
    await asyncio.sleep(1.0)
    port = FabricPort.from_json(await probe.call("read_port", port_guid=hex(victim)))
    assert port.members == (0xFFFF, 0x8BBB, 0x0CCC)
    # ...until the desired content of that port changes and OpenSM rewrites the block.
    fabric.partitions_conf.write_text(_conf([*full, victim], limited))
    await fabric.sighup()
    await wait_for_pkeys(fabric, lambda t: t[victim] == [0xFFFF, PKEY_A | 0x8000], [victim])
    port = FabricPort.from_json(await probe.call("read_port", port_guid=hex(victim)))
    assert port.members == (0xFFFF, PKEY_A | 0x8000)


@needs_sim
@pytest.mark.e2e
async def test_sim_mad_loss_is_retried_and_counted(fabric: SimFabric, probe: ProbeServer) -> None:
    lossy = ["hca-0001", "hca-0006", "hca-0009", "hca-0014"]
    reference = await read_pkey_tables(fabric)
    try:
        for name in lossy:  # ibsim: drop 30 % of the P_KeyTable (attribute 22) SMPs
            await ibsim_console(fabric, f'Error "{name}" 30 22')
        before = MadStats.from_json(await probe.call("stats"))
        for _ in range(3):
            snap = await probe.read_all()
            assert snap.failures == ()
            assert snap.pkey_tables() == reference
            if snap.mad_stats.retries:
                break
        stats = MadStats.from_json(await probe.call("stats")) - before
        assert stats.retries > 0
        assert stats.timeouts == stats.retries  # every loss retried, none gave up
        assert stats.failed == 0
    finally:
        for name in lossy:
            await ibsim_console(fabric, f'Error "{name}" 0')


@needs_sim
@pytest.mark.e2e
async def test_sim_one_shot_json_with_switch_ports(fabric: SimFabric, probe: ProbeServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        *probe_argv("--json", "--switch-ports", "--node-desc"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=probe_env(fabric),
        cwd=fabric.tool_cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    snap = FabricSnapshot.from_json(json.loads(out))
    switches = [p for p in snap.ports if p.node_type is NodeType.SWITCH]
    assert {p.node_desc for p in switches} == {"leaf-00", "leaf-01", "spine-00", "spine-01"}
    assert {p.port_num for p in switches if p.node_desc == "spine-00"} == {0, 1, 2}
    assert len(snap.ca_ports()) == 32
    port0 = [p for p in switches if p.port_num == 0]
    assert all(p.lid and p.partition_cap == SW_CAP for p in port0)  # ibsim's switch PartitionCap


async def test_probe_without_a_umad_port_exits_unavailable() -> None:
    env = {k: v for k, v in probe_env(None).items() if k not in ("LD_PRELOAD", "IBSIM_SOCKNAME")}
    proc = await asyncio.create_subprocess_exec(
        *probe_argv(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if proc.returncode == 0:  # a host with real HCAs and umad access
        assert b"ports in" in out
        return
    assert proc.returncode == 2, err.decode()
    assert err.startswith(b"probe: ")  # here: "no umad port found ..."; no traceback
    assert b"Traceback" not in err
