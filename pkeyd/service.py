"""Use-cases behind the API. Each owns one transaction and wakes the reconciler.

Writers are serialised in-process (one asyncio lock): SQLite has a single
writer anyway, and it turns lock waits into an orderly queue. The database
still enforces unique PKeys and names, for writers in other processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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
from pkeyd.groups import GroupSettings, McastGroup
from pkeyd.store.models import PartitionRow
from pkeyd.store.repository import Repository, to_domain

log = structlog.get_logger("pkeyd.service")


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
        self._write_lock = asyncio.Lock()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Repository]:
        """One write transaction; the caller bumps the generation if it changed something."""
        async with self._write_lock, self._sessions() as session:
            try:
                async with session.begin():
                    yield Repository(session)
            except IntegrityError as exc:
                raise _conflict(exc) from exc
        self._on_commit()

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

    def _bind_groups(
        self, groups: Sequence[McastGroup], pkey: PKey, settings: GroupSettings
    ) -> tuple[McastGroup, ...]:
        bound = []
        for i, group in enumerate(groups):
            self._check_settings(group.settings, f"mgroups[{i}].")
            bound.append(group.bind(pkey.value, settings, f"mgroups[{i}]."))
        return tuple(bound)

    # -- use-cases -----------------------------------------------------------

    async def create_partition(self, draft: PartitionDraft) -> Partition:
        self._check_membership(draft.defmember, "defmember")
        self._check_settings(draft.settings)
        members = self._members(draft.members, draft.defmember)
        keywords = self._keywords(draft.keywords, draft.defmember)
        async with self._write() as repo:
            pkey = draft.pkey
            if pkey is None:
                free = await repo.lowest_free_pkey(self._settings.pkey_range)
                if free is None:
                    raise ConflictError(f"no free PKey left in {self._settings.pkey_range}", "pkey")
                pkey = PKey(free)
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
            row = await repo.add_partition(partition, _now())
            await repo.bump_generation(row)
            return to_domain(row)

    async def patch_partition(self, pkey: PKey, patch: PartitionPatch) -> Partition:
        async with self._write() as repo:
            row = await self._existing(repo, pkey)
            current = to_domain(row)
            if current.is_default and "name" in patch.present:
                raise ValidationError("the Default partition keeps its name", "name")
            if "defmember" in patch.present:
                self._check_membership(patch.defmember, "defmember")
            settings = current.settings.merged(patch.settings, set(patch.present))
            self._check_settings(settings)
            groups = current.mgroups if patch.mgroups is None else patch.mgroups
            changed = Partition(
                pkey=current.pkey,
                name=patch.name if patch.name is not None else current.name,
                ipoib=patch.ipoib if patch.ipoib is not None else current.ipoib,
                members=current.members,
                keywords=current.keywords,
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
            repo.set_fields(row, changed, _now())
            if changed.mgroups != current.mgroups:
                await repo.replace_mgroups(row, changed.mgroups)
            await repo.bump_generation(row)
            return to_domain(row)

    async def delete_partition(self, pkey: PKey) -> None:
        if pkey.is_default:
            raise ConflictError("the Default partition 0x7fff cannot be deleted", "pkey")
        async with self._write() as repo:
            row = await self._existing(repo, pkey)
            await repo.delete_partition(row)
            await repo.bump_generation()

    async def add_members(
        self, pkey: PKey, member_specs: Sequence[MemberSpec], keyword_specs: Sequence[MemberSpec]
    ) -> Partition:
        async with self._write() as repo:
            row = await self._existing(repo, pkey)
            default = Membership(row.defmember) if row.defmember else None
            members = self._members(member_specs, default)
            keywords = self._keywords(keyword_specs, default)
            await self._capacity.check(repo, pkey, members, keywords, row)
            if await repo.upsert_members(row, members, keywords, _now()):
                await repo.bump_generation(row)
            return to_domain(row)

    async def replace_members(
        self, pkey: PKey, member_specs: Sequence[MemberSpec], keyword_specs: Sequence[MemberSpec]
    ) -> Partition:
        """Make these the partition's whole member list (GUIDs and keywords)."""
        async with self._write() as repo:
            row = await self._existing(repo, pkey)
            default = Membership(row.defmember) if row.defmember else None
            members = self._members(member_specs, default)
            keywords = self._keywords(keyword_specs, default)
            await self._capacity.check(repo, pkey, members, keywords, row)
            if await repo.replace_members(row, members, keywords, _now()):
                await repo.bump_generation(row)
            return to_domain(row)

    async def remove_members(
        self, pkey: PKey, targets: Sequence[PortGuid | str], *, missing_ok: bool = False
    ) -> Partition:
        """Remove several GUIDs or keywords in one change.

        Unless ``missing_ok``, a target that is not a member fails the whole
        request (404 naming it) and nothing is removed.
        """
        async with self._write() as repo:
            row = await self._existing(repo, pkey)
            wanted = [str(t) for t in targets]
            present = {m.guid for m in row.members} | {k.keyword for k in row.keywords}
            absent = [t for t in wanted if t not in present]
            if absent and not missing_ok:
                shown = ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else "")
                raise NotFoundError(f"not members of {pkey}: {shown}", "guids")
            if len(absent) < len(wanted):
                await repo.remove_members(row, wanted, _now())
                await repo.bump_generation(row)
            return to_domain(row)

    async def remove_member(self, pkey: PKey, target: PortGuid | str) -> None:
        async with self._write() as repo:
            row = await self._existing(repo, pkey)
            if not await repo.remove_member(row, str(target), _now()):
                raise NotFoundError(f"{target} is not a member of {pkey}", "guid")
            await repo.bump_generation(row)

    async def replace_all(self, partitions: Sequence[Partition]) -> int:
        """Make these the whole desired state (import). Returns the new generation."""
        async with self._write() as repo:
            await repo.delete_all_partitions_but_default()
            now = _now()
            rows = []
            for partition in partitions:
                if partition.is_default:
                    await repo.delete_partition(await self._existing(repo, partition.pkey))
                rows.append(await repo.add_partition(partition, now))
            generation = await repo.bump_generation()
            for row in rows:
                row.generation = generation
            return generation

    async def get_partition(self, pkey: PKey) -> Partition:
        async with self._sessions() as session, session.begin():
            return to_domain(await self._existing(Repository(session), pkey))

    async def list_partitions(self) -> list[Partition]:
        async with self._sessions() as session, session.begin():
            return [to_domain(r) for r in await Repository(session).list_partitions()]

    async def desired_generation(self) -> int:
        async with self._sessions() as session, session.begin():
            return await Repository(session).generation()

    @staticmethod
    async def _existing(repo: Repository, pkey: PKey) -> PartitionRow:
        row = await repo.get_partition(pkey)
        if row is None:
            raise NotFoundError(f"no partition {pkey}", "pkey")
        return row


async def load_desired_state(sessions: async_sessionmaker[AsyncSession]) -> DesiredState:
    """A consistent snapshot for the reconciler, in one short read transaction."""
    async with sessions() as session, session.begin():
        return await Repository(session).desired_state()


def _now() -> datetime:
    return datetime.now(UTC)


def _conflict(exc: IntegrityError) -> ConflictError:
    """Map a unique violation (another writer won a race) to a 409 naming the field."""
    text = str(exc.orig).lower()
    if "mgid" in text:
        return ConflictError("a multicast group with that mgid exists already", "mgroups")
    for field in ("name", "pkey"):
        if field in text:
            return ConflictError(f"a partition with that {field} already exists", field)
    return ConflictError("the change conflicts with stored data")
