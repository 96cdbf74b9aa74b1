from __future__ import annotations

import hashlib

import pytest

from pkeyd.domain import (
    DesiredState,
    KeywordMember,
    Member,
    Membership,
    Partition,
    PKey,
    PortGuid,
)
from pkeyd.groups import GroupSettings, McastGroup
from pkeyd.opensm.render import (
    MEMBERS_PER_LINE,
    is_intact_render,
    render,
    rendered_generation,
)

DEFAULT = Partition(
    PKey(0x7FFF),
    "Default",
    ipoib=True,
    keywords=(
        KeywordMember("ALL", Membership.LIMITED),
        KeywordMember("SELF", Membership.FULL),
    ),
)


def _partition(pkey: int, name: str, n_members: int, ipoib: bool = True) -> Partition:
    members = tuple(
        Member(PortGuid(0x0002C90300000000 + i), Membership.FULL if i % 2 else Membership.LIMITED)
        for i in range(1, n_members + 1)
    )
    return Partition(PKey(pkey), name, ipoib, members)


def _state(*partitions: Partition, generation: int = 1) -> DesiredState:
    return DesiredState(generation, (DEFAULT, *partitions))


def test_render_is_deterministic_and_names_generation_and_hash() -> None:
    state = _state(_partition(0x20, "b", 2), _partition(0x10, "a", 3, ipoib=False), generation=7)
    text = render(state)
    assert text == render(state)
    assert rendered_generation(text) == 7
    assert is_intact_render(text.encode())
    header, body = text.split("Default=", 1)
    digest = header.splitlines()[2].removeprefix("# sha256: ")
    assert hashlib.sha256(("Default=" + body).encode()).hexdigest() == digest
    lines = body.splitlines()
    assert lines[0] == "0x7fff, ipoib : ALL=limited, SELF=full ;"
    assert lines[1].startswith("a=0x0010 : 0x0002c90300000001=full, 0x0002c90300000002=limited")
    assert lines[2].startswith("b=0x0020, ipoib : ")
    assert "\r" not in text
    assert text.endswith("\n")


def test_a_changed_byte_breaks_the_hash() -> None:
    text = render(_state(_partition(0x20, "b", 2)))
    assert not is_intact_render(text.replace("=full", "=limited", 1).encode())
    assert not is_intact_render(b"Default=0x7fff : ALL ;\n")


def test_long_member_lists_repeat_the_statement_and_keep_lines_short() -> None:
    lines = render(_state(_partition(0x0A12, "big", 1000))).splitlines()
    statements = [line for line in lines if line.startswith("big=0x0a12, ipoib : ")]
    assert len(statements) == -(-1000 // MEMBERS_PER_LINE)
    assert max(len(line) for line in lines) < 2048
    guids = [e.split("=")[0] for s in statements for e in s.split(" : ")[1][:-2].split(", ")]
    assert len(guids) == len(set(guids)) == 1000


def test_empty_partition_is_a_comment_and_empty_default_is_none() -> None:
    empty_default = Partition(PKey(0x7FFF), "Default", ipoib=False)
    text = render(DesiredState(2, (empty_default, _partition(0x0B00, "empty", 0))))
    lines = text.splitlines()
    assert "# empty=0x0b00, ipoib : no members yet" in lines
    assert "Default=0x7fff : NONE ;" in lines


def test_flags_keywords_index0_and_mgroups() -> None:
    partition = Partition(
        PKey(0x0A12),
        "storage",
        ipoib=True,
        members=(
            Member(PortGuid(0x11), Membership.FULL, index0=True),
            Member(PortGuid(0x12), Membership.LIMITED),
        ),
        keywords=(KeywordMember("ALL_SWITCHES", Membership.FULL),),
        settings=GroupSettings(mtu=5, rate=7, scope=(2, 5), q_key=0x1234, tclass=8, flow_label=9),
        defmember=Membership.LIMITED,
        mgroups=(McastGroup("ff12:601b:8a12::1", GroupSettings(sl=0)),),
    )
    lines = render(_state(partition)).splitlines()
    head = (
        "storage=0x0a12, ipoib, mtu=5, rate=7, Q_Key=0x1234, TClass=8, "
        "FlowLabel=0x9, defmember=limited"
    )
    assert f"{head} : ALL_SWITCHES=full, 0x0000000000000012=limited ;" in lines
    assert f"{head}, indx0 : 0x0000000000000011=full ;" in lines
    assert f"{head} : mgid=ff12:601b:8a12::1,mtu=5,rate=7,sl=0,scope=2,scope=5 ;" in lines


def test_render_needs_the_default_partition() -> None:
    with pytest.raises(ValueError, match="Default"):
        render(DesiredState(1, (_partition(0x10, "a", 1),)))
