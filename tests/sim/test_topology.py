"""Pure tests of the fat-tree generator and the netfile renderer."""

from __future__ import annotations

import re

import pytest

from pkeyd.sim.topology import SimNode, Topology, fat_tree


def parse_netfile(text: str) -> dict[tuple[str, int], tuple[str, int]]:
    """(node, port) -> (peer, peer port) for every port line of a netfile."""
    ends: dict[tuple[str, int], tuple[str, int]] = {}
    current: str | None = None
    for line in text.splitlines():
        header = re.match(r'^(Switch|Hca) (\d+) "([^"]+)"$', line)
        if header:
            current = header.group(3)
            continue
        port = re.match(r'^\[(\d+)\] "([^"]+)"\[(\d+)\]$', line)
        if port:
            assert current is not None, f"port line before any node: {line!r}"
            key = (current, int(port.group(1)))
            assert key not in ends, f"{key} listed twice"
            ends[key] = (port.group(2), int(port.group(3)))
        elif not line:
            current = None
    return ends


def test_small_tree_counts() -> None:
    topo = fat_tree(8)
    assert len(topo.hcas()) == 8
    assert [s.name for s in topo.switches()] == ["leaf-00", "spine-00"]
    assert topo.node("leaf-00").ports == 8 + 1
    assert len(topo.links) == 8 + 1
    assert topo.sm_node == "hca-0000"
    assert topo.nodes[0].name == "hca-0000"  # ibsim's fallback attachment point


@pytest.mark.parametrize(
    ("hcas", "leaves", "spines"),
    [(1, 1, 1), (32, 1, 1), (33, 2, 2), (64, 2, 2), (256, 8, 4), (1000, 32, 16)],
)
def test_leaf_and_spine_counts(hcas: int, leaves: int, spines: int) -> None:
    topo = fat_tree(hcas)
    names = [s.name for s in topo.switches()]
    assert sum(n.startswith("leaf-") for n in names) == leaves
    assert sum(n.startswith("spine-") for n in names) == spines
    # every leaf reaches every spine exactly once
    uplinks = {(a, b) for a, _, b, _ in topo.links if b.startswith("spine-")}
    assert len(uplinks) == leaves * spines
    assert len(topo.hca_port_guids()) == hcas


def test_explicit_spines_and_leaf_size() -> None:
    topo = fat_tree(10, hcas_per_leaf=4, spines=3)
    assert [s.name for s in topo.switches()] == [
        "leaf-00",
        "leaf-01",
        "leaf-02",
        "spine-00",
        "spine-01",
        "spine-02",
    ]
    assert topo.node("leaf-00").ports == 4 + 3
    assert topo.node("spine-02").ports == 3
    # the last leaf is only half full but keeps the same uplink ports
    assert topo.cabled_ports("leaf-02") == [1, 2, 5, 6, 7]


def test_guids_unique_and_ranges_distinct() -> None:
    topo = fat_tree(300, ports_per_hca=2)
    port_guids = topo.hca_port_guids()
    switch_guids = [s.guid for s in topo.switches()]
    node_guids = [n.guid for n in topo.nodes]
    assert len(set(port_guids)) == len(port_guids) == 600
    assert len(set(node_guids)) == len(node_guids)
    assert not set(port_guids) & set(node_guids)
    assert min(switch_guids) > max(port_guids)
    assert port_guids == sorted(port_guids)


def test_port_guid_is_node_guid_plus_port() -> None:
    topo = fat_tree(3, guid_base=0x1000)
    hca = topo.node("hca-0002")
    assert hca.guid == 0x1000 + 0x200
    assert hca.port_guid(1) == 0x1201
    assert topo.hca_port_guids() == [0x1001, 0x1101, 0x1201]
    assert topo.sm_port_guid == 0x1001
    leaf = topo.node("leaf-00")
    assert leaf.port_guid(3) == leaf.guid
    with pytest.raises(ValueError, match="no port 2"):
        hca.port_guid(2)


def test_two_port_hcas_cable_both_ports_to_one_leaf() -> None:
    topo = fat_tree(40, ports_per_hca=2)
    assert len(topo.hca_port_guids()) == 80
    assert topo.node("leaf-00").ports == 2 * 32 + 2
    for hca in topo.hcas():
        assert hca.ports == 2
        assert topo.cabled_ports(hca.name) == [1, 2]
        peers = {(b, pb) for a, _, b, pb in topo.links if a == hca.name} | {
            (a, pa) for a, pa, b, _ in topo.links if b == hca.name
        }
        assert len({leaf for leaf, _ in peers}) == 1
        assert len(peers) == 2
    ports = {(name, port): guid for name, port, guid in topo.hca_ports()}
    first = topo.node("hca-0001").guid
    assert ports[("hca-0001", 1)] == first + 1
    assert ports[("hca-0001", 2)] == first + 2


