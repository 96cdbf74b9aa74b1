"""The write path's shortcuts give exactly what the plain code gives.

encode_partition reuses each member's text while the member object lives
on; with_members edits the sorted members by binary search for a few
changes. Both are checked against the plain definitions on random input.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pkeyd.api import bodies
from pkeyd.api.bodies import encode_partition
from pkeyd.api.schemas import partition_json
from pkeyd.domain import KEYWORDS, KeywordMember, Member, Membership, Partition, PKey, PortGuid
from pkeyd.history import MemberChange, MemberState, with_members
from tests.strategies import partitions

GUIDS = [0x0002C90300000000 + i for i in range(1, 60)]
STATES: list[MemberState | None] = [None, ("full", False), ("limited", True), ("both", False)]


@settings(max_examples=150, deadline=None)
@given(partitions(0x0123, GUIDS, allow_both=True, qos=True), st.data())
def test_encoded_partition_is_the_partition_document(
    partition: Partition, data: st.DataObject
) -> None:
    assert json.loads(encode_partition(partition)) == partition_json(partition)
    # Then from the texts kept, after each of a few writes.
    for _ in range(data.draw(st.integers(1, 4))):
        partition = with_members(partition, data.draw(st.lists(_changes(), max_size=8)))
        assert json.loads(encode_partition(partition)) == partition_json(partition)


def test_kept_texts_are_used_only_where_the_members_are_the_same() -> None:
    guid = PortGuid(0x0002C90300000001)
    full = Partition(PKey(0x10), "a", False, members=(Member(guid, Membership.FULL),))
    limited = Partition(PKey(0x10), "a", False, members=(Member(guid, Membership.LIMITED, True),))
    assert json.loads(encode_partition(full))["members"][0]["membership"] == "full"
    assert json.loads(encode_partition(limited))["members"] == [
        {"guid": str(guid), "membership": "limited", "index0": True}
    ]
    # Equal members that are other objects (read back from the database).
    members = tuple(Member(PortGuid(g), Membership.FULL) for g in GUIDS[:5])
    again = tuple(Member(PortGuid(g), Membership.BOTH) for g in GUIDS[:5])
    first = Partition(PKey(0x12), "c", True, members=members)
    second = Partition(PKey(0x12), "c", True, members=(*members[:2], *again[2:]))
    assert json.loads(encode_partition(first)) == partition_json(first)
    assert json.loads(encode_partition(second)) == partition_json(second)


def test_kept_texts_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bodies, "MAX_KEPT_PARTITIONS", 3)
    for pkey in range(0x20, 0x2A):
        members = tuple(Member(PortGuid(g), Membership.FULL) for g in GUIDS[:4])
        partition = Partition(PKey(pkey), f"p{pkey}", True, members=members)
        assert json.loads(encode_partition(partition)) == partition_json(partition)
    assert len(bodies._kept) <= 3


def _changes() -> st.SearchStrategy[MemberChange]:
    targets = st.sampled_from(GUIDS).map(lambda g: str(PortGuid(g))) | st.sampled_from(KEYWORDS)
    return st.builds(MemberChange, targets, st.sampled_from(STATES), st.sampled_from(STATES))


def _plain_with_members(partition: Partition, changes: list[MemberChange]) -> Partition:
    """The definition: apply each change in order to a mapping, then sort."""
    members: dict[str, Member] = {str(m.guid): m for m in partition.members}
    keywords: dict[str, KeywordMember] = {k.keyword: k for k in partition.keywords}
    for c in changes:
        if c.after is None and c.is_keyword:
            keywords.pop(c.target, None)
        elif c.after is None:
            members.pop(c.target, None)
        elif c.is_keyword:
            keywords[c.target] = KeywordMember(c.target, Membership(c.after[0]), c.after[1])
        else:
            guid = PortGuid(int(c.target, 16))
            members[c.target] = Member(guid, Membership(c.after[0]), c.after[1])
    return replace(
        partition,
        members=tuple(sorted(members.values(), key=lambda m: m.guid.value)),
        keywords=tuple(keywords[k] for k in KEYWORDS if k in keywords),
    )


@settings(max_examples=200, deadline=None)
@given(
    partitions(0x0124, GUIDS, allow_both=True, qos=False),
    st.lists(_changes(), max_size=12) | st.lists(_changes(), min_size=33, max_size=80),
)
def test_with_members_is_the_changes_applied_in_order(
    partition: Partition, changes: list[MemberChange]
) -> None:
    made = with_members(partition, changes)
    assert made == _plain_with_members(partition, changes)
    assert [m.guid for m in made.members] == sorted(m.guid for m in made.members)
