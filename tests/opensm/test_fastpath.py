"""The large-file shortcuts say exactly what the slow, detailed paths say.

self_check decides the usual case with one comparison of per-partition keys
and compares in detail only where keys differ; the parser keeps rendered
member lists as text (member runs) and makes MemberEntry objects on demand.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pkeyd.domain import (
    DEFAULT_NAME,
    DEFAULT_PKEY,
    DesiredState,
    KeywordMember,
    Member,
    Membership,
    Partition,
    PKey,
    PortGuid,
)
from pkeyd.opensm import render as render_module
from pkeyd.opensm import selfcheck
from pkeyd.opensm.fastpath import gc_paused
from pkeyd.opensm.parse import _run, parse
from pkeyd.opensm.parsed import ParsedPartition, indx0_runs
from pkeyd.opensm.render import render
from pkeyd.opensm.renderkeys import read_render_keys
from tests.strategies import desired_states

GUIDS = [0x0002C90300000000 + 0x100 * i + 1 for i in range(64)]


def detailed_only(text: str, state: DesiredState, allow_both: bool, qos: bool) -> list[str]:
    """self_check as it was: every partition compared in detail."""
    result = parse(text, allow_both_pkeys=allow_both, qos=qos)
    problems = [f"line {d.line}: {d.severity}: {d.code}: {d.message}" for d in result.diagnostics]
    if result.fatal is not None:
        return problems[:50]
    parsed = {p.pkey: p for p in result.partitions}
    wanted = {p.pkey.value: p for p in selfcheck._rendered(state)}
    return selfcheck._detailed(problems, parsed, wanted, allow_both, qos, skip=set())


# Edits of a rendered file: each keeps it parseable, most change its meaning.
_TEXT_EDITS = [
    ("=full", "=limited"),
    ("=limited", "=full"),
    ("=limited", "=both"),
    (" :", ", indx0 :"),
    (", ipoib", ""),
    (" ;", ", ALL=full ;"),
    ("Default=0x7fff", "Default=0x7fff, sl=1"),
    ("01=", "02="),
    ("=0x", "x=0x"),
]


def _edit_text(text: str, edit: int, line: int) -> str:
    lines = text.split("\n")
    target = 3 + line % max(1, len(lines) - 4)  # a statement line, past the header
    if edit == len(_TEXT_EDITS):
        del lines[target]
    elif edit == len(_TEXT_EDITS) + 1:
        lines.insert(target, lines[target])
    elif edit == len(_TEXT_EDITS) + 2 and target > 3:
        lines[target - 1], lines[target] = lines[target], lines[target - 1]
    elif edit < len(_TEXT_EDITS):
        old, new = _TEXT_EDITS[edit]
        lines[target] = lines[target].replace(old, new, 1)
    return "\n".join(lines)


def _edit_state(state: DesiredState, edit: int, at: int) -> DesiredState:
    """A state the file was not rendered from: one member or flag changed."""
    parts = list(state.partitions)
    part = parts[at % len(parts)]
    members = list(part.members)
    if edit == 1 and members:
        m = members[at % len(members)]
        members[at % len(members)] = dataclasses.replace(m, index0=not m.index0)
    elif edit == 2 and members:
        m = members[at % len(members)]
        flipped = Membership.LIMITED if m.membership == Membership.FULL else Membership.FULL
        members[at % len(members)] = dataclasses.replace(m, membership=flipped)
    elif edit == 3 and members:
        del members[at % len(members)]
    elif edit == 4:
        part = dataclasses.replace(part, indx0=not part.indx0)
    parts[at % len(parts)] = dataclasses.replace(part, members=tuple(members))
    return DesiredState(state.generation, tuple(parts))


@settings(max_examples=300, deadline=None)
@given(
    desired_states(GUIDS, allow_both=True, qos=True),
    st.integers(0, len(_TEXT_EDITS) + 3),
    st.integers(0, 5),
    st.integers(0, 10**6),
    st.booleans(),
    st.booleans(),
)
def test_self_check_says_what_the_detailed_comparison_says(
    state: DesiredState, text_edit: int, state_edit: int, at: int, allow_both: bool, qos: bool
) -> None:
    text = _edit_text(render(state), text_edit, at)
    checked = _edit_state(state, state_edit, at // 7)
    assert selfcheck.self_check(
        text, checked, allow_both_pkeys=allow_both, qos=qos
    ) == detailed_only(text, checked, allow_both, qos)


def _partition(
    pkey: int, members: list[tuple[int, Membership, bool]], *, indx0: bool = False
) -> Partition:
    listed = tuple(Member(PortGuid(g), m, i) for g, m, i in members)
    return Partition(PKey(pkey), f"p{pkey}", False, listed, indx0=indx0)


_DEFAULT = Partition(
    PKey(DEFAULT_PKEY), DEFAULT_NAME, True, keywords=(KeywordMember("ALL", Membership.FULL),)
)


@pytest.mark.parametrize(
    "members",
    [
        # indx0 on some GUIDs: render writes them after the others
        [(GUIDS[0], Membership.FULL, True), (GUIDS[1], Membership.LIMITED, False)],
        # a repeated GUID whose entries render reorders: the last one differs
        [(GUIDS[0], Membership.FULL, True), (GUIDS[0], Membership.LIMITED, False)],
        # a repeated GUID, render keeps the order
        [(GUIDS[0], Membership.FULL, False), (GUIDS[0], Membership.LIMITED, False)],
        [(GUIDS[0], Membership.FULL, True), (GUIDS[0], Membership.LIMITED, True)],
    ],
)
def test_indx0_order_and_repeated_guids(members: list[tuple[int, Membership, bool]]) -> None:
    state = DesiredState(1, (_DEFAULT, _partition(0x10, members)))
    text = render(state)
    for allow_both, qos in [(False, False), (True, True)]:
        got = selfcheck.self_check(text, state, allow_both_pkeys=allow_both, qos=qos)
        assert got == detailed_only(text, state, allow_both, qos)


def test_a_clean_render_never_takes_the_detailed_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def detailed(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError("detailed comparison of a clean render")

    monkeypatch.setattr(selfcheck, "_detailed", detailed)
    big = [(GUIDS[i % 64] + (i // 64 << 32), Membership.FULL, False) for i in range(300)]
    parts = [_DEFAULT, _partition(0x10, big), _partition(0x11, big[:3], indx0=True)]
    state = DesiredState(1, tuple(parts))
    assert selfcheck.self_check(render(state), state, allow_both_pkeys=False, qos=False) == []


def test_a_mismatch_names_only_the_partitions_that_differ() -> None:
    parts = [_partition(p, [(GUIDS[p], Membership.FULL, False)]) for p in range(1, 40)]
    state = DesiredState(1, (_DEFAULT, *parts))
    text = render(state).replace(f"0x{GUIDS[7]:016x}=full", f"0x{GUIDS[7]:016x}=limited")
    problems = selfcheck.self_check(text, state, allow_both_pkeys=False, qos=False)
    assert problems == [f"0x0007: members differ (2 entries): 0x{GUIDS[7]:016x}=full, "
                        f"0x{GUIDS[7]:016x}=limited"]  # fmt: skip


# -- member runs --------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(desired_states(GUIDS, allow_both=True), st.booleans())
def test_member_runs_stand_for_the_entries_the_buffer_walk_makes(
    state: DesiredState, allow_both: bool
) -> None:
    data = render(state).encode()
    fast, exact = (
        parse(data, allow_both_pkeys=allow_both),
        _run(data, allow_both, False, fast=False),
    )
    assert fast == exact
    for ours, theirs in zip(fast.partitions, exact.partitions, strict=True):
        assert ours.member_key() == theirs.member_key()
        assert [e.seq for e in ours.entries] == [e.seq for e in theirs.entries]
        assert hash(ours) == hash(theirs)


def test_member_key_encodes_targets_memberships_and_indx0() -> None:
    text = (
        "Default=0x7fff : ALL=limited, SELF=full ;\n"
        "a=0x10, indx0 : 0x0000000000000001=full, 0x0000000000000002=limited ;\n"
        "a=0x10 : 0x0000000000000003=both ;\n"
    )
    result = parse(text, allow_both_pkeys=True)
    a = result.partition(0x10)
    assert a is not None
    items = "0x0000000000000001=full, 0x0000000000000002=limited, 0x0000000000000003=both"
    assert a.member_key() == (items, ((True, 2), (False, 1)))
    assert [(e.target, e.membership, e.indx0, e.line) for e in a.entries] == [
        ("0x0000000000000001", "full", True, 2),
        ("0x0000000000000002", "limited", True, 2),
        ("0x0000000000000003", "both", False, 3),
    ]
    assert indx0_runs([(False, 0), (True, 1), (True, 2), (False, 1)]) == ((True, 3), (False, 1))


def test_parsed_partition_stays_a_frozen_value() -> None:
    result = parse("Default=0x7fff : ALL=limited ;\nb=0x11 : 0x0000000000000001=full ;\n")
    part = result.partitions[1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        part.name = "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        del part.sl
    assert pickle.loads(pickle.dumps(part)) == part
    assert copy.deepcopy(part) == part
    assert "entries=(MemberEntry(target='0x0000000000000001'" in repr(part)
    same = ParsedPartition(
        part.pkey, part.name, part.ipoib, part.broadcast, part.sl, part.entries, (), part.lines
    )
    assert same == part
    assert hash(same) == hash(part)
    with pytest.raises(ValueError, match="either"):
        ParsedPartition(
            0x11, "b", False, None, 0, part.entries, (), (2,), runs=(("x", 1, False, 2, 1),)
        )


# -- gc_paused ----------------------------------------------------------------------


def test_gc_paused_restores_the_collector_even_on_error() -> None:
    def paused_then_fails() -> None:
        with gc_paused():
            assert not gc.isenabled()
            raise RuntimeError

    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        paused_then_fails()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # was off before, stays off
    finally:
        gc.enable()


def test_parse_and_self_check_leave_no_reference_cycles() -> None:
    """Everything a parse makes is freed by reference counting, not left to the
    cyclic collector (which would walk hundreds of thousands of objects)."""
    guids = [PortGuid(g) for g in GUIDS[:8]]
    tenant = Partition(
        pkey=PKey(0x12),
        name="tenant",
        ipoib=True,
        members=tuple(Member(g, Membership.FULL, False) for g in guids),
    )
    default = Partition(
        pkey=PKey(DEFAULT_PKEY),
        name=DEFAULT_NAME,
        ipoib=True,
        keywords=(KeywordMember("ALL", Membership.LIMITED, False),),
    )
    state = DesiredState(3, (default, tenant))
    text = render(state)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        result = parse(text)
        assert result.fatal is None
        del result
        assert selfcheck.self_check(text, state, allow_both_pkeys=False, qos=False) == []
        assert gc.collect() == 0
    finally:
        if was_enabled:
            gc.enable()


def _generic_lines(partition: Partition) -> list[str]:
    """render_partition's statements through the general path (_member_runs) only."""
    headers = {
        flag: render_module.statement_header(partition, indx0=flag) for flag in (False, True)
    }
    return [
        f"{headers[flag]} {', '.join(run)} ;" for flag, run in render_module._member_runs(partition)
    ]


