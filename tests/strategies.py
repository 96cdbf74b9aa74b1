"""Hypothesis strategies for valid desired states (shared by unit and e2e tests)."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from pkeyd.domain import (
    DEFAULT_PKEY,
    KEYWORDS,
    DesiredState,
    KeywordMember,
    Member,
    Membership,
    Partition,
    PKey,
    PortGuid,
)
from pkeyd.groups import GroupSettings, McastGroup

_NAME_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="=,:;#")
names = st.text(_NAME_CHARS, min_size=1, max_size=31).filter(
    lambda s: s == s.strip() and not s[0].isdigit() and s != "Default"
)


def memberships(allow_both: bool) -> st.SearchStrategy[Membership]:
    options = list(Membership) if allow_both else [Membership.FULL, Membership.LIMITED]
    return st.sampled_from(options)


def group_settings(qos: bool) -> st.SearchStrategy[GroupSettings]:
    return st.builds(
        GroupSettings,
        mtu=st.none() | st.integers(1, 5),
        rate=st.none() | st.integers(2, 22),
        sl=st.none() | (st.integers(0, 15) if qos else st.just(0)),
        scope=st.lists(st.integers(1, 15), max_size=3, unique=True).map(lambda s: tuple(sorted(s))),
        q_key=st.none() | st.integers(1, 0xFFFFFFFF),
        tclass=st.none() | st.integers(1, 255),
        flow_label=st.none() | st.integers(1, 0xFFFFF),
    )


def partitions(
    pkey: int, guids: list[int], *, allow_both: bool, qos: bool
) -> st.SearchStrategy[Partition]:
    member = st.builds(
        Member, st.sampled_from(guids).map(PortGuid), memberships(allow_both), st.booleans()
    )
    keyword = st.builds(
        KeywordMember, st.sampled_from(KEYWORDS), memberships(allow_both), st.booleans()
    )
    group = st.builds(
        McastGroup,
        # mgids are global to the subnet: keep them apart per partition.
        st.integers(0, 0xFFFF).map(lambda n: str(ipaddress.IPv6Address(f"ff15::{pkey:x}:{n:x}"))),
        st.builds(GroupSettings, mtu=st.none() | st.integers(1, 5), sl=st.just(None)),
    )

    def build(
        name: str,
        ipoib: bool,
        settings: GroupSettings,
        members: list[Member],
        keywords: list[KeywordMember],
        groups: list[McastGroup],
        defmember: Membership | None,
        indx0: bool,
    ) -> Partition:
        by_guid = {m.guid: m for m in members}
        by_keyword = {k.keyword: k for k in keywords}
        return Partition(
            pkey=PKey(pkey),
            name="Default" if pkey == DEFAULT_PKEY else name,
            ipoib=ipoib,
            members=tuple(sorted(by_guid.values(), key=lambda m: m.guid)),
            keywords=tuple(by_keyword[k] for k in KEYWORDS if k in by_keyword),
            settings=settings,
            defmember=defmember,
            indx0=indx0,
            mgroups=tuple({g.mgid: g for g in groups}.values()),
        )

    return st.builds(
        build,
        names,
        st.booleans(),
        group_settings(qos),
        st.lists(member, max_size=120),
        st.lists(keyword, max_size=3),
        st.lists(group, max_size=2),
        st.none() | memberships(allow_both),
        st.booleans(),
    )


@st.composite
def desired_states(
    draw: st.DrawFn, guids: list[int], *, allow_both: bool = False, qos: bool = False
) -> DesiredState:
    pkeys = draw(st.lists(st.integers(1, 0x7FFE), max_size=6, unique=True))
    parts = [
        draw(partitions(p, guids, allow_both=allow_both, qos=qos)) for p in [DEFAULT_PKEY, *pkeys]
    ]
    names_seen: set[str] = set()
    unique = []
    for part in parts:
        if part.name in names_seen:
            continue
        names_seen.add(part.name)
        unique.append(part)
    return DesiredState(draw(st.integers(0, 10**6)), tuple(unique))
