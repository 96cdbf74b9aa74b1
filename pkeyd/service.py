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
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pkeyd import history, retention
from pkeyd.cache import PartitionCache
from pkeyd.capacity import CapacityGuard
from pkeyd.config import Settings
from pkeyd.domain import (
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
from pkeyd.groupcommit import Committed, GroupCommitter, Op, Tx
from pkeyd.groups import GroupSettings, McastGroup
from pkeyd.history import MemberState, PartitionDelta
from pkeyd.member_writes import MemberWrites
from pkeyd.restore import replace_all_op, restore_op
from pkeyd.revisions import rendered_diff
from pkeyd.store import journal
from pkeyd.store import members as member_rows
from pkeyd.store.engine import GenerationProbe
from pkeyd.store.listing import PartitionFilter, partition_page, port_partitions
from pkeyd.store.models import PartitionRow
from pkeyd.store.repository import Repository, to_domain
from pkeyd.write_modes import Idempotency, dry, record
from pkeyd.writes import (
    NO_OPTIONS,
    DryRun,
    Outcome,
    WriteOptions,
    check_match,
)

log = structlog.get_logger("pkeyd.service")


class PartitionService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        on_commit: Callable[[], None],
        capacity: CapacityGuard | None = None,
        cache: PartitionCache | None = None,
        blocking: Engine | None = None,
        gate: asyncio.Lock | None = None,
        probe: GenerationProbe | None = None,
    ) -> None:
        """`blocking`: a blocking engine on the same SQLite file (make_sync_engine), on
        which grouped member writes commit whole in a worker thread. `probe`:
        the cache's poll reads the stored generation with it first."""
        self._sessions = sessions
        self._probe = probe
        self._settings = settings
        self._on_commit = on_commit
        self._capacity = capacity or CapacityGuard(settings.default_partition_cap)
        self.cache = cache if cache is not None else PartitionCache()
        self._committer = GroupCommitter(
            sessions,
            self._committed,
            _conflict,
            blocking=blocking,
            known=lambda pkey, generation: self.cache.at(pkey.value, generation),
            gate=gate,
        )
        self._idempotency = Idempotency(settings.idempotency_ttl_s)
        self.members = MemberWrites(self._wanted, self._prior, self._capacity)

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
        self,
        head: member_rows.Head,
        members: Sequence[MemberSpec],
        keywords: Sequence[MemberSpec],
        member_texts: Sequence[str] | None,
    ) -> dict[str, MemberState]:
        """Target -> (membership, index0) as a member write asks, defaults applied.

        `member_texts`: the members' GUIDs as text, if the caller made them.
        """
        default = Membership(head.defmember) if head.defmember else Membership.FULL
        wanted: dict[str, MemberState] = {}
        for field, specs, texts in (
            ("members", members, member_texts),
            ("keywords", keywords, None),
        ):
            targets = [str(s.target) for s in specs] if texts is None else texts
            for i, (spec, target) in enumerate(zip(specs, targets, strict=True)):
                membership = spec.membership or default
                if membership is Membership.BOTH:
                    self._check_membership(membership, f"{field}[{i}].membership")
                wanted[target] = (membership.value, spec.index0)
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
            report: DryRun[object] = await self._committer.run(dry(op), keep=False)
            return Outcome("dry_run", report=report)
        if opts.idempotency is not None:
            return await self._committer.run(self._idempotency.wrap(op, opts))
        return Outcome("done", result=await self._committer.run(op))

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
            generation = await record(tx, opts, "create", [_delta(None, partition)])
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
            generation = await record(tx, opts, "update", [_delta(current, changed)])
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
            await record(tx, opts, "delete", [_delta(before, None)])
            tx.updates[pkey.value] = None

        return op

    # -- members (pkeyd.member_writes) and history (pkeyd.restore) -----------

    def add_members_op(
        self,
        pkey: PKey,
        member_specs: Sequence[MemberSpec],
        keyword_specs: Sequence[MemberSpec],
        opts: WriteOptions = NO_OPTIONS,
    ) -> Op[Partition]:
        """Add members or change their membership; others stay."""
        return self.members.add_members_op(pkey, member_specs, keyword_specs, opts)

    def replace_members_op(
        self,
        pkey: PKey,
        member_specs: Sequence[MemberSpec],
        keyword_specs: Sequence[MemberSpec],
        opts: WriteOptions = NO_OPTIONS,
    ) -> Op[Partition]:
        """Make these the partition's whole member list (GUIDs and keywords)."""
        return self.members.replace_members_op(pkey, member_specs, keyword_specs, opts)

    def remove_members_op(
        self,
        pkey: PKey,
        targets: Sequence[PortGuid | str],
        *,
        missing_ok: bool = False,
        field: str = "guids",
        opts: WriteOptions = NO_OPTIONS,
    ) -> Op[Partition]:
        """Remove GUIDs or keywords; a non-member fails it (404) unless ``missing_ok``."""
        return self.members.remove_members_op(
            pkey, targets, missing_ok=missing_ok, field=field, opts=opts
        )

    def restore_op(self, generation: int, opts: WriteOptions = NO_OPTIONS) -> Op[int | None]:
        """Make the desired state what it was right after revision `generation`."""
        return restore_op(generation, opts)

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

    async def restore(self, generation: int) -> int | None:
        return await self._committer.run(self.restore_op(generation))

    async def replace_all(self, partitions: Sequence[Partition]) -> int:
        """Make these the whole desired state (import). Returns the new generation."""
        return await self._committer.run(replace_all_op(partitions, NO_OPTIONS))

    async def prune_revisions(self, older_than: datetime, limit: int = retention.BATCH) -> int:
        """Delete the revisions made before `older_than`, `limit` per transaction; how many."""
        return await retention.prune(self._committer.run, older_than, limit)

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
        """Drop cached partitions another process changed. Returns how many.

        Under the commit gate: else a commit of this process could show in the
        scan before it shows in the cache, and be taken for another's. The
        probe reads the generation first, the cheap way: most polls end there.
        """
        if self._probe is not None:
            async with self._committer.gate:
                generation = await self._probe.read()
                if generation is not None and generation == self.cache.synced_generation:
                    return 0
        async with self._sessions() as session, session.begin(), self._committer.gate:
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


async def load_desired_state(sessions: async_sessionmaker[AsyncSession]) -> DesiredState:
    """A consistent snapshot for the reconciler, in one short read transaction."""
    async with sessions() as session, session.begin():
        return await Repository(session).desired_state()


def _delta(before: Partition | None, after: Partition | None) -> PartitionDelta:
    delta = history.diff(before, after)
    assert delta is not None
    return delta


def _conflict(exc: IntegrityError) -> ConflictError:
    """Map a unique violation (another writer won a race) to a 409 naming the field."""
    text = str(exc.orig).lower()
    if "mgid" in text:
        return ConflictError("a multicast group with that mgid exists already", "mgroups")
    for field in ("name", "pkey"):
        if field in text:
            return ConflictError(f"a partition with that {field} already exists", field)
    return ConflictError("the change conflicts with stored data")
