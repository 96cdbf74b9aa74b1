"""Member writes run one by one: add, replace the whole list, remove.

Plain statements on the member rows a write names, never the partition's
whole ORM graph. GUID-only adds and removals also offer the member lane,
which runs neighbouring ones of a group commit together.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from pkeyd import history
from pkeyd.capacity import CapacityGuard
from pkeyd.domain import KEYWORDS, KeywordMember, Member, Membership, Partition, PKey, PortGuid
from pkeyd.drafts import MemberSpec
from pkeyd.errors import NotFoundError
from pkeyd.groupcommit import LaneOp, Op, Tx
from pkeyd.history import MemberChange, MemberState, PartitionDelta
from pkeyd.member_lane import MemberLane, MemberRequest, Prior
from pkeyd.store import members as member_rows
from pkeyd.store.repository import to_domain
from pkeyd.write_modes import record
from pkeyd.writes import NO_OPTIONS, WriteOptions, check_match

# Plans a member write: the changes to make, given the partition's head.
MemberPlan = Callable[[Tx, member_rows.Head], Awaitable[list[MemberChange]]]
# The head, the member and keyword specs, and the member specs' GUIDs as
# text when the caller already made them.
Wanted = Callable[
    [member_rows.Head, Sequence[MemberSpec], Sequence[MemberSpec], Sequence[str] | None],
    dict[str, MemberState],
]


class MemberWrites:
    def __init__(self, wanted: Wanted, prior: Prior, capacity: CapacityGuard) -> None:
        self._wanted = wanted
        self._prior = prior
        self._capacity = capacity
        self._lane = MemberLane(
            lambda head, specs, texts: wanted(head, specs, (), texts), prior, capacity
        )

    def _member_op(
        self, pkey: PKey, action: str, plan: MemberPlan, opts: WriteOptions
    ) -> Op[Partition]:
        async def op(tx: Tx) -> Partition:
            head = await member_rows.head(tx.session, pkey)
            if head is None:
                raise NotFoundError(f"no partition {pkey}", "pkey")
            check_match(opts.if_match, pkey, head.generation)
            changes = await plan(tx, head)
            if not changes:
                return self._prior(tx, pkey, head.generation) or await self._load(tx, pkey)
            added = [
                Member(PortGuid(int(c.target, 16)), Membership(c.after[0]), c.after[1])
                for c in changes
                if c.before is None and c.after is not None and not c.is_keyword
            ]
            keywords = [
                KeywordMember(c.target, Membership(c.after[0]), c.after[1])
                for c in changes
                if c.is_keyword and c.after is not None
            ]
            if added or keywords:
                await self._capacity.check(tx.repo, pkey, added, keywords)
            await member_rows.write_changes(tx.session, head.id, changes)
            delta = PartitionDelta(pkey, None, tuple(changes))
            generation = await record(tx, opts, action, [delta])
            await member_rows.stamp(tx.session, head.id, generation, tx.now)
            prior = self._prior(tx, pkey, head.generation)
            if prior is None:
                after = await self._load(tx, pkey)
            else:
                after = replace(history.with_members(prior, changes), generation=generation)
            tx.updates[pkey.value] = after
            return after

        return op

    @staticmethod
    async def _load(tx: Tx, pkey: PKey) -> Partition:
        tx.session.expunge_all()
        row = await tx.repo.get_partition(pkey)
        if row is None:
            raise NotFoundError(f"no partition {pkey}", "pkey")
        return to_domain(row)

    def add_members_op(
        self,
        pkey: PKey,
        member_specs: Sequence[MemberSpec],
        keyword_specs: Sequence[MemberSpec],
        opts: WriteOptions = NO_OPTIONS,
    ) -> Op[Partition]:
        """Add members or change their membership; others stay."""

        async def plan(tx: Tx, head: member_rows.Head) -> list[MemberChange]:
            wanted = self._wanted(head, member_specs, keyword_specs, None)
            guids = [t for t in wanted if t.startswith("0x")]
            current = await member_rows.member_states(tx.session, head.id, guids)
            if len(guids) < len(wanted):
                current.update(await member_rows.keyword_states(tx.session, head.id))
            return [
                MemberChange(t, current.get(t), s) for t, s in wanted.items() if current.get(t) != s
            ]

        op = self._member_op(pkey, "add_members", plan, opts)
        if keyword_specs:
            return op
        return LaneOp(op, self._lane, MemberRequest(pkey, "add", opts, members=member_specs))

    def replace_members_op(
        self,
        pkey: PKey,
        member_specs: Sequence[MemberSpec],
        keyword_specs: Sequence[MemberSpec],
        opts: WriteOptions = NO_OPTIONS,
    ) -> Op[Partition]:
        """Make these the partition's whole member list (GUIDs and keywords)."""

        async def plan(tx: Tx, head: member_rows.Head) -> list[MemberChange]:
            wanted = self._wanted(head, member_specs, keyword_specs, None)
            current = await member_rows.member_states(tx.session, head.id, None)
            current.update(await member_rows.keyword_states(tx.session, head.id))
            return [
                MemberChange(t, current.get(t), wanted.get(t))
                for t in sorted(current.keys() | wanted.keys())
                if current.get(t) != wanted.get(t)
            ]

        return self._member_op(pkey, "replace_members", plan, opts)

    def remove_members_op(
        self,
        pkey: PKey,
        targets: Sequence[PortGuid | str],
        *,
        missing_ok: bool = False,
        field: str = "guids",
        opts: WriteOptions = NO_OPTIONS,
    ) -> Op[Partition]:
        """Remove several GUIDs or keywords in one change.

        Unless ``missing_ok``, a target that is not a member fails the whole
        request (404 naming it) and nothing is removed.
        """
        wanted = list(dict.fromkeys(str(t) for t in targets))

        async def plan(tx: Tx, head: member_rows.Head) -> list[MemberChange]:
            guids = [t for t in wanted if t.startswith("0x")]
            current = await member_rows.member_states(tx.session, head.id, guids)
            if len(guids) < len(wanted):
                current.update(await member_rows.keyword_states(tx.session, head.id))
            absent = [t for t in wanted if t not in current]
            if absent and not missing_ok:
                shown = ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else "")
                raise NotFoundError(f"not members of {pkey}: {shown}", field)
            return [MemberChange(t, current[t], None) for t in wanted if t in current]

        op = self._member_op(pkey, "remove_members", plan, opts)
        if any(t in KEYWORDS for t in wanted):
            return op
        request = MemberRequest(
            pkey, "remove", opts, targets=wanted, missing_ok=missing_ok, field=field
        )
        return LaneOp(op, self._lane, request)
