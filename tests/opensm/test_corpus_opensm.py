"""Differential test: real OpenSM 3.3.23 on ibsim reads every corpus file as parse() says.

For each file: write it as the fabric's partitions.conf, SIGHUP, wait for the
end of the heavy sweep ("SUBNET UP"), read the PKey table of every HCA port
with SMP queries, and compare with ``expected_tables(parse(file))``, index 0
with ``expected_index0``, and OpenSM's fallback and PARSE ERROR lines with
the fatal diagnostic. One fabric serves the whole module (a second one, with
allow_both_pkeys, starts only for the files that need it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import astuple
from pathlib import Path

import pytest
import pytest_asyncio

from pkeyd.opensm.parse import FGETS_MAX
from pkeyd.opensm.parsed import DEFAULT_PKEY, GroupFlags, ParseResult
from pkeyd.opensm.semantics import NodeType, Tables, expected_index0, expected_tables, raw_entries
from pkeyd.sim.fabric import SimFabric, find_umad2sim
from pkeyd.sim.pkeys import format_tables, read_pkey_tables
from pkeyd.sim.sweep import load_and_sweep
from pkeyd.sim.topology import fat_tree
from tests.opensm.corpus import CORPUS, CorpusFile, corpus, load

_MISSING = [t for t in ("ibsim", "opensm", "smpquery", "ibnetdiscover") if not shutil.which(t)]
if find_umad2sim() is None:
    _MISSING.append("libumad2sim.so")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(_MISSING), reason=f"simulated fabric needs {', '.join(_MISSING)}"),
    pytest.mark.asyncio(loop_scope="module"),
]

# 8 two-port HCAs on 2 leaves and 2 spines: 16 HCA ports, 4 switch ports.
TOPOLOGY = fat_tree(8, ports_per_hca=2, hcas_per_leaf=4)
HCA_PORTS = TOPOLOGY.hca_port_guids()
PORTS: list[tuple[int, NodeType]] = [(g, "ca") for g in HCA_PORTS] + [
    (n.guid, "switch") for n in TOPOLOGY.switches()
]
# Loaded before a file whose statements lack a PKey: OpenSM resolves those
# against the partitions it still holds, and this leaves only Default.
BASELINE = b"Default=0x7fff : ALL, SELF=full ;\n"
FALLBACK = "retrying with default config"
# What OpenSM logs for each fatal code (osm_prtn_config.c).
OPENSM_ERRORS = {
    "no_partition_definition": "no partition definition found",
    "bad_partition_definition": "bad partition definition",
    "bad_guid": "bad PortGUID",
}
# Non-fatal findings OpenSM reports at ERROR level.
OPENSM_LOGGED = {
    "bad_mgid": "gid is not multicast",
    "ip_mgroup_rejected": "IP MC group",
}
# OpenSM's VERBOSE "PARSE WARN" lines that match warning codes one to one:
# the counts must agree, which checks the tokens OpenSM cut (stale ones too).
OPENSM_PARSE_WARN = {
    "unrecognized partition flag": ("unknown_flag",),
    "unrecognized port flag": ("unknown_membership", "missing_semicolon"),
    "unrecognized mgroup flag": ("unknown_mgroup_flag",),
}
LOG_FLAGS = "0x07"  # ERROR, INFO and VERBOSE (PARSE WARN lines)


class Fabric:
    """One running OpenSM, loaded one file at a time."""

    def __init__(self, sim: SimFabric) -> None:
        self.sim = sim
        self.loads = 0

    async def load(self, data: bytes, within_s: float = 30.0) -> str:
        """Install ``data``, SIGHUP, and return the log of the sweep it caused."""
        self.loads += 1
        return await load_and_sweep(self.sim, data, within_s)


class Fabrics:
    """One fabric per combination of opensm.conf options, started when first needed."""

    def __init__(self, stack: contextlib.AsyncExitStack, root: Path) -> None:
        self._stack, self._root = stack, root
        self._running: dict[tuple[bool, bool], Fabric] = {}

    async def get(self, *, allow_both_pkeys: bool, qos: bool) -> Fabric:
        key = (allow_both_pkeys, qos)
        if key not in self._running:
            workdir = self._root / f"both{int(allow_both_pkeys)}-qos{int(qos)}"
            workdir.mkdir()
            (workdir / "partitions.conf").write_bytes(BASELINE)
            extra = {"log_flags": LOG_FLAGS, "sa_db_dump": "TRUE"}
            if allow_both_pkeys:
                extra["allow_both_pkeys"] = "TRUE"
            if qos:
                extra["qos"] = "TRUE"
            sim = SimFabric(TOPOLOGY, workdir, opensm_conf_extra=extra)
            await self._stack.enter_async_context(sim)
            self._running[key] = Fabric(sim)
        return self._running[key]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fabrics(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fabrics]:
    async with contextlib.AsyncExitStack() as stack:
        yield Fabrics(stack, tmp_path_factory.mktemp("opensm-corpus"))


def _opensm_lines(data: bytes, line: int) -> range:
    """OpenSM's line numbers for physical ``line``: it counts fgets pieces."""
    pieces = [max(1, -(-len(row + b"\n") // FGETS_MAX)) for row in data.split(b"\n")]
    first = sum(pieces[: line - 1]) + 1
    return range(first, first + pieces[line - 1])


# A multicast group as OpenSM's SA database dump shows it:
# (MGID, MTU, rate, SL, Q_Key, TClass, FlowLabel).
Group = tuple[str, int, int, int, int, int, int]
_DUMPED_GROUP = re.compile(
    r"^MC Group 0x[0-9a-f]+ *(?:\(well known\))?: mgid=0x([0-9a-f]{16}):0x([0-9a-f]{16}) "
    r".*? qkey=0x([0-9a-f]+) mlid=0x[0-9a-f]+ mtu=0x([0-9a-f]+) tclass=0x([0-9a-f]+) "
    r"pkey=0x([0-9a-f]+) rate=0x([0-9a-f]+) pkt_life=0x[0-9a-f]+ sl_flow_hop=0x([0-9a-f]+)",
    re.M,
)


def _has_groups(result: ParseResult) -> bool:
    return any(
        p.broadcast is not None or p.mgroups for p in result.partitions if p.pkey != DEFAULT_PKEY
    )


def _needs_baseline(result: ParseResult) -> bool:
    # PKey-less statements look names up among the partitions OpenSM holds,
    # and an existing multicast group keeps the flags it was created with:
    # both need the previous file's partitions gone.
    return _has_groups(result) or any(d.code == "pkey_omitted" for d in result.diagnostics)


def _dumped_groups(dump: Path) -> set[Group]:
    """Groups outside Default (whose groups outlive every reload) in opensm-sa.dump."""
    text = dump.read_text() if dump.exists() else ""
    groups: set[Group] = set()
    for prefix, iid, qkey, mtu, tclass, pkey, rate, sl_flow_hop in _DUMPED_GROUP.findall(text):
        if int(pkey, 16) == DEFAULT_PKEY | 0x8000:
            continue
        mgid = str(ipaddress.IPv6Address(bytes.fromhex(prefix + iid)))
        word = int(sl_flow_hop, 16)  # SL:4, FlowLabel:20, HopLimit:8
        flags = (int(mtu, 16) & 0x3F, int(rate, 16) & 0x3F, word >> 28, int(qkey, 16))
        groups.add((mgid, *flags, int(tclass, 16), word >> 8 & 0xFFFFF))
    return groups


def _expected_groups(result: ParseResult, tables: Tables) -> set[Group]:
    """Groups of the partitions left with members, one per scope bit (default link-local)."""
    if not result.ok:
        return set()
    live = {pkey for memberships in tables.values() for pkey in memberships}
    wanted: list[tuple[str, GroupFlags]] = []
    for p in result.partitions:
        if p.pkey == DEFAULT_PKEY or p.pkey not in live:
            continue
        if p.broadcast is not None:
            wanted.append((f"ff12:401b:{p.pkey | 0x8000:x}::ffff:ffff", p.broadcast))
        wanted += [(g.mgid, g.flags) for g in p.mgroups]
    groups: set[Group] = set()
    for mgid, f in wanted:
        raw = ipaddress.IPv6Address(mgid).packed
        for scope in [s for s in range(16) if f.scope_mask >> s & 1] or [2]:
            scoped = raw[:1] + bytes([raw[1] & 0xF0 | scope]) + raw[2:]
            shown = str(ipaddress.IPv6Address(scoped))
            groups.add((shown, f.mtu & 0x3F, f.rate & 0x3F, f.sl & 0xF, *astuple(f)[4:]))
    return groups


async def _wait_for_groups(dump: Path, want: set[Group], tries: int = 100) -> None:
    # The dump is written just after "SUBNET UP" is logged, and only when groups changed.
    for _ in range(tries):
        got = _dumped_groups(dump)
        if got == want:
            return
        await asyncio.sleep(0.05)
    assert got == want


@pytest.mark.parametrize("name", [f.name for f in corpus()])
async def test_opensm_programs_what_parse_predicts(name: str, fabrics: Fabrics) -> None:
    item: CorpusFile = load(CORPUS / name)
    fabric = await fabrics.get(allow_both_pkeys=item.allow_both_pkeys, qos=item.qos)
    result = item.parse()
    if _needs_baseline(result):
        await fabric.load(BASELINE)
    log = await fabric.load(item.data)
    tables = await read_pkey_tables(fabric.sim, HCA_PORTS)
    fell_back = FALLBACK in log
    if item.undefined:
        pytest.skip(
            f"OpenSM reads uninitialized memory here; this run it "
            f"{'fell back to the default' if fell_back else 'accepted the file'}:\n"
            + format_tables(tables)
        )

    expected = expected_tables(
        result, PORTS, TOPOLOGY.sm_port_guid, allow_both_pkeys=item.allow_both_pkeys
    )
    want = {g: raw_entries(expected[g]) for g in HCA_PORTS}
    got = {g: set(table) for g, table in tables.items()}
    assert got == want, f"tables differ:\n{format_tables(tables)}"
    assert fell_back == (not result.ok), log[-3000:]

    index0 = expected_index0(
        result, PORTS, TOPOLOGY.sm_port_guid, allow_both_pkeys=item.allow_both_pkeys
    )
    for guid in HCA_PORTS:
        if index0[guid] is not None:
            assert tables[guid][0] == index0[guid], f"index 0 of {guid:#018x}"

    fatal = result.fatal
    errors = re.findall(r"PARSE ERROR: line (\d+): (.+)", log)
    if fatal is not None and fatal.code in OPENSM_ERRORS:
        assert len(errors) == 1, errors
        line, message = errors[0]
        assert OPENSM_ERRORS[fatal.code] in message
        assert int(line) in _opensm_lines(item.data, fatal.line)
    else:
        assert errors == []
    if _has_groups(result):
        dump = fabric.sim.workdir / "opensm" / "opensm-sa.dump"
        await _wait_for_groups(dump, _expected_groups(result, expected))
    for d in result.diagnostics:
        if d.code in OPENSM_LOGGED:
            assert OPENSM_LOGGED[d.code] in log, d
    codes = [d.code for d in result.diagnostics]
    for text, ours in OPENSM_PARSE_WARN.items():
        logged = [line for line in log.splitlines() if text in line]
        assert len(logged) == sum(codes.count(c) for c in ours), (text, logged, codes)