@settings(max_examples=300, deadline=None)
@given(desired_states(GUIDS, allow_both=True, qos=True))
def test_render_shortcut_for_guid_only_partitions_writes_the_general_paths_lines(
    state: DesiredState,
) -> None:
    for partition in state.partitions:
        shortcut = render_module._guid_lines(partition)
        if shortcut is not None:
            assert shortcut == _generic_lines(partition)


def _without_mgroups(state: DesiredState) -> DesiredState:
    return DesiredState(
        state.generation, tuple(dataclasses.replace(p, mgroups=()) for p in state.partitions)
    )


@settings(max_examples=400, deadline=None)
@given(st.data(), st.booleans(), st.booleans(), st.integers(0, len(_TEXT_EDITS) + 6))
def test_render_keys_are_the_full_parses_keys_or_none(
    data: st.DataObject, allow_both: bool, qos: bool, text_edit: int
) -> None:
    """Most examples are renders of states without mgroups (the shortcut's domain),
    edited or not; a read with other opensm.conf options than the state's is
    included too."""
    state = _without_mgroups(data.draw(desired_states(GUIDS, allow_both=allow_both, qos=qos)))
    text = render(state)
    if text_edit <= len(_TEXT_EDITS) + 3:
        text = _edit_text(text, text_edit, data.draw(st.integers(0, 10**6)))
    if data.draw(st.booleans()):
        allow_both, qos = data.draw(st.booleans()), data.draw(st.booleans())
    keys = read_render_keys(text, allow_both_pkeys=allow_both, qos=qos)
    result = parse(text, allow_both_pkeys=allow_both, qos=qos)
    if keys is None:
        return
    assert result.diagnostics == ()
    flags: dict[int, tuple[int, ...] | None] = {}
    assert keys == {p.pkey: selfcheck._parsed_key(p, flags) for p in result.partitions}


