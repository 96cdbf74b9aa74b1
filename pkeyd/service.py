"""Use-cases behind the API. Each write is one unit of a group commit; reads use the cache.

Writes go through one GroupCommitter: concurrent writes share a transaction
and its durable commit, each in its own savepoint, and each is answered only
after that commit. Every change gets its generation and a revision (who,
what, undoable) in the same savepoint; a stale If-Match fails only its own
write; an Idempotency-Key's answer is stored with the change. The database
still enforces unique PKeys and names, for writers in other processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pkeyd import history
from pkeyd.cache import PartitionCache
from pkeyd.capacity import CapacityGuard
from pkeyd.config import Settings
from pkeyd.domain import (
    KEYWORDS,
    DesiredState,
    KeywordMember,
    Member,
    Membership,
    Partition,
    PKey,
    PortGuid,
)
from pkeyd.drafts import MemberSpec, PartitionDraft, PartitionPatch
from pkeyd.errors import ConflictError, NotFoundError, ValidationError
from pkeyd.groupcommit import Committed, GroupCommitter, LaneOp, Op, Tx
from pkeyd.groups import GroupSettings, McastGroup
from pkeyd.history import MemberChange, MemberState, PartitionDelta
from pkeyd.member_lane import MemberLane, MemberRequest
from pkeyd.revisions import rendered_diff
from pkeyd.store import journal
from pkeyd.store import members as member_rows
from pkeyd.store.listing import PartitionFilter, partition_page, port_partitions
from pkeyd.store.models import PartitionRow
from pkeyd.store.repository import Repository, to_domain
from pkeyd.writes import (
    Answer,
    DryRun,
    Outcome,
    WriteOptions,
    check_match,
    dry_run,
)

log = structlog.get_logger("pkeyd.service")

NO_OPTIONS = WriteOptions()
# Expired Idempotency-Keys are purged at most this often.
_PURGE_EVERY = timedelta(minutes=1)
# Plans a member write: the changes to make, given the partition's head.
MemberPlan = Callable[[Tx, member_rows.Head], Awaitable[list[MemberChange]]]


class PartitionService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        on_commit: Callable[[], None],
        capacity: CapacityGuard | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._on_commit = on_commit
        self._capacity = capacity or CapacityGuard(settings.default_partition_cap)
        self.cache = PartitionCache()
        self._committer = GroupCommitter(sessions, self._committed, _conflict)
        self._lane = MemberLane(
            lambda head, specs: self._wanted(head, specs, ()), self._prior, self._capacity
        )
        self._last_purge = datetime.min.replace(tzinfo=UTC)

    def _committed(self, committed: Committed) -> None:
        self.cache.committed(committed.first_base, committed.last_generation, committed.updates)
        if committed.last_generation != committed.first_base:
            self._on_commit()

    async def aclose(self) -> None:
        await self._committer.aclose()

    # -- checks that depend on how OpenSM is configured ---------------------

    def _check_membership(self, membership: Membership | None, field: str) -> None:
        if membership is Membership.BOTH and not self._settings.allow_both_pkeys:
            raise ValidationError(
                "'both' needs allow_both_pkeys (as in opensm.conf); without it OpenSM "
                "silently makes the port a full member",
                field,
            )

    def _check_settings(self, settings: GroupSettings, prefix: str = "") -> None:
        if settings.sl not in (None, 0) and not self._settings.qos:
            raise ValidationError(
                "OpenSM forces sl to 0 unless QoS is enabled (configure pkeyd with qos)",
                prefix + "sl",
            )

    def _resolve(
        self, specs: Sequence[MemberSpec], default: Membership | None, field: str
    ) -> list[tuple[PortGuid | str, Membership, bool]]:
        resolved = []
        for i, spec in enumerate(specs):
            membership = spec.membership or default or Membership.FULL
            self._check_membership(membership, f"{field}[{i}].membership")
            resolved.append((spec.target, membership, spec.index0))
        return resolved

    def _members(
        self, specs: Sequence[MemberSpec], default: Membership | None
    ) -> tuple[Member, ...]:
        resolved = self._resolve(specs, default, "members")
        return tuple(
            sorted(
                (Member(t, m, i) for t, m, i in resolved if isinstance(t, PortGuid)),
                key=lambda m: m.guid,
            )
        )

    def _keywords(
        self, specs: Sequence[MemberSpec], default: Membership | None
    ) -> tuple[KeywordMember, ...]:
        resolved = self._resolve(specs, default, "keywords")
        return tuple(KeywordMember(str(t), m, i) for t, m, i in resolved)

    def _wanted(
        self, head: member_rows.Head, members: Sequence[MemberSpec], keywords: Sequence[MemberSpec]
    ) -> dict[str, MemberState]:
        """Target -> (membership, index0) as a member write asks, defaults applied."""
        default = Membership(head.defmember) if head.defmember else Membership.FULL
        wanted: dict[str, MemberState] = {}
        for field, specs in (("members", members), ("keywords", keywords)):
            for i, spec in enumerate(specs):
                membership = spec.membership or default
                if membership is Membership.BOTH:
                    self._check_membership(membership, f"{field}[{i}].membership")
                wanted[str(spec.target)] = (membership.value, spec.index0)
        return wanted

    def _bind_groups(
        self, groups: Sequence[McastGroup], pkey: PKey, settings: GroupSettings
    ) -> tuple[McastGroup, ...]:
        bound = []
        for i, group in enumerate(groups):
            self._check_settings(group.settings, f"mgroups[{i}].")
            bound.append(group.bind(pkey.value, settings, f"mgroups[{i}]."))
        return tuple(bound)

    # -- running a write -----------------------------------------------------

    async def execute(self, op: Op[object], opts: WriteOptions) -> Outcome[object]:
        """Run a write as asked: committed, replayed from its Idempotency-Key, or dry."""
        if opts.dry_run:
            report: DryRun[object] = await self._committer.run(self._dry(op), keep=False)
            return Outcome("dry_run", report=report)
        if opts.idempotency is not None:
            return await self._committer.run(self._idempotent(op, opts))
        return Outcome("done", result=await self._committer.run(op))

    @staticmethod
    def _dry(op: Op[object]) -> Op[DryRun[object]]:
        async def run(tx: Tx) -> DryRun[object]:
            before = await tx.repo.desired_state()
            result = await op(tx)
            await tx.session.flush()
            tx.session.expunge_all()  # member writes bypass the ORM: read afresh
            after = await tx.repo.desired_state()
            return dry_run(
                result,
                DesiredState(tx.base, before.partitions),
                DesiredState(tx.base + int(tx.claimed), after.partitions),
            )

        return run

    def _idempotent(self, op: Op[object], opts: WriteOptions) -> Op[Outcome[object]]:
        request = opts.idempotency
        assert request is not None

        async def run(tx: Tx) -> Outcome[object]:
            session = tx.session
            if tx.now - self._last_purge > _PURGE_EVERY:
                self._last_purge = tx.now
                await journal.purge_answers(session, self._expiry(tx.now))
            replayed = await self._replay(tx, opts.actor, request.key, request.request_hash)
            if replayed is not None:
                return replayed
            try:
                async with session.begin_nested():
                    result = await op(tx)
                    answer = request.answer(result)
                    await journal.store_answer(
                        session,
                        actor=opts.actor,
                        key=request.key,
                        request_hash=request.request_hash,
                        status=answer.status,
                        body=answer.body,
                        headers=answer.headers,
                        now=tx.now,
                    )
            except IntegrityError:
                # Another process stored this key first: its change stands.
                replayed = await self._replay(tx, opts.actor, request.key, request.request_hash)
                if replayed is None:
                    raise
                tx.claimed = False
                tx.updates.clear()
                return replayed
            return Outcome("done", result=result)

        return run

    def _expiry(self, now: datetime) -> datetime:
        return now - timedelta(seconds=self._settings.idempotency_ttl_s)

    async def _replay(
        self, tx: Tx, actor: str, key: str, request_hash: str
    ) -> Outcome[object] | None:
        stored = await journal.find_answer(tx.session, actor, key)
        if stored is None:
            return None
        created = stored.created_at
        if created.tzinfo is None:  # SQLite hands back naive UTC
            created = created.replace(tzinfo=UTC)
        if created < self._expiry(tx.now):
            await journal.forget_answer(tx.session, actor, key)
            return None
        if stored.request_hash != request_hash:
            raise ValidationError(
                "this key was sent before with a different request; use a new key",
                "Idempotency-Key",
            )
        headers = {**stored.headers, "Idempotent-Replayed": "true"}
        return Outcome("replay", replay=Answer(stored.status, stored.body, headers))

    async def _record(
        self,
        tx: Tx,
        opts: WriteOptions,
        action: str,
        deltas: Sequence[PartitionDelta],
        restored: int | None = None,
    ) -> int:
        generation = tx.generation()
        await journal.add_revision(
            tx.session,
            generation=generation,
            at=tx.now,
            actor=opts.actor,
            action=action,
            deltas=deltas,
            restored=restored,
        )
        return generation

    def _prior(self, tx: Tx, pkey: PKey, generation: int) -> Partition | None:
        """The partition at this generation without a load: from this batch or the cache."""
        known, partition = tx.known(pkey.value)
        if known:
            return partition if partition and partition.generation == generation else None
        return self.cache.at(pkey.value, generation)

    @staticmethod
    async def _existing(repo: Repository, pkey: PKey) -> PartitionRow:
        row = await repo.get_partition(pkey)
        if row is None:
            raise NotFoundError(f"no partition {pkey}", "pkey")
        return row

    # -- partitions ----------------------------------------------------------

    def create_op(self, draft: PartitionDraft, opts: WriteOptions = NO_OPTIONS) -> Op[Partition]:
        self._check_membership(draft.defmember, "defmember")
        self._check_settings(draft.settings)
        members = self._members(draft.members, draft.defmember)
        keywords = self._keywords(draft.keywords, draft.defmember)

        async def op(tx: Tx) -> Partition:
            repo = tx.repo
            pkey = draft.pkey
            if pkey is None:
                pkey = await self._allocate(repo)
            elif await repo.get_partition(pkey) is not None:
                raise ConflictError(f"partition {pkey} already exists", "pkey")
            if await repo.name_taken(draft.name):
                raise ConflictError(f"a partition named {draft.name!r} already exists", "name")
            partition = Partition(
                pkey=pkey,
                name=draft.name,
                ipoib=draft.ipoib,
                members=members,
                keywords=keywords,
                settings=draft.settings,
                defmember=draft.defmember,
                indx0=draft.indx0,
                mgroups=self._bind_groups(draft.mgroups, pkey, draft.settings),
            )
            await self._capacity.check(repo, partition.pkey, members, keywords)
            row = await repo.add_partition(partition, tx.now)
            generation = await self._record(tx, opts, "create", [_delta(None, partition)])
            row.generation = generation
            await tx.session.flush()
            created = replace(partition, generation=generation)
            tx.updates[pkey.value] = created
            return created

        return op

    async def _allocate(self, repo: Repository) -> PKey:
        ranges = self._settings.allocation_ranges
        for pkey_range in ranges:
            free = await repo.lowest_free_pkey(pkey_range)
            if free is not None:
                return PKey(free)
        shown = ", ".join(str(r) for r in ranges)
        raise ConflictError(f"no free PKey left in {shown}", "pkey")

    def patch_op(
        self, pkey: PKey, patch: PartitionPatch, opts: WriteOptions = NO_OPTIONS
    ) -> Op[Partition]:
        async def op(tx: Tx) -> Partition:
            repo = tx.repo
            row = await self._existing(repo, pkey)
            check_match(opts.if_match, pkey, row.generation)
            current = to_domain(row)
            if current.is_default and "name" in patch.present:
                raise ValidationError("the Default partition keeps its name", "name")
            if "defmember" in patch.present:
                self._check_membership(patch.defmember, "defmember")
            settings = current.settings.merged(patch.settings, set(patch.present))
            self._check_settings(settings)
            groups = current.mgroups if patch.mgroups is None else patch.mgroups
            changed = replace(
                current,
                name=patch.name if patch.name is not None else current.name,
                ipoib=patch.ipoib if patch.ipoib is not None else current.ipoib,
                settings=settings,
                defmember=patch.defmember if "defmember" in patch.present else current.defmember,
                indx0=patch.indx0 if patch.indx0 is not None else current.indx0,
                mgroups=self._bind_groups(groups, current.pkey, settings),
            )
            if changed == current:
                return current
            if changed.name != current.name and await repo.name_taken(changed.name):
                raise ConflictError(f"a partition named {changed.name!r} already exists", "name")
            if current.ipoib and settings != current.settings:
                log.warning("group_flags_need_recreate", pkey=str(current.pkey))
            repo.set_fields(row, changed, tx.now)
            if changed.mgroups != current.mgroups:
                await repo.replace_mgroups(row, changed.mgroups)
            generation = await self._record(tx, opts, "update", [_delta(current, changed)])
            row.generation = generation
            await tx.session.flush()
            after = replace(changed, generation=generation)
            tx.updates[pkey.value] = after
            return after

        return op

    def delete_op(self, pkey: PKey, opts: WriteOptions = NO_OPTIONS) -> Op[None]:
        if pkey.is_default:
            raise ConflictError("the Default partition 0x7fff cannot be deleted", "pkey")

        async def op(tx: Tx) -> None:
            row = await self._existing(tx.repo, pkey)
            check_match(opts.if_match, pkey, row.generation)
            before = to_domain(row)
            await tx.repo.delete_partition(row)
            await self._record(tx, opts, "delete", [_delta(before, None)])
            tx.updates[pkey.value] = None

        return op

    # -- members: plain statements on the rows named, never the whole graph ---

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
            generation = await self._record(tx, opts, action, [delta])
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
            wanted = self._wanted(head, member_specs, keyword_specs)
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
            wanted = self._wanted(head, member_specs, keyword_specs)
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

    # -- the same use-cases, committed with default options ------------------

    async def create_partition(self, draft: PartitionDraft) -> Partition:
        return await self._committer.run(self.create_op(draft))

    async def patch_partition(self, pkey: PKey, patch: PartitionPatch) -> Partition:
        return await self._committer.run(self.patch_op(pkey, patch))

    async def delete_partition(self, pkey: PKey) -> None:
        await self._committer.run(self.delete_op(pkey))

    async def add_members(
        self, pkey: PKey, member_specs: Sequence[MemberSpec], keyword_specs: Sequence[MemberSpec]
    ) -> Partition:
        return await self._committer.run(self.add_members_op(pkey, member_specs, keyword_specs))

    async def replace_members(
        self, pkey: PKey, member_specs: Sequence[MemberSpec], keyword_specs: Sequence[MemberSpec]
    ) -> Partition:
        op = self.replace_members_op(pkey, member_specs, keyword_specs)
        return await self._committer.run(op)

    async def remove_members(
        self, pkey: PKey, targets: Sequence[PortGuid | str], *, missing_ok: bool = False
    ) -> Partition:
        return await self._committer.run(
            self.remove_members_op(pkey, targets, missing_ok=missing_ok)
        )

    async def remove_member(self, pkey: PKey, target: PortGuid | str) -> None:
        await self._committer.run(self.remove_members_op(pkey, [target], field="guid"))

    # -- history -------------------------------------------------------------

    def restore_op(self, generation: int, opts: WriteOptions = NO_OPTIONS) -> Op[int | None]:
        """Make the desired state what it was right after revision `generation`.

        Undoes, newest first, every later revision; answers the generation of
        the restore (a revision itself), or None if nothing differed.
        """

        async def op(tx: Tx) -> int | None:
            if await journal.revision(tx.session, generation) is None:
                raise NotFoundError(f"no revision {generation}", "id")
            later = await journal.deltas_after(tx.session, generation)
            pkeys = sorted({d.pkey.value for _, d in later})
            rows = {p: await tx.repo.get_partition(PKey(p)) for p in pkeys}
            current = {p: to_domain(r) if r is not None else None for p, r in rows.items()}
            target = dict(current)
            for _, delta in later:
                target[delta.pkey.value] = history.apply(delta.inverse(), target[delta.pkey.value])
            deltas = [d for p in pkeys if (d := history.diff(current[p], target[p])) is not None]
            if not deltas:
                return None
            new = await self._record(tx, opts, "restore", deltas, restored=generation)
            await _write_partitions(tx, rows, target, new)
            for p in pkeys:
                after = target[p]
                tx.updates[p] = None if after is None else replace(after, generation=new)
            return new

        return op

    async def restore(self, generation: int) -> int | None:
        return await self._committer.run(self.restore_op(generation))

    async def replace_all(self, partitions: Sequence[Partition]) -> int:
        """Make these the whole desired state (import). Returns the new generation."""

        async def op(tx: Tx) -> int:
            stored = await tx.repo.list_partitions()
            rows: dict[int, PartitionRow | None] = {r.pkey: r for r in stored}
            current = {p: to_domain(r) for p, r in rows.items() if r is not None}
            target: dict[int, Partition | None] = {p: None for p in current if p != 0x7FFF}
            target.update({p.pkey.value: p for p in partitions})
            deltas = [
                d
                for p in sorted(target)
                if (d := history.diff(current.get(p), target[p])) is not None
            ]
            generation = await self._record(tx, NO_OPTIONS, "import", deltas)
            await _write_partitions(tx, rows, target, generation)
            self.cache.clear()
            return generation

        return await self._committer.run(op)

    # -- reads ---------------------------------------------------------------

    async def get_partition(self, pkey: PKey) -> Partition:
        cached = self.cache.get(pkey.value)
        if cached is not None:
            return cached
        epoch = self.cache.epoch
        async with self._sessions() as session, session.begin():
            row = await Repository(session).get_partition(pkey)
            if row is None:
                raise NotFoundError(f"no partition {pkey}", "pkey")
            partition = to_domain(row)
        self.cache.loaded(partition, epoch)
        return partition

    async def list_partitions(self) -> list[Partition]:
        async with self._sessions() as session, session.begin():
            return [to_domain(r) for r in await Repository(session).list_partitions()]

    async def list_page(
        self, flt: PartitionFilter, after: int | None, limit: int
    ) -> tuple[list[Partition], bool]:
        """A page of partitions by PKey, after `after`; and whether more follow."""
        async with self._sessions() as session, session.begin():
            rows = await partition_page(session, flt, after, limit + 1)
            return [to_domain(r) for r in rows[:limit]], len(rows) > limit

    async def port_partitions(self, guid: PortGuid) -> list[dict[str, object]]:
        async with self._sessions() as session, session.begin():
            return await port_partitions(session, str(guid))

    async def revisions(
        self, *, before: int | None, pkey: PKey | None, limit: int
    ) -> list[journal.Revision]:
        async with self._sessions() as session, session.begin():
            return await journal.revisions(session, before=before, pkey=pkey, limit=limit)

    async def revision(self, generation: int) -> tuple[journal.Revision, str]:
        """A revision and the unified diff of its partitions' lines as it made them."""
        async with self._sessions() as session, session.begin():
            found = await journal.revision(session, generation)
            if found is None:
                raise NotFoundError(f"no revision {generation}", "id")
            return found, await rendered_diff(session, found)

    async def desired_generation(self) -> int:
        async with self._sessions() as session, session.begin():
            return await Repository(session).generation()

    # -- noticing other processes' writes ------------------------------------

    async def refresh_cache(self) -> int:
        """Drop cached partitions another process changed. Returns how many."""
        async with self._sessions() as session, session.begin():
            generation = await Repository(session).generation()
            if generation == self.cache.synced_generation:
                return 0
            stored = (
                await session.execute(select(PartitionRow.pkey, PartitionRow.generation))
            ).all()
        return self.cache.resync(generation, [(p, g) for p, g in stored])

    async def keep_cache_fresh(self) -> None:
        """The loop behind the cache's staleness bound; runs until cancelled."""
        while True:
            try:
                dropped = await self.refresh_cache()
                if dropped:
                    log.info("cache_entries_dropped", count=dropped)
            except Exception as exc:  # a database hiccup: reads fall back to loads
                self.cache.clear()
                log.warning("cache_refresh_failed", error=repr(exc))
            await asyncio.sleep(self._settings.cache_refresh_s)


