"""Simulated fabric topologies and their rendering as ibsim netfiles.

Pure data and string building, no I/O, so the generator can be unit-tested
without the simulator. The netfile dialect is the ibnetdiscover-like format
ibsim reads (see /usr/share/doc/ibsim-utils/net-examples):

* ``switchguid=0x...`` / ``caguid=0x...`` lines set the GUID of the *next*
  node of that type. We emit one before every node so GUIDs never depend on
  ibsim's internal counters and tests can address ports by a known GUID.
* ibsim derives HCA port GUIDs as node GUID + port number (ports are 1-based);
  a switch has a single port GUID equal to its node GUID.
* Every link is listed on both of its ends; ibsim refuses a netfile whose two
  ends disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

NodeKind = Literal["switch", "hca"]
Link = tuple[str, int, str, int]

# ibsim's netfile header accepts 1..255 ports; port 255 is reserved by the IB
# spec for switches and 0 is the switch management port, so stay below.
MAX_SWITCH_PORTS = 254
# HCA node GUIDs are spaced by this much so that node GUID + port number can
# never collide with the next HCA's GUIDs.
HCA_GUID_STRIDE = 0x100
# Switch GUIDs live in the upper half of the low 32 bits so they can never
# collide with HCA GUIDs (which would need 8M HCAs to reach this offset).
SWITCH_GUID_OFFSET = 0x8000_0000
# ibsim copies SIM_HOST into a 32-byte field (NUL included).
MAX_NODE_NAME = 31


@dataclass(frozen=True)
class SimNode:
    """One simulated device: a switch or a host channel adapter."""

    name: str
    kind: NodeKind
    ports: int
    guid: int

    def port_guid(self, port: int) -> int:
        """GUID of ``port`` as ibsim reports it (switches share one GUID)."""
        if self.kind == "switch":
            return self.guid
        if not 1 <= port <= self.ports:
            raise ValueError(f"{self.name} has no port {port}")
        return self.guid + port


@dataclass(frozen=True)
class Topology:
    """A cabled fabric. ``links`` holds each cable once as (a, port, b, port)."""

    nodes: tuple[SimNode, ...]
    links: tuple[Link, ...]
    sm_node: str
    _by_name: dict[str, SimNode] = field(init=False, repr=False, compare=False)
    _cables: dict[str, list[Link]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, SimNode] = {}
        guids: set[int] = set()
        for n in self.nodes:
            _check_name(n.name)
            if n.name in by_name:
                raise ValueError(f"duplicate node name {n.name!r}")
            if not 1 <= n.ports <= 255:
                raise ValueError(f"{n.name}: port count {n.ports} outside 1..255")
            own = {n.guid} if n.kind == "switch" else {n.guid + p for p in range(n.ports + 1)}
            if n.guid <= 0 or max(own) >= 2**64:
                raise ValueError(f"{n.name}: GUID {n.guid:#x} out of range")
            if own & guids:
                raise ValueError(f"{n.name}: GUID {n.guid:#x} overlaps another node")
            guids |= own
            by_name[n.name] = n
        used: set[tuple[str, int]] = set()
        for a, pa, b, pb in self.links:
            for name, port in ((a, pa), (b, pb)):
                node = by_name.get(name)
                if node is None:
                    raise ValueError(f"link refers to unknown node {name!r}")
                if not 1 <= port <= node.ports:
                    raise ValueError(f"link uses {name} port {port}, node has {node.ports}")
                if (name, port) in used:
                    raise ValueError(f"{name} port {port} is cabled twice")
                used.add((name, port))
        sm = by_name.get(self.sm_node)
        if sm is None or sm.kind != "hca":
            raise ValueError(f"sm_node {self.sm_node!r} must name an HCA of the topology")
        if not any(name == sm.name for name, _ in used):
            raise ValueError(f"sm_node {self.sm_node!r} has no cabled port")
        # Lookup tables so large fabrics are not scanned link by link per node;
        # the dataclass is frozen, hence object.__setattr__.
        cables: dict[str, list[Link]] = {name: [] for name in by_name}
        for a, pa, b, pb in self.links:
            cables[a].append((a, pa, b, pb))
            cables[b].append((b, pb, a, pa))
        for ends in cables.values():
            ends.sort(key=lambda end: end[1])
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_cables", cables)

    def node(self, name: str) -> SimNode:
        """The node called ``name`` (KeyError if there is none)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no node named {name!r} in topology") from None

    def hcas(self) -> list[SimNode]:
        """HCA nodes in topology order."""
        return [n for n in self.nodes if n.kind == "hca"]

    def switches(self) -> list[SimNode]:
        """Switch nodes in topology order."""
        return [n for n in self.nodes if n.kind == "switch"]

    def cabled_ports(self, name: str) -> list[int]:
        """Port numbers of ``name`` that have a cable, ascending."""
        return [port for _, port, _, _ in self._ends(name)]

    def hca_ports(self) -> list[tuple[str, int, int]]:
        """(node name, port number, port GUID) of every cabled HCA port, by GUID."""
        out = [
            (n.name, port, n.port_guid(port))
            for n in self.hcas()
            for port in self.cabled_ports(n.name)
        ]
        return sorted(out, key=lambda t: t[2])

    def hca_port_guids(self) -> list[int]:
        """GUIDs of every cabled HCA port, ascending."""
        return [guid for _, _, guid in self.hca_ports()]

    @property
    def sm_port_guid(self) -> int:
        """GUID of the port OpenSM binds to: the SM node's first cabled port."""
        return self.node(self.sm_node).port_guid(self.cabled_ports(self.sm_node)[0])

    def render_netfile(self) -> str:
        """The topology as an ibsim netfile; the same topology gives the same text."""
        lines = [
            "# Generated by pkeyd.sim.topology; every link is listed on both ends.",
            "",
        ]
        for n in self.nodes:
            keyword, guid_key = (
                ("Switch", "switchguid") if n.kind == "switch" else ("Hca", "caguid")
            )
            lines.append(f"{guid_key}=0x{n.guid:016x}")
            lines.append(f'{keyword} {n.ports} "{n.name}"')
            for _, port, peer, peer_port in self._ends(n.name):
                lines.append(f'[{port}] "{peer}"[{peer_port}]')
            lines.append("")
        return "\n".join(lines)

    def _ends(self, name: str) -> list[Link]:
        """Each cable touching ``name``, oriented so ``name`` comes first, by port."""
        return self._cables[name]


