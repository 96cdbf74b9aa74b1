"""The safety net: read a render back with pkeyd's OpenSM parser before it goes live.

A render replaces the live file only when OpenSM's parser, as emulated by
pkeyd.opensm.parse, reads it without a single diagnostic and finds exactly the
desired state: the same partitions, names, flags, multicast groups and, per
partition, the same final membership of every GUID and keyword. Anything else
would risk OpenSM falling back to its defaults or silently programming
something that was not asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from pkeyd.domain import DEFAULT_NAME, DesiredState, Partition
from pkeyd.groups import DEFAULT_MTU, DEFAULT_RATE, GroupSettings, McastGroup
from pkeyd.opensm.parse import parse
from pkeyd.opensm.parsed import GroupFlags, ParsedPartition
from pkeyd.opensm.render import states_members

# OpenSM gives an IPoIB group this Q_Key when none is set.
IPOIB_QKEY = 0x0B1B
_MAX_PROBLEMS = 50


@dataclass(frozen=True)
class _View:
    """What a partition means to OpenSM, independent of statement layout."""

    name: str
    ipoib: bool
    sl: int
    broadcast: GroupFlags | None
    members: dict[str, tuple[str, bool]]  # GUID or keyword -> (membership, indx0)
    mgroups: dict[str, GroupFlags]


def _mask(scope: tuple[int, ...]) -> int:
    return sum(1 << s for s in scope)


def _broadcast(settings: GroupSettings, sl: int) -> GroupFlags:
    """The IPoIB broadcast group: never scoped, Q_Key 0x0b1b unless set."""
    return GroupFlags(
        mtu=DEFAULT_MTU if settings.mtu is None else settings.mtu,
        rate=DEFAULT_RATE if settings.rate is None else settings.rate,
        sl=sl,
        scope_mask=0,
        q_key=settings.q_key if settings.q_key is not None else IPOIB_QKEY,
        tclass=settings.tclass or 0,
        flow_label=settings.flow_label or 0,
    )


def _group_flags(group: McastGroup, partition: Partition, sl: int) -> GroupFlags:
    own, base = group.settings, partition.settings
    q_key = own.q_key if own.q_key is not None else base.q_key
    return GroupFlags(
        mtu=own.mtu if own.mtu is not None else base.effective_mtu,
        rate=own.rate if own.rate is not None else base.effective_rate,
        sl=own.sl if own.sl is not None else sl,
        scope_mask=_mask(base.scope) | _mask(own.scope),
        q_key=q_key if q_key is not None else (IPOIB_QKEY if group.is_ip else 0),
        # mgroup_create inherits every flag of the statement but TClass.
        tclass=own.tclass or 0,
        flow_label=own.flow_label if own.flow_label is not None else (base.flow_label or 0),
    )


def _expected(partition: Partition, qos: bool) -> _View:
    sl = (partition.settings.sl or 0) if qos else 0
    members = {
        k.keyword: (k.membership.value, k.index0 or partition.indx0) for k in partition.keywords
    }
    members.update(
        {str(m.guid): (m.membership.value, m.index0 or partition.indx0) for m in partition.members}
    )
    return _View(
        name=DEFAULT_NAME if partition.is_default else partition.name,
        ipoib=partition.ipoib,
        sl=sl,
        broadcast=_broadcast(partition.settings, sl) if partition.ipoib else None,
        members=members,
        mgroups={g.mgid: _group_flags(g, partition, sl) for g in partition.mgroups},
    )


def _parsed(partition: ParsedPartition, allow_both_pkeys: bool) -> tuple[_View, list[str]]:
    problems = []
    members: dict[str, tuple[str, bool]] = {}
    seen_guid = False
    for entry in partition.entries:
        is_guid = entry.target.startswith("0x")
        if seen_guid and not is_guid:
            problems.append(
                f"0x{partition.pkey:04x}: keyword {entry.target} after a GUID (line {entry.line})"
            )
        seen_guid = seen_guid or is_guid
        members[entry.target] = (entry.membership, entry.indx0)
    view = _View(
        name=partition.name,
        ipoib=partition.ipoib,
        sl=partition.sl,
        broadcast=partition.broadcast,
        members=members,
        mgroups={g.mgid: g.flags for g in partition.mgroups},
    )
    return view, problems


def _rendered(state: DesiredState) -> list[Partition]:
    """The partitions the file states (member-less ones are only a comment)."""
    return [p for p in state.partitions if states_members(p)]


def self_check(text: str, state: DesiredState, *, allow_both_pkeys: bool, qos: bool) -> list[str]:
    """Problems found reading `text` back; an empty list means it may go live."""
    result = parse(text, allow_both_pkeys=allow_both_pkeys, qos=qos)
    problems = [f"line {d.line}: {d.severity}: {d.code}: {d.message}" for d in result.diagnostics]
    if result.fatal is not None:
        return problems[:_MAX_PROBLEMS]
    parsed = {p.pkey: p for p in result.partitions}
    wanted = {p.pkey.value: p for p in _rendered(state)}
    for pkey in sorted(set(parsed) ^ set(wanted)):
        where = "in the file only" if pkey in parsed else "missing from the file"
        problems.append(f"0x{pkey:04x}: {where}")
    for pkey in sorted(set(parsed) & set(wanted)):
        view, order_problems = _parsed(parsed[pkey], allow_both_pkeys)
        problems += order_problems
        expected = _expected(wanted[pkey], qos)
        for field in ("name", "ipoib", "sl", "broadcast", "mgroups"):
            if getattr(view, field) != getattr(expected, field):
                problems.append(
                    f"0x{pkey:04x}: {field} reads back as {getattr(view, field)!r}, "
                    f"wanted {getattr(expected, field)!r}"
                )
        if view.members != expected.members:
            diff = set(view.members.items()) ^ set(expected.members.items())
            shown = ", ".join(sorted(f"{t}={m}{' indx0' if i else ''}" for t, (m, i) in diff)[:5])
            problems.append(f"0x{pkey:04x}: members differ ({len(diff)} entries): {shown}")
        if len(problems) >= _MAX_PROBLEMS:
            break
    return problems[:_MAX_PROBLEMS]