@pytest.mark.parametrize("ports_per_hca", [1, 2])
def test_netfile_lists_every_link_on_both_ends(ports_per_hca: int) -> None:
    topo = fat_tree(70, ports_per_hca=ports_per_hca, hcas_per_leaf=16)
    ends = parse_netfile(topo.render_netfile())
    assert len(ends) == 2 * len(topo.links)
    for a, pa, b, pb in topo.links:
        assert ends[(a, pa)] == (b, pb)
        assert ends[(b, pb)] == (a, pa)


def test_netfile_sets_guid_before_each_node() -> None:
    topo = fat_tree(4)
    lines = topo.render_netfile().splitlines()
    for node in topo.nodes:
        keyword = "Switch" if node.kind == "switch" else "Hca"
        header = lines.index(f'{keyword} {node.ports} "{node.name}"')
        key = "switchguid" if node.kind == "switch" else "caguid"
        assert lines[header - 1] == f"{key}=0x{node.guid:016x}"


def test_render_is_deterministic() -> None:
    assert fat_tree(100, ports_per_hca=2).render_netfile() == (
        fat_tree(100, ports_per_hca=2).render_netfile()
    )
    assert fat_tree(5) == fat_tree(5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hcas": 0}, "hcas must be >= 1"),
        ({"hcas": 4, "ports_per_hca": 3}, "ports_per_hca"),
        ({"hcas": 4, "ports_per_hca": 0}, "ports_per_hca"),
        ({"hcas": 4, "hcas_per_leaf": 0}, "hcas_per_leaf"),
        ({"hcas": 64, "spines": 0}, "at least one spine"),
        ({"hcas": 4, "spines": -1}, "spine"),
        ({"hcas": 300, "hcas_per_leaf": 200, "ports_per_hca": 2}, "ports"),
        ({"hcas": 255, "hcas_per_leaf": 1}, "spine would need"),
        ({"hcas": 4, "guid_base": 0}, "guid_base"),
        ({"hcas": 4, "guid_base": 2**64 - 1}, "guid_base"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fat_tree(**kwargs)


def test_single_switch_fabric_when_no_spines() -> None:
    topo = fat_tree(4, spines=0)
    assert [s.name for s in topo.switches()] == ["leaf-00"]
    assert topo.node("leaf-00").ports == 4


def test_node_lookup() -> None:
    topo = fat_tree(2)
    assert topo.node("hca-0001").kind == "hca"
    with pytest.raises(KeyError, match="nope"):
        topo.node("nope")


def _hca(name: str, guid: int, ports: int = 1) -> SimNode:
    return SimNode(name, "hca", ports, guid)


def test_topology_validation() -> None:
    sw = SimNode("sw", "switch", 4, 0x9000)
    a, b = _hca("a", 0x100), _hca("b", 0x200)
    ok = Topology((sw, a, b), (("sw", 1, "a", 1), ("sw", 2, "b", 1)), "a")
    assert ok.hca_port_guids() == [0x101, 0x201]
    with pytest.raises(ValueError, match="duplicate node name"):
        Topology((sw, a, _hca("a", 0x300)), (), "a")
    with pytest.raises(ValueError, match="overlaps"):
        Topology((sw, a, _hca("c", 0x101)), (("sw", 1, "a", 1),), "a")
    with pytest.raises(ValueError, match="cabled twice"):
        Topology((sw, a, b), (("sw", 1, "a", 1), ("sw", 1, "b", 1)), "a")
    with pytest.raises(ValueError, match="unknown node"):
        Topology((sw, a), (("sw", 1, "x", 1),), "a")
    with pytest.raises(ValueError, match="port 5"):
        Topology((sw, a), (("sw", 5, "a", 1),), "a")
    with pytest.raises(ValueError, match="must name an HCA"):
        Topology((sw, a), (("sw", 1, "a", 1),), "sw")
    with pytest.raises(ValueError, match="no cabled port"):
        Topology((sw, a, b), (("sw", 1, "a", 1),), "b")
    with pytest.raises(ValueError, match="unusable"):
        Topology((sw, _hca('q"uote', 0x100)), (), 'q"uote')
    with pytest.raises(ValueError, match="unusable"):
        Topology((sw, _hca("x" * 40, 0x100)), (), "x" * 40)


def test_uncabled_hca_ports_are_not_reported() -> None:
    sw = SimNode("sw", "switch", 2, 0x9000)
    dual = _hca("dual", 0x100, ports=2)
    topo = Topology((sw, dual), (("sw", 1, "dual", 2),), "dual")
    assert topo.hca_port_guids() == [0x102]
    assert topo.sm_port_guid == 0x102
    assert '[2] "sw"[1]' in topo.render_netfile()