def _check_name(name: str) -> None:
    # '"' would end the quoted netfile field; '#' and '@' are reserved by ibsim;
    # whitespace would break SIM_HOST and diagnostics' node name matching.
    bad = any(c in '"#@' or c.isspace() for c in name)
    if not name or len(name) > MAX_NODE_NAME or bad:
        raise ValueError(f"node name {name!r} unusable with ibsim")


def fat_tree(
    hcas: int,
    *,
    ports_per_hca: int = 1,
    hcas_per_leaf: int = 32,
    spines: int | None = None,
    guid_base: int = 0x0002C90300000000,
) -> Topology:
    """A two-level leaf/spine fat tree with ``hcas`` hosts.

    Leaves = ceil(hcas / hcas_per_leaf); every leaf has one cable to every
    spine. A two-port HCA cables both ports to the *same* leaf, on adjacent
    leaf ports: that keeps the leaf's port budget predictable and is enough to
    give a test two port GUIDs (two PKey tables) per host.

    Default spine count: 1 for a single leaf, otherwise ceil(leaves / 2) but
    at least 2 (so a leaf has more than one path up, like a real fat tree).

    GUIDs: HCA i has node GUID ``guid_base + 0x100 * i`` and port GUIDs node
    GUID + port; switches use ``guid_base + 0x8000_0000 + 0x100 * j``.

    HCAs come first in the node list, starting with the SM's node "hca-0000",
    so ibsim's fallback attachment point ("first port in the file", used when
    SIM_HOST is unset) is the SM's HCA as well.
    """
    if hcas < 1:
        raise ValueError(f"hcas must be >= 1, got {hcas}")
    if ports_per_hca not in (1, 2):
        raise ValueError(f"ports_per_hca must be 1 or 2, got {ports_per_hca}")
    if hcas_per_leaf < 1:
        raise ValueError(f"hcas_per_leaf must be >= 1, got {hcas_per_leaf}")
    leaves = math.ceil(hcas / hcas_per_leaf)
    if spines is None:
        spines = 1 if leaves == 1 else max(2, math.ceil(leaves / 2))
    if spines < 0 or (spines == 0 and leaves > 1):
        raise ValueError(f"{leaves} leaves need at least one spine, got spines={spines}")
    per_leaf = min(hcas_per_leaf, hcas)
    leaf_ports = per_leaf * ports_per_hca + spines
    if leaf_ports > MAX_SWITCH_PORTS:
        raise ValueError(f"leaf would need {leaf_ports} ports (max {MAX_SWITCH_PORTS})")
    if leaves > MAX_SWITCH_PORTS:
        raise ValueError(f"spine would need {leaves} ports (max {MAX_SWITCH_PORTS})")
    top_guid = guid_base + SWITCH_GUID_OFFSET + HCA_GUID_STRIDE * (leaves + spines)
    if guid_base <= 0 or top_guid >= 2**64 or HCA_GUID_STRIDE * hcas >= SWITCH_GUID_OFFSET:
        raise ValueError(f"guid_base {guid_base:#x} leaves no room for {hcas} HCAs")

    width = max(4, len(str(hcas - 1)))
    hca_names = [f"hca-{i:0{width}d}" for i in range(hcas)]
    leaf_names = [f"leaf-{i:02d}" for i in range(leaves)]
    spine_names = [f"spine-{i:02d}" for i in range(spines)]

    nodes: list[SimNode] = [
        SimNode(name, "hca", ports_per_hca, guid_base + HCA_GUID_STRIDE * i)
        for i, name in enumerate(hca_names)
    ]
    switch_guid = guid_base + SWITCH_GUID_OFFSET
    for j, name in enumerate(leaf_names):
        nodes.append(SimNode(name, "switch", leaf_ports, switch_guid + HCA_GUID_STRIDE * j))
    for k, name in enumerate(spine_names):
        guid = switch_guid + HCA_GUID_STRIDE * (leaves + k)
        nodes.append(SimNode(name, "switch", leaves, guid))

    links: list[Link] = []
    for i, name in enumerate(hca_names):
        leaf_index, slot = divmod(i, hcas_per_leaf)
        for port in range(1, ports_per_hca + 1):
            links.append((leaf_names[leaf_index], slot * ports_per_hca + port, name, port))
    for j, leaf in enumerate(leaf_names):
        for k, spine in enumerate(spine_names):
            links.append((leaf, per_leaf * ports_per_hca + k + 1, spine, j + 1))

    return Topology(nodes=tuple(nodes), links=tuple(links), sm_node=hca_names[0])
