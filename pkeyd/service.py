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

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pkeyd.config import Settings
from pkeyd.domain import DesiredState, Member, Membership, Partition, PKey, PortGuid
from pkeyd.errors import ConflictError, NotFoundError, ValidationError
from pkeyd.store.models import PartitionRow
from pkeyd.store.repository import Repository, to_domain


class PartitionService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        on_commit: Callable[[], None],
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._on_commit = on_commit
        self._write_lock = asyncio.Lock()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Repository]:
        """One write transaction; bumps the generation only if the caller changed something."""
        async with self._write_lock, self._sessions() as session:
            try:
                async with session.begin():
                    yield Repository(session)
            except IntegrityError as exc:
                raise _conflict(exc) from exc
        self._on_commit()

    def check_memberships(self, members: Sequence[Member], field_prefix: str) -> None:
        if self._settings.allow_both_pkeys:
            return
        for i, member in enumerate(members):
            if member.membership is Membership.BOTH:
                raise ValidationError(
                    "'both' needs allow_both_pkeys (as in opensm.conf); without it OpenSM "
                    "silently makes the port a full member",
                    f"{field_prefix}[{i}].membership",
                )

    async def create_partition(
        self, name: str, pkey: PKey | None, ipoib: bool, members: Sequence[Member]
    ) -> Partition:
        self.check_memberships(members, "members")
        async with self._write() as repo:
            if pkey is None:
                free = await repo.lowest_free_pkey(self._settings.pkey_range)
                if free is None:
                    raise ConflictError(f"no free PKey left in {self._settings.pkey_range}", "pkey")
                pkey = PKey(free)
            elif await repo.get_partition(pkey) is not None:
                raise ConflictError(f"partition {pkey} already exists", "pkey")
            if await repo.name_taken(name):
                raise ConflictError(f"a partition named {name!r} already exists", "name")
            row = await repo.add_partition(pkey, name, ipoib, members, _now())
            await repo.bump_generation()
            return to_domain(row)

    async def delete_partition(self, pkey: PKey) -> None:
        async with self._write() as repo:
            row = await self._existing(repo, pkey)
            await repo.delete_partition(row)
            await repo.bump_generation()

    async def add_members(self, pkey: PKey, members: Sequence[Member]) -> Partition:
        self.check_memberships(members, "members")
        async with self._write() as repo:
            row = await self._existing(repo, pkey)
            if await repo.upsert_members(row, members, _now()):
                await repo.bump_generation()
            return to_domain(row)

    async def remove_member(self, pkey: PKey, guid: PortGuid) -> None:
        async with self._write() as repo:
            row = await self._existing(repo, pkey)
            if not await repo.remove_member(row, guid, _now()):
                raise NotFoundError(f"{guid} is not a member of {pkey}", "guid")
            await repo.bump_generation()

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
    for field in ("name", "pkey"):
        if field in text:
            return ConflictError(f"a partition with that {field} already exists", field)
    return ConflictError("the change conflicts with stored data")
