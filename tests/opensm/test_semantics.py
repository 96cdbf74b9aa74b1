"""expected_tables / expected_index0: OpenSM's membership bookkeeping on a known fabric."""

from __future__ import annotations

from pkeyd.opensm.parse import parse
from pkeyd.opensm.parsed import Membership
from pkeyd.opensm.semantics import (
    FabricPort,
    NodeType,
    expected_index0,
    expected_tables,
    raw_entries,
)

SM, CA1, CA2, SW = 0x1001, 0x2001, 0x3001, 0x9000
PORTS: list[tuple[int, NodeType]] = [
    FabricPort(SM, "ca"),
    FabricPort(CA1, "ca"),
    FabricPort(CA2, "ca"),
    FabricPort(SW, "switch"),
]


def tables(text: str, *, allow_both_pkeys: bool = False) -> dict[int, dict[int, Membership]]:
    result = parse(text, allow_both_pkeys=allow_both_pkeys)
    return expected_tables(result, PORTS, SM, allow_both_pkeys=allow_both_pkeys)


def test_default_partition_is_implicit() -> None:
    assert tables(f"a=0x10 : {CA1:#x}=full ;") == {
        SM: {0x7FFF: "full"},
        CA1: {0x7FFF: "limited", 0x10: "full"},
        CA2: {0x7FFF: "limited"},
        SW: {0x7FFF: "limited"},
    }


def test_fatal_or_empty_file_is_the_no_config_default() -> None:
    everyone_full = {guid: {0x7FFF: "full"} for guid, _ in PORTS}
    assert tables(f"a=0x10 : {CA1:#x}=full ; oops") == everyone_full
    assert tables("# nothing\n") == everyone_full


def test_keywords_expand_by_node_type() -> None:
    got = tables(
        "a=0x10 : ALL_CAS ; b=0x20 : ALL_SWITCHES=full ; c=0x30 : SELF=full, ALL_ROUTERS ;"
    )
    assert {g: sorted(t) for g, t in got.items()} == {
        SM: [0x10, 0x30, 0x7FFF],
        CA1: [0x10, 0x7FFF],
        CA2: [0x10, 0x7FFF],
        SW: [0x20, 0x7FFF],
    }


def test_last_entry_wins_per_port() -> None:
    got = tables(f"a=0x10 : {CA1:#x}=full, ALL ; a=0x10 : {CA2:#x}=full ;")
    assert [got[g][0x10] for g in (SM, CA1, CA2, SW)] == ["limited", "limited", "full", "limited"]
    redefined = tables("Default=0x7fff : ALL=full ;")
    assert all(t == {0x7FFF: "full"} for t in redefined.values())


def test_unknown_guids_and_empty_partitions_vanish() -> None:
    got = tables("a=0x10 : 0x0002c90399990001 ; b=0x20 : NONE ;")
    assert all(set(t) == {0x7FFF} for t in got.values())


def test_both_needs_allow_both_pkeys() -> None:
    text = f"a=0x10 : {CA1:#x}=both ;"
    assert tables(text)[CA1][0x10] == "full"
    both = tables(text, allow_both_pkeys=True)
    assert both[CA1][0x10] == "both"
    assert raw_entries(both[CA1]) == {0x7FFF, 0x0010, 0x8010}
    assert raw_entries({0x7FFF: "full", 0x10: "limited"}) == {0xFFFF, 0x0010}


def test_index0_follows_indx0_entries_in_file_order() -> None:
    text = (
        f"a=0x10, indx0 : {CA1:#x}=full, {CA2:#x} ;\n"
        f"b=0x20, indx0 : {CA2:#x}=full ;\n"
        f"a=0x10 : {CA1:#x}=full ;\n"  # same PKey without indx0: CA1 loses it
    )
    result = parse(text)
    assert expected_index0(result, PORTS, SM) == {
        SM: 0xFFFF,
        CA1: 0x7FFF,
        CA2: 0x8020,
        SW: 0x7FFF,
    }


def test_index0_after_a_fatal_parse() -> None:
    result = parse(f"a=0x10, indx0 : {CA1:#x}=full ;\nb=0x20 : bad ;\n")
    # the failed parse's indx0 record survives the fallback: no Default at 0
    assert expected_index0(result, PORTS, SM) == {SM: 0xFFFF, CA1: None, CA2: 0xFFFF, SW: 0xFFFF}


def test_index0_with_allow_both_pkeys() -> None:
    result = parse(f"a=0x10, indx0 : {CA1:#x}=both ;", allow_both_pkeys=True)
    index0 = expected_index0(result, PORTS, SM, allow_both_pkeys=True)
    assert index0 == {SM: 0xFFFF, CA1: 0x0010, CA2: None, SW: None}
