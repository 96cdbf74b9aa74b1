from __future__ import annotations

import hashlib

from pkeyd.config import DEFAULT_DEFAULT_MEMBERS
from pkeyd.domain import DesiredState, Member, Membership, Partition, PKey, PortGuid
from pkeyd.opensm.render import MEMBERS_PER_LINE, render, rendered_generation


def _partition(pkey: int, name: str, n_members: int, ipoib: bool = True) -> Partition:
    members = tuple(
        Member(PortGuid(0x0002C90300000000 + i), Membership.FULL if i % 2 else Membership.LIMITED)
        for i in range(1, n_members + 1)
    )
    return Partition(PKey(pkey), name, ipoib, members)


def test_render_is_deterministic_and_names_generation_and_hash() -> None:
    state = DesiredState(7, (_partition(0x20, "b", 2), _partition(0x10, "a", 3, ipoib=False)))
    text = render(state, DEFAULT_DEFAULT_MEMBERS)
    assert text == render(state, DEFAULT_DEFAULT_MEMBERS)
    assert rendered_generation(text) == 7
    header, body = text.split("Default=", 1)
    digest = header.splitlines()[2].removeprefix("# sha256: ")
    assert hashlib.sha256(("Default=" + body).encode()).hexdigest() == digest
    lines = body.splitlines()
    assert lines[0] == "0x7fff, ipoib : ALL=limited, SELF=full ;"
    assert lines[1].startswith("a=0x0010 : 0x0002c90300000001=full, 0x0002c90300000002=limited")
    assert lines[2].startswith("b=0x0020, ipoib : ")
    assert "\r" not in text
    assert text.endswith("\n")


def test_long_member_lists_repeat_the_statement_and_keep_lines_short() -> None:
    state = DesiredState(1, (_partition(0x0A12, "big", 1000),))
    lines = render(state, DEFAULT_DEFAULT_MEMBERS).splitlines()
    statements = [line for line in lines if line.startswith("big=0x0a12, ipoib : ")]
    assert len(statements) == -(-1000 // MEMBERS_PER_LINE)
    assert max(len(line) for line in lines) < 2048
    guids = [e.split("=")[0] for s in statements for e in s.split(" : ")[1][:-2].split(", ")]
    assert len(guids) == len(set(guids)) == 1000


def test_empty_partition_is_a_comment_never_an_empty_statement() -> None:
    text = render(DesiredState(2, (_partition(0x0B00, "empty", 0),)), DEFAULT_DEFAULT_MEMBERS)
    assert "# empty=0x0b00, ipoib : no members yet" in text.splitlines()
    assert not any(line.startswith("empty=") for line in text.splitlines())


def test_foreign_file_has_no_generation() -> None:
    assert rendered_generation("Default=0x7fff : ALL ;\n") is None
