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

from pkeyd.domain import DEFAULT_NAME, DEFAULT_PKEY, DesiredState, Partition
from pkeyd.groups import DEFAULT_MTU, DEFAULT_RATE, GroupSettings, McastGroup
from pkeyd.opensm.fastpath import Steps, gc_paused, run_steps
from pkeyd.opensm.parse import parse
from pkeyd.opensm.parsed import ENTRY_SEP, GroupFlags, Indx0Runs, ParsedPartition, indx0_runs
from pkeyd.opensm.render import states_members
from pkeyd.opensm.renderkeys import render_keys_steps

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


# What a partition reads back as, in one value that compares in C: name,
# ipoib, sl, broadcast flags, multicast groups (None without any), member
# items and indx0 runs (ParsedPartition.member_key). Equal keys mean the
# detailed comparison finds nothing; a None anywhere means "compare in detail".
_Key = tuple[object, ...]
# A GUID entry as render writes it: str(PortGuid)=membership (a StrEnum
# prints as its value).
_GUID_ITEM = "0x%016x=%s"


def _flags_key(f: GroupFlags | None) -> tuple[int, ...] | None:
    if f is None:
        return None
    return (f.mtu, f.rate, f.sl, f.scope_mask, f.q_key, f.tclass, f.flow_label)


def _parsed_key(partition: ParsedPartition, flags: dict[int, tuple[int, ...] | None]) -> _Key:
    """The key of a parsed partition; ``flags`` caches _flags_key per GroupFlags object."""
    broadcast = flags.get(id(partition.broadcast), ())
    if broadcast == ():
        broadcast = flags[id(partition.broadcast)] = _flags_key(partition.broadcast)
    groups = {g.mgid: _flags_key(g.flags) for g in partition.mgroups} if partition.mgroups else None
    p = partition
    return (p.name, p.ipoib, p.sl, broadcast, groups, *p.member_key())


def _expected_key(partition: Partition, qos: bool) -> _Key:
    """The key of a partition as stored: _parsed_key of what it should read back as."""
    p, s = partition, partition.settings
    sl = (s.sl or 0) if qos else 0
    broadcast = None
    if p.ipoib:  # _broadcast(), field by field
        broadcast = (
            DEFAULT_MTU if s.mtu is None else s.mtu,
            DEFAULT_RATE if s.rate is None else s.rate,
            sl,
            0,
            s.q_key if s.q_key is not None else IPOIB_QKEY,
            s.tclass or 0,
            s.flow_label or 0,
        )
    groups = {g.mgid: _flags_key(_group_flags(g, p, sl)) for g in p.mgroups} if p.mgroups else None
    name = DEFAULT_NAME if p.pkey.value == DEFAULT_PKEY else p.name
    return (name, p.ipoib, sl, broadcast, groups, *_render_order_key(p))


def _render_order_key(partition: Partition) -> tuple[str, Indx0Runs] | tuple[None, None]:
    """ParsedPartition.member_key of the entries in the order render writes them.

    Keywords as stored, then GUIDs stably sorted by their indx0 flag
    (render._member_runs). (None, None) when that order differs from the
    stored one and a GUID repeats: only then could the reordering change
    which entry wins.
    """
    members, keywords, indx0 = partition.members, partition.keywords, partition.indx0
    if indx0:
        items = [_GUID_ITEM % (m.guid.value, m.membership) for m in members]
        marked = len(members)
    else:  # unmarked GUIDs first; usually that is all of them
        items = [_GUID_ITEM % (m.guid.value, m.membership) for m in members if not m.index0]
        marked = len(members) - len(items)
        if marked:
            if marked < len(members) and len({m.guid.value for m in members}) < len(members):
                return None, None
            items += [_GUID_ITEM % (m.guid.value, m.membership) for m in members if m.index0]
    if not keywords and marked in (0, len(members)):  # the usual case: one flag for all
        return ENTRY_SEP.join(items), ((marked > 0, marked or len(members)),) if members else ()
    flags = [(k.index0 or indx0, 1) for k in keywords]
    flags += [(False, len(members) - marked), (True, marked)]
    listed = [f"{k.keyword}={k.membership}" for k in keywords] + items
    return ENTRY_SEP.join(listed), indx0_runs(flags)


def self_check(text: str, state: DesiredState, *, allow_both_pkeys: bool, qos: bool) -> list[str]:
    """Problems found reading `text` back; an empty list means it may go live."""
    with gc_paused():
        if run_steps(reads_back_steps(text, state, allow_both_pkeys=allow_both_pkeys, qos=qos)):
            return []
    return full_check(text, state, allow_both_pkeys=allow_both_pkeys, qos=qos)


def reads_back_steps(
    text: str, state: DesiredState, *, allow_both_pkeys: bool, qos: bool
) -> Steps[bool]:
    """The usual outcome, decided without the full parse, in steps (see fastpath).

    True: the file is made of render's own lines only (anything else reads
    as None) and means exactly this state, so self_check finds nothing.
    False: only the full parse can tell (full_check).
    """
    expected_keys: dict[int, _Key] = {}
    for partition in _rendered(state):
        expected_keys[partition.pkey.value] = _expected_key(partition, qos)
        yield
    keys = yield from render_keys_steps(text, allow_both_pkeys=allow_both_pkeys, qos=qos)
    return keys == expected_keys


def full_check(text: str, state: DesiredState, *, allow_both_pkeys: bool, qos: bool) -> list[str]:
    """self_check by the full parse alone: for a file reads_back_steps could not pass."""
    with gc_paused():
        wanted = {p.pkey.value: p for p in _rendered(state)}
        expected_keys = {pkey: _expected_key(p, qos) for pkey, p in wanted.items()}
        result = parse(text, allow_both_pkeys=allow_both_pkeys, qos=qos)
        problems = [
            f"line {d.line}: {d.severity}: {d.code}: {d.message}" for d in result.diagnostics
        ]
        if result.fatal is not None:
            return problems[:_MAX_PROBLEMS]
        parsed = {p.pkey: p for p in result.partitions}
        flags: dict[int, tuple[int, ...] | None] = {}
        parsed_keys = {pkey: _parsed_key(p, flags) for pkey, p in parsed.items()}
        if parsed_keys == expected_keys:  # the usual outcome, decided in one comparison
            return problems[:_MAX_PROBLEMS]
        both = parsed_keys.keys() & expected_keys.keys()
        same = {pkey for pkey in both if parsed_keys[pkey] == expected_keys[pkey]}
        return _detailed(problems, parsed, wanted, allow_both_pkeys, qos, skip=same)


def _detailed(
    problems: list[str],
    parsed: dict[int, ParsedPartition],
    wanted: dict[int, Partition],
    allow_both_pkeys: bool,
    qos: bool,
    *,
    skip: set[int],
) -> list[str]:
    """``problems`` and what differs between the file and the desired state, in words.

    ``skip``: PKeys known to read back as wanted (their keys are equal).
    """
    problems = list(problems)
    for pkey in sorted(set(parsed) ^ set(wanted)):
        where = "in the file only" if pkey in parsed else "missing from the file"
        problems.append(f"0x{pkey:04x}: {where}")
    for pkey in sorted(set(parsed) & set(wanted) - skip):
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
