"""Deltas: what one change did to one partition, precise enough to show and to undo.

Pure. A revision stores one delta per partition it touched. A single-member
write stores just that member's before and after, never the whole partition,
so recording history stays cheap; creating or deleting a partition stores all
of it (that is what undoing needs).
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from pkeyd.domain import (
    KEYWORDS,
    KeywordMember,
    Member,
    Membership,
    Partition,
    PKey,
    PortGuid,
)
from pkeyd.groups import GroupSettings, McastGroup

# A member's state: (membership, index0); None when it is not a member.
MemberState = tuple[str, bool]


@dataclass(frozen=True, slots=True)
class MemberChange:
    """One GUID (canonical text) or keyword whose membership changed."""

    target: str
    before: MemberState | None
    after: MemberState | None

    @property
    def is_keyword(self) -> bool:
        return self.target in KEYWORDS

    def inverse(self) -> MemberChange:
        return MemberChange(self.target, self.after, self.before)


@dataclass(frozen=True, slots=True)
class PartitionDelta:
    """The change to one partition.

    `fields` is None when only members changed; else (before, after) of the
    partition's own fields (name, flags, groups), each None when the
    partition did not exist (created) or no longer does (deleted).
    """

    pkey: PKey
    fields: tuple[dict[str, Any] | None, dict[str, Any] | None] | None
    members: tuple[MemberChange, ...]

    @property
    def action(self) -> str:
        if self.fields is not None and self.fields[0] is None:
            return "create"
        if self.fields is not None and self.fields[1] is None:
            return "delete"
        return "update" if self.fields is not None else "members"

    def inverse(self) -> PartitionDelta:
        fields = None if self.fields is None else (self.fields[1], self.fields[0])
        return PartitionDelta(self.pkey, fields, tuple(c.inverse() for c in self.members))

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"pkey": str(self.pkey)}
        if self.fields is not None:
            body["fields"] = {"before": self.fields[0], "after": self.fields[1]}
        body["members"] = [_change_json(c) for c in self.members]
        return body

    def dumps(self) -> str:
        """Compact stored form: members as [target, before, after] arrays.

        A bulk change of 100,000 members is stored with every request that
        makes it, so this form skips the per-member objects of to_json().
        """
        members = [(c.target, c.before, c.after) for c in self.members]
        stored: dict[str, Any] = {"pkey": self.pkey.value, "members": members}
        if self.fields is not None:
            stored["fields"] = self.fields
        return json.dumps(stored, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> PartitionDelta:
        data = json.loads(text)
        fields = data.get("fields")
        return cls(
            PKey(data["pkey"]),
            None if fields is None else (fields[0], fields[1]),
            tuple(
                MemberChange(
                    t, None if b is None else (b[0], b[1]), None if a is None else (a[0], a[1])
                )
                for t, b, a in data["members"]
            ),
        )


def _state_json(state: MemberState | None) -> dict[str, Any] | None:
    return None if state is None else {"membership": state[0], "index0": state[1]}


def _change_json(change: MemberChange) -> dict[str, Any]:
    key = "keyword" if change.is_keyword else "guid"
    return {
        key: change.target,
        "before": _state_json(change.before),
        "after": _state_json(change.after),
    }


def fields_json(partition: Partition) -> dict[str, Any]:
    """Everything of a partition but its members."""
    return {
        "name": partition.name,
        "ipoib": partition.ipoib,
        **partition.settings.to_json(),
        "defmember": partition.defmember.value if partition.defmember else None,
        "indx0": partition.indx0,
        "mgroups": [g.to_json() for g in partition.mgroups],
    }


def _settings(raw: dict[str, Any]) -> GroupSettings:
    return GroupSettings(
        mtu=raw["mtu"],
        rate=raw["rate"],
        sl=raw["sl"],
        scope=tuple(raw["scope"]),
        q_key=raw["q_key"],
        tclass=raw["tclass"],
        flow_label=raw["flow_label"],
    )


def _with_fields(pkey: PKey, raw: dict[str, Any], like: Partition | None) -> Partition:
    return Partition(
        pkey=pkey,
        name=raw["name"],
        ipoib=raw["ipoib"],
        members=like.members if like else (),
        keywords=like.keywords if like else (),
        settings=_settings(raw),
        defmember=Membership(raw["defmember"]) if raw["defmember"] else None,
        indx0=raw["indx0"],
        mgroups=tuple(McastGroup(g["mgid"], _settings(g)) for g in raw["mgroups"]),
    )


def _states(partition: Partition | None) -> dict[str, MemberState]:
    if partition is None:
        return {}
    states = {str(m.guid): (m.membership.value, m.index0) for m in partition.members}
    states.update({k.keyword: (k.membership.value, k.index0) for k in partition.keywords})
    return states


def diff(before: Partition | None, after: Partition | None) -> PartitionDelta | None:
    """The delta from one version of a partition to another (None: no change)."""
    if before is None and after is None:
        return None
    pkey = (after or before).pkey  # type: ignore[union-attr]
    old, new = _states(before), _states(after)
    changes = [
        MemberChange(t, old.get(t), new.get(t))
        for t in sorted(old.keys() | new.keys())
        if old.get(t) != new.get(t)
    ]
    old_fields = None if before is None else fields_json(before)
    new_fields = None if after is None else fields_json(after)
    fields = None if old_fields == new_fields else (old_fields, new_fields)
    if fields is None and not changes:
        return None
    return PartitionDelta(pkey, fields, tuple(changes))


# Up to this many GUID changes are made by binary search in the sorted
# members; more are merged through a mapping of the whole partition.
_FEW_CHANGES = 32
_MEMBERSHIPS = {m.value: m for m in Membership}


def _guid_value(member: Member) -> int:
    return member.guid.value


def _member(value: int, state: MemberState) -> Member:
    return Member(PortGuid(value), _MEMBERSHIPS[state[0]], state[1])


def with_members(partition: Partition, changes: Iterable[MemberChange]) -> Partition:
    """The partition with these member changes made (sorted as stored)."""
    changes = tuple(changes)
    keyword_changes = [c for c in changes if c.is_keyword]
    guid_changes = [c for c in changes if not c.is_keyword]
    keywords = partition.keywords
    if keyword_changes:
        by_name = {k.keyword: k for k in keywords}
        for change in keyword_changes:
            if change.after is None:
                by_name.pop(change.target, None)
            else:
                by_name[change.target] = KeywordMember(
                    change.target, _MEMBERSHIPS[change.after[0]], change.after[1]
                )
        keywords = tuple(by_name[k] for k in KEYWORDS if k in by_name)
    members = partition.members
    if len(guid_changes) <= _FEW_CHANGES:
        # A write of a few members to a large partition: O(log n) searches
        # and one copy, instead of a mapping and a sort of every member.
        listed = list(members)
        for change in guid_changes:
            value = int(change.target, 16)
            at = bisect_left(listed, value, key=_guid_value)
            present = at < len(listed) and listed[at].guid.value == value
            if change.after is None:
                if present:
                    del listed[at]
                continue
            member = _member(value, change.after)
            if present:
                listed[at] = member
            else:
                listed.insert(at, member)
        members = tuple(listed)
    else:
        by_value = {m.guid.value: m for m in members}
        for change in guid_changes:
            value = int(change.target, 16)
            if change.after is None:
                by_value.pop(value, None)
            else:
                by_value[value] = _member(value, change.after)
        members = tuple(by_value[g] for g in sorted(by_value))
    return replace(partition, members=members, keywords=keywords)


def apply(delta: PartitionDelta, current: Partition | None) -> Partition | None:
    """The partition after `delta`, given the partition before it."""
    if delta.fields is not None:
        after = delta.fields[1]
        if after is None:
            return None
        current = _with_fields(delta.pkey, after, current)
    if current is None:
        raise ValueError(f"a member change of {delta.pkey}, which does not exist")
    return with_members(current, delta.members) if delta.members else current
