"""Drift between port tables and the desired state, and the table repair plan."""

from __future__ import annotations

from datetime import UTC, datetime

from pkeyd.domain import (
    DesiredState,
    KeywordMember,
    Member,
    Membership,
    Partition,
    PKey,
    PortGuid,
)
from pkeyd.drift import compute_drift, corrected_table, ports_by_kind
from pkeyd.fabric.model import FabricPort, FabricSnapshot, MadStats, NodeType, PortState

SM, A, B, C, GONE = 0x101, 0x201, 0x301, 0x401, 0x999
DEFAULT = Partition(
    PKey(0x7FFF),
    "Default",
    ipoib=True,
    keywords=(KeywordMember("ALL", Membership.LIMITED), KeywordMember("SELF", Membership.FULL)),
)


def _port(guid: int, *entries: int, cap: int = 8) -> FabricPort:
    table = (list(entries) + [0] * cap)[:cap]
    return FabricPort(guid - 1, guid, 1, NodeType.CA, "", guid, PortState.ACTIVE, cap, tuple(table))


def _snapshot(*ports: FabricPort) -> FabricSnapshot:
    return FabricSnapshot(ports, datetime.now(UTC), 0.01, MadStats())


STATE = DesiredState(
    3,
    (
        DEFAULT,
        Partition(
            PKey(0x0A12),
            "t",
            ipoib=False,
            members=(
                Member(PortGuid(A), Membership.FULL),
                Member(PortGuid(B), Membership.LIMITED),
                Member(PortGuid(GONE), Membership.FULL),
            ),
        ),
    ),
)


def test_every_kind_of_drift_is_named() -> None:
    snapshot = _snapshot(
        _port(SM, 0xFFFF),
        _port(A, 0x7FFF),  # missing 0x8a12
        _port(B, 0x7FFF, 0x8A12),  # full where limited was asked
        _port(C, 0x7FFF, 0x0B00),  # a PKey pkeyd does not know
    )
    drift = compute_drift(STATE, snapshot, SM, allow_both=False)
    found = {(d.port_guid, d.pkey, d.kind, d.expected, d.actual) for d in drift}
    assert found == {
        (A, 0x0A12, "missing", "full", None),
        (B, 0x0A12, "wrong_membership", "limited", "full"),
        (C, 0x0B00, "unexpected", None, "limited"),
        (GONE, 0x0A12, "absent_member", "full", None),
    }
    assert ports_by_kind(drift)["missing"] == 1


def test_a_full_table_is_over_capacity_not_missing() -> None:
    snapshot = _snapshot(_port(SM, 0xFFFF), _port(A, 0x7FFF, cap=1), _port(B, 0x7FFF, 0x0A12))
    drift = compute_drift(STATE, snapshot, SM, allow_both=False)
    assert [(d.port_guid, d.kind) for d in drift if d.port_guid == A] == [(A, "over_capacity")]


def test_matching_tables_have_no_drift_but_the_absent_member() -> None:
    snapshot = _snapshot(
        _port(SM, 0xFFFF), _port(A, 0x7FFF, 0x8A12), _port(B, 0x0A12, 0x7FFF), _port(C, 0x7FFF)
    )
    drift = compute_drift(STATE, snapshot, SM, allow_both=False)
    assert [d.kind for d in drift] == ["absent_member"]


def test_repair_restores_the_last_good_layout_or_patches_in_place() -> None:
    tampered = _port(A, 0x7FFF, 0x0000, 0x0B00)
    expected = {0x7FFF: "limited", 0x0A12: "full"}
    last_good = (0x7FFF, 0x8A12, 0, 0, 0, 0, 0, 0)
    assert corrected_table(tampered, expected, last_good) == last_good
    # Without a good layout (or a stale one): wrong entries cleared, missing ones added.
    stale = (0x7FFF, 0x0C00, 0, 0, 0, 0, 0, 0)
    assert corrected_table(tampered, expected, stale) == (0x7FFF, 0x8A12, 0, 0, 0, 0, 0, 0)
    both = corrected_table(_port(A, 0x7FFF), {0x7FFF: "limited", 0x0A12: "both"}, None)
    assert set(both) == {0x7FFF, 0x0A12, 0x8A12, 0}
