"""Member writes of one group commit, run together with set-based statements.

Fifty clients adding one GUID each would otherwise cost fifty times the same
handful of statements. Here a run of neighbouring GUID adds and removals
reads what it needs once (the partitions' heads, the named members, the
ports' PKey counts), decides each write in memory, in order, exactly as it
would alone (404, 412, 409 capacity, 422 fail only that write), then writes
all the changes, revisions and generations in a few executemany statements.
If those statements fail, the committer runs each write alone instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from pkeyd.capacity import CapacityGuard
from pkeyd.domain import Partition, PKey
from pkeyd.drafts import MemberSpec
from pkeyd.errors import NotFoundError, PkeydError
from pkeyd.groupcommit import Tx
from pkeyd.history import MemberChange, MemberState, PartitionDelta, with_members
from pkeyd.opensm.fastpath import gc_paused
from pkeyd.store import journal, lane_sql
from pkeyd.store import members as member_rows
from pkeyd.store.models import PartitionRow
from pkeyd.store.repository import LOAD_ALL, to_domain
from pkeyd.writes import WriteOptions, check_match

# The head, the specs, and the specs' GUIDs as text (made once per request).
Wanted = Callable[[member_rows.Head, Sequence[MemberSpec], Sequence[str]], dict[str, MemberState]]
Prior = Callable[[Tx, PKey, int], Partition | None]


@dataclass(frozen=True)
class MemberRequest:
    """A GUID-only member write: add (or change) members, or remove GUIDs."""

    pkey: PKey
    kind: Literal["add", "remove"]
    opts: WriteOptions
    members: Sequence[MemberSpec] = ()
    targets: Sequence[str] = ()  # removals, canonical GUID text
    missing_ok: bool = False
    field: str = "guids"

    @property
    def action(self) -> str:
        return "add_members" if self.kind == "add" else "remove_members"

    def named(self) -> list[str]:
        return [str(s.target) for s in self.members] if self.kind == "add" else list(self.targets)


class MemberLane:
    def __init__(self, wanted: Wanted, prior: Prior, capacity: CapacityGuard) -> None:
        self._wanted = wanted
        self._prior = prior
        self._capacity = capacity

    async def run_group(
        self, tx: Tx, payloads: list[Any]
    ) -> tuple[list[tuple[bool, Any]], int] | None:
        """In the asyncio transaction of a group commit."""

        def known(pkey: PKey, generation: int) -> Partition | None:
            return self._prior(tx, pkey, generation)

        outcomes, base, updates = await tx.session.run_sync(
            lambda session: self.run_blocking(session, payloads, tx.base, tx.now, known)
        )
        tx.updates.update(updates)
        return outcomes, base

    def weight(self, payloads: list[Any]) -> int:
        requests: list[MemberRequest] = payloads
        return sum(len(r.members) + len(r.targets) for r in requests)

    def run_blocking(
        self,
        session: Session,
        payloads: list[Any],
        base: int,
        now: datetime,
        known: Callable[[PKey, int], Partition | None],
    ) -> tuple[list[tuple[bool, Any]], int, dict[int, Partition | None]]:
        """Decide and write the group on a blocking session; no commit.

        Answers each write's (ok, result or error), the generation reached,
        and the partitions as the group leaves them. A bulk add makes several
        objects per GUID, none in a reference cycle: collecting meanwhile
        would only walk every cached partition again (see gc_paused).
        """
        with gc_paused():
            requests: list[MemberRequest] = payloads
            conn = session.connection()
            heads = lane_sql.heads(conn, sorted({r.pkey.value for r in requests}))
            names = [r.named() for r in requests]  # a bulk add names 100,000: made once
            named: dict[int, set[str]] = {h.id: set() for h in heads.values()}
            for r, targets in zip(requests, names, strict=True):
                if (head := heads.get(r.pkey.value)) is not None:
                    named[head.id].update(targets)
            states = lane_sql.states_of(conn, named)
            adding = {
                t for r, ts in zip(requests, names, strict=True) if r.kind == "add" for t in ts
            }
            listed = lane_sql.explicit_pkeys(conn, adding) if adding else {}
            keyword_pkeys = lane_sql.ca_keyword_pkeys(conn) if adding else set()
            partitions: dict[int, Partition] = {}
            for pkey, head in heads.items():
                at_hand = known(head.pkey, head.generation)
                if at_hand is None:  # not cached: one load of the whole partition
                    row = session.scalars(
                        select(PartitionRow).options(*LOAD_ALL).where(PartitionRow.pkey == pkey)
                    ).one()
                    at_hand = to_domain(row)
                partitions[pkey] = at_hand

            outcomes: list[tuple[bool, Any]] = []
            changes: list[tuple[int, MemberChange]] = []
            revisions: list[journal.NewRevision] = []
            stamps: dict[int, int] = {}
            updates: dict[int, Partition | None] = {}
            last = len(requests) - 1
            for n, (request, targets) in enumerate(zip(requests, names, strict=True)):
                head = heads.get(request.pkey.value)
                try:
                    if head is None:
                        raise NotFoundError(f"no partition {request.pkey}", "pkey")
                    partition = partitions[request.pkey.value]
                    check_match(request.opts.if_match, request.pkey, partition.generation)
                    current = states[head.id]
                    made = self._decide(request, targets, head, current, listed, keyword_pkeys)
                except PkeydError as exc:
                    outcomes.append((False, exc))
                    continue
                if made:
                    base += 1
                    for change in made:
                        if change.after is None:
                            current.pop(change.target, None)
                        else:
                            current[change.target] = change.after
                    if n < last:  # what the capacity checks of the later writes see
                        _list_in(listed, made, request.pkey.value)
                    changes.extend((head.id, c) for c in made)
                    delta = PartitionDelta(request.pkey, None, tuple(made))
                    revisions.append(
                        journal.NewRevision(base, request.opts.actor, request.action, (delta,))
                    )
                    stamps[head.id] = base
                    partition = replace(with_members(partition, made), generation=base)
                    partitions[request.pkey.value] = partition
                    updates[request.pkey.value] = partition
                outcomes.append((True, partition))
            lane_sql.write_many(conn, changes)
            lane_sql.add_revisions(conn, revisions, now)
            lane_sql.stamp_many(conn, stamps, now)
            session.expunge_all()
            return outcomes, base, updates

    def _decide(
        self,
        request: MemberRequest,
        targets: Sequence[str],
        head: member_rows.Head,
        current: dict[str, MemberState],
        listed: dict[str, set[int]],
        keyword_pkeys: set[int],
    ) -> list[MemberChange]:
        """The changes this one write makes, or the error it fails with."""
        if request.kind == "remove":
            absent = [t for t in request.targets if t not in current]
            if absent and not request.missing_ok:
                shown = ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else "")
                raise NotFoundError(f"not members of {request.pkey}: {shown}", request.field)
            return [MemberChange(t, current[t], None) for t in request.targets if t in current]
        wanted = self._wanted(head, request.members, targets)
        made = [
            MemberChange(t, current.get(t), s) for t, s in wanted.items() if current.get(t) != s
        ]
        added = [c.target for c in made if c.before is None]
        if added:
            self._capacity.refuse_overload(request.pkey, added, listed, keyword_pkeys)
        return made


def _list_in(listed: dict[str, set[int]], made: list[MemberChange], pkey: int) -> None:
    """Keep the PKeys listing each GUID true after `made` changed partition `pkey`."""
    for change in made:
        pkeys = listed.setdefault(change.target, set())
        if change.after is None:
            pkeys.discard(pkey)
        else:
            pkeys.add(pkey)