def _delta(before: Partition | None, after: Partition | None) -> PartitionDelta:
    delta = history.diff(before, after)
    assert delta is not None
    return delta


async def _write_partitions(
    tx: Tx,
    rows: dict[int, PartitionRow | None],
    target: dict[int, Partition | None],
    generation: int,
) -> None:
    """Store whole partitions as given (None: deleted), deletions first so names free up."""
    repo = tx.repo
    for pkey, partition in target.items():
        row = rows.get(pkey)
        if partition is None and row is not None:
            await repo.delete_partition(row)
    for pkey, partition in target.items():
        row = rows.get(pkey)
        if partition is None:
            continue
        if row is None:
            row = await repo.add_partition(partition, tx.now)
        else:
            repo.set_fields(row, partition, tx.now)
            await repo.replace_members(row, partition.members, partition.keywords, tx.now)
            await repo.replace_mgroups(row, partition.mgroups)
        row.generation = generation
    await tx.session.flush()


async def load_desired_state(sessions: async_sessionmaker[AsyncSession]) -> DesiredState:
    """A consistent snapshot for the reconciler, in one short read transaction."""
    async with sessions() as session, session.begin():
        return await Repository(session).desired_state()


def _conflict(exc: IntegrityError) -> ConflictError:
    """Map a unique violation (another writer won a race) to a 409 naming the field."""
    text = str(exc.orig).lower()
    if "mgid" in text:
        return ConflictError("a multicast group with that mgid exists already", "mgroups")
    for field in ("name", "pkey"):
        if field in text:
            return ConflictError(f"a partition with that {field} already exists", field)
    return ConflictError("the change conflicts with stored data")
