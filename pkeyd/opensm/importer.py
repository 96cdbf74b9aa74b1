"""Turn a parsed partitions.conf into pkeyd partitions that OpenSM reads the same way.

The parser (pkeyd.opensm.parse) already resolved what OpenSM resolves: PKeys,
merged statements, prefix-matched flags and suffixes, defmember, `both`. What
is left is pkeyd's canonical layout, where keywords come before GUIDs and an
explicit GUID overrides a keyword. A file may say it the other way round (a
GUID, then ALL): there the keyword wins for the ports it covers, so the GUID
entry is dropped. For ALL_CAS the GUID is taken to be an HCA port, which it is
in practice; every such decision is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    validate_name,
)
from pkeyd.errors import ValidationError
from pkeyd.groups import DEFAULT_MTU, DEFAULT_RATE, GroupSettings, McastGroup
from pkeyd.opensm.parsed import GroupFlags, ParsedPartition, ParseResult
from pkeyd.opensm.selfcheck import IPOIB_QKEY

# Keywords that cover a port given by GUID (taken to be an HCA port).
_COVERS_GUID = {"ALL", "ALL_CAS"}


@dataclass
class ImportPlan:
    partitions: list[Partition] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _scopes(mask: int) -> tuple[int, ...]:
    return tuple(s for s in range(1, 16) if mask & (1 << s))


def _settings(flags: GroupFlags, *, sl: int, ip: bool) -> GroupSettings:
    return GroupSettings(
        mtu=None if flags.mtu == DEFAULT_MTU else flags.mtu,
        rate=None if flags.rate == DEFAULT_RATE else flags.rate,
        sl=sl or None,
        scope=_scopes(flags.scope_mask),
        q_key=None if flags.q_key in ((0, IPOIB_QKEY) if ip else (0,)) else flags.q_key,
        tclass=flags.tclass or None,
        flow_label=flags.flow_label or None,
    )


def _explicit(flags: GroupFlags) -> GroupSettings:
    """A group's effective flags, spelled out so nothing depends on inheritance."""
    return GroupSettings(
        mtu=flags.mtu,
        rate=flags.rate,
        sl=flags.sl or None,
        scope=_scopes(flags.scope_mask),
        q_key=flags.q_key or None,
        tclass=flags.tclass or None,
        flow_label=flags.flow_label or None,
    )


def _name(parsed: ParsedPartition, taken: set[str], plan: ImportPlan) -> str:
    if parsed.pkey == DEFAULT_PKEY:
        return "Default"
    fallback = f"pk_0x{parsed.pkey:04x}"
    try:
        name = validate_name(parsed.name)
    except ValidationError as exc:
        plan.notes.append(
            f"0x{parsed.pkey:04x}: name {parsed.name!r} {exc.message}; named {fallback}"
        )
        name = fallback
    if name in taken:
        plan.notes.append(f"0x{parsed.pkey:04x}: name {name!r} is used twice; named {fallback}")
        name = fallback
    taken.add(name)
    return name


def _members(
    parsed: ParsedPartition, plan: ImportPlan
) -> tuple[tuple[Member, ...], tuple[KeywordMember, ...]]:
    guids: dict[str, tuple[str, bool]] = {}
    keywords: dict[str, tuple[str, bool]] = {}
    for entry in parsed.entries:
        if entry.target in KEYWORDS:
            if entry.target in _COVERS_GUID and guids:
                plan.notes.append(
                    f"0x{parsed.pkey:04x}: {entry.target} on line {entry.line} overrides "
                    f"{len(guids)} GUID entries before it; they are dropped"
                )
                guids.clear()
            keywords[entry.target] = (entry.membership, entry.indx0)
        else:
            guids[entry.target] = (entry.membership, entry.indx0)
    return (
        tuple(
            sorted(
                (Member(PortGuid(int(g, 16)), Membership(m), i) for g, (m, i) in guids.items()),
                key=lambda m: m.guid,
            )
        ),
        tuple(
            KeywordMember(k, Membership(keywords[k][0]), keywords[k][1])
            for k in KEYWORDS
            if k in keywords
        ),
    )


def plan_import(result: ParseResult) -> ImportPlan:
    """The partitions to store for a parsed file that has no fatal error."""
    if result.fatal is not None:
        raise ValueError("a file with a fatal error cannot be imported")
    plan = ImportPlan()
    taken: set[str] = set()
    has_default = False
    for parsed in result.partitions:
        members, keywords = _members(parsed, plan)
        if not members and not keywords and parsed.pkey != DEFAULT_PKEY:
            plan.notes.append(f"0x{parsed.pkey:04x}: no members; OpenSM drops it, so does import")
            continue
        ip_flags = parsed.broadcast if parsed.ipoib and parsed.broadcast else None
        settings = (
            _settings(ip_flags, sl=parsed.sl, ip=True)
            if ip_flags is not None
            else GroupSettings(sl=parsed.sl or None)
        )
        groups = tuple(McastGroup(g.mgid, _explicit(g.flags)) for g in parsed.mgroups)
        has_default = has_default or parsed.pkey == DEFAULT_PKEY
        plan.partitions.append(
            Partition(
                pkey=PKey(parsed.pkey),
                name=_name(parsed, taken, plan),
                ipoib=parsed.ipoib,
                members=members,
                keywords=keywords,
                settings=settings,
                mgroups=groups,
            )
        )
    if not has_default:
        # OpenSM's implicit Default (every port limited, the SM full) stays as it is.
        plan.partitions.insert(0, Partition(PKey(DEFAULT_PKEY), "Default", ipoib=False))
    plan.partitions.sort(key=lambda p: (p.pkey.value != DEFAULT_PKEY, p.pkey))
    return plan


def as_state(plan: ImportPlan, generation: int = 0) -> DesiredState:
    return DesiredState(generation, tuple(plan.partitions))