def test_render_keys_take_the_render_of_a_plain_state() -> None:
    """The shortcut really applies to what render writes for GUID and keyword members."""
    default = Partition(
        pkey=PKey(DEFAULT_PKEY),
        name=DEFAULT_NAME,
        ipoib=True,
        keywords=(KeywordMember("ALL", Membership.LIMITED, False),),
    )
    many = tuple(Member(PortGuid(g), Membership.FULL, i % 3 == 0) for i, g in enumerate(GUIDS))
    state = DesiredState(
        5, (default, Partition(pkey=PKey(0x12), name="big", ipoib=False, members=many))
    )
    text = render(state)
    keys = read_render_keys(text, allow_both_pkeys=False, qos=False)
    assert keys is not None
    assert set(keys) == {0x12, DEFAULT_PKEY}
    assert keys[0x12][6] == ((False, 42), (True, 22))  # indx0 members written last


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("t=0x12 : 0x0002c90300000001=full ; # note", "comment after a statement"),
        ("t=0x12, ipoib : mgid=ff12:401b::1,mtu=4,rate=3 ;", "mgid entry"),
        ("t=0x12 : 0x0002c90300000001=both ;", "both without allow_both_pkeys"),
        ("t=0x12, sl=1 : 0x0002c90300000001=full ;", "sl without qos"),
        ("t=0x12 : 0x0002c90300000001=full ;\nu=0x12 : SELF=full ;", "second name"),
        ("Other=0x7fff : ALL=full ;", "another name for the Default partition"),
        ("t=0x12, mtuu=4 : 0x0002c90300000001=full ;", "a flag only prefix-matched"),
        ("t=0x12 : 0x0002c90300000001=full ;\r", "carriage return"),
        ("t=0x12 : 0x0000000000000000=full ;", "GUID 0"),
        ("", "no statement at all"),
    ],
)
def test_render_keys_leave_anything_unusual_to_the_full_parse(line: str, why: str) -> None:
    assert read_render_keys(line, allow_both_pkeys=False, qos=False) is None, why
