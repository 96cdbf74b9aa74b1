"""Group commit: concurrent writes share one transaction and one durable commit.

A durable commit costs an fsync (about 0.6 ms on a plain disk). Writes that
arrive while one commit is under way wait in a queue; the next transaction
takes all of them, each in its own SAVEPOINT, so that one write failing (a
404, 409, 412...) rolls back only itself. Every caller is answered after the
commit that holds its write, with its own result or error. Generations are
handed out one per changing write, in queue order, and written once per
transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import structlog
from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from pkeyd.domain import Partition, PKey
from pkeyd.store import lane_sql
from pkeyd.store.engine import WRITE_TRANSACTION, begin_write_now
from pkeyd.store.models import StateRow
from pkeyd.store.repository import Repository

T = TypeVar("T")
log = structlog.get_logger("pkeyd.groupcommit")

# Writes per transaction: bounds how long the first of them waits for its answer.
MAX_BATCH = 256
# A lane group naming up to this many members runs its statements on the
# event loop (a few milliseconds at most); a larger one, a bulk request,
# runs whole in a worker thread so that the API keeps answering meanwhile.
MAX_ON_LOOP = 2_000


@dataclass
class Tx:
    """What one write sees: its session (inside its savepoint) and its generation."""

    session: AsyncSession
    repo: Repository
    now: datetime
    base: int  # the generation committed before this write
    # Partitions as this write leaves them (None: deleted), for the read cache.
    updates: dict[int, Partition | None] = field(default_factory=dict)
    claimed: bool = False
    overlay: dict[int, Partition | None] = field(default_factory=dict)

    def generation(self) -> int:
        """The generation of this write's change (the same on every call)."""
        self.claimed = True
        return self.base + 1

    def known(self, pkey: int) -> tuple[bool, Partition | None]:
        """A partition as an earlier write of this transaction left it, if one did."""
        if pkey in self.overlay:
            return True, self.overlay[pkey]
        return False, None


Op = Callable[[Tx], Awaitable[T]]


class Lane(Protocol):
    """Runs neighbouring writes of one kind together, with set-based statements.

    Answers each write's (ok, result or error) and the generation reached,
    having put what it changed in tx.updates; or None to have each write
    run alone after all. It runs inside a savepoint of its own.
    """

    async def run_group(
        self, tx: Tx, payloads: list[Any]
    ) -> tuple[list[tuple[bool, Any]], int] | None: ...

    def weight(self, payloads: list[Any]) -> int:
        """How much work the group is (the members it names)."""
        ...

    def run_blocking(
        self,
        session: Session,
        payloads: list[Any],
        base: int,
        now: datetime,
        known: Callable[[PKey, int], Partition | None],
    ) -> tuple[list[tuple[bool, Any]], int, dict[int, Partition | None]]:
        """The same on a blocking session (on the loop or in a thread); `known` reads the cache."""
        ...


@dataclass(frozen=True)
class LaneOp(Generic[T]):
    """A write that may run in a lane with its neighbours; `op` runs it alone."""

    op: Op[T]
    lane: Lane
    payload: Any

    async def __call__(self, tx: Tx) -> T:
        return await self.op(tx)


@dataclass
class _Item(Generic[T]):
    op: Op[T]
    keep: bool  # False: a dry run, always rolled back
    future: asyncio.Future[T]


@dataclass(frozen=True)
class Committed:
    """What a transaction changed, for the read cache: generations and partitions."""

    first_base: int
    last_generation: int
    updates: dict[int, Partition | None]


class GroupCommitter:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        on_commit: Callable[[Committed], None],
        map_error: Callable[[IntegrityError], Exception],
        *,
        blocking: Engine | None = None,
        known: Callable[[PKey, int], Partition | None] = lambda pkey, generation: None,
        gate: asyncio.Lock | None = None,
    ) -> None:
        """`blocking`: an engine on which lane groups commit outside the asyncio driver.

        `gate` is held from a transaction's start until the cache has what it
        committed: whoever holds it sees the database and the cache agree.
        """
        self.gate = gate if gate is not None else asyncio.Lock()
        self._sessions = sessions
        self._on_commit = on_commit
        self._map_error = map_error
        self._blocking = blocking
        self._known = known
        self._queue: list[_Item[Any]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def run(self, op: Op[T], *, keep: bool = True) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(op, keep, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="pkeyd-group-commit")
        return await future

    async def aclose(self) -> None:
        """Finish the writes already queued (called when the daemon stops)."""
        if self._drainer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            if self._blocking is not None and (lane := _lane_group(batch, 0)):
                # A run of lane writes first, on the blocking engine.
                self._queue[:0] = batch[len(lane) :]
                batch = lane
                attempt = self._commit_blocking(batch)
            else:
                attempt = self._commit(batch)
            try:
                async with self.gate:
                    await attempt
            except BaseException as exc:
                # The commit failed or was cancelled: nothing of the batch
                # is stored, so every writer in it gets the error.
                error = self._map_error(exc) if isinstance(exc, IntegrityError) else exc
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                if not isinstance(exc, Exception):
                    for item in self._queue:
                        item.future.cancel()
                    self._queue = []
                    raise
                log.error("group_commit_failed", writes=len(batch), error=repr(exc))

    async def _commit(self, batch: list[_Item[Any]]) -> None:
        results: list[tuple[_Item[Any], bool, Any]] = []
        overlay: dict[int, Partition | None] = {}
        async with self._sessions() as session, session.begin():
            await session.connection(execution_options={WRITE_TRANSACTION: True})
            first = base = await _locked_generation(session)
            i = 0
            while i < len(batch):
                group = _lane_group(batch, i)
                if group:
                    tx = Tx(session, Repository(session), datetime.now(UTC), base, overlay=overlay)
                    done = await self._lane(session, group, tx)
                    if done is not None:
                        outcomes, base = done
                        overlay.update(tx.updates)
                        results.extend(
                            (item, ok, value)
                            for item, (ok, value) in zip(group, outcomes, strict=True)
                        )
                        i += len(group)
                        continue
                for item in group or [batch[i]]:
                    tx = Tx(session, Repository(session), datetime.now(UTC), base, overlay=overlay)
                    ok, value = await self._one(session, item, tx)
                    if ok and item.keep:
                        if tx.claimed:
                            base += 1
                        overlay.update(tx.updates)
                    results.append((item, ok, value))
                    # Each write reads afresh: no ORM object outlives its savepoint.
                    session.expunge_all()
                i += len(group) or 1
            if base != first:
                await session.execute(
                    update(StateRow).where(StateRow.id == 1).values(desired_generation=base)
                )
        if base != first or overlay:
            self._on_commit(Committed(first, base, overlay))
        for item, ok, value in results:
            if item.future.done():  # the caller went away
                continue
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)

    async def _commit_blocking(self, group: list[_Item[Any]]) -> None:
        ops = [item.op for item in group if isinstance(item.op, LaneOp)]
        lane, payloads = ops[0].lane, [op.payload for op in ops]
        try:
            if lane.weight(payloads) <= MAX_ON_LOOP:
                first, base, outcomes, updates = await self._blocking_commit_on_loop(lane, payloads)
            else:
                first, base, outcomes, updates = await asyncio.to_thread(
                    self._blocking_commit, lane, payloads
                )
        except Exception as exc:
            # Nothing was committed: the asyncio path runs them (alone if need be).
            log.warning("write_lane_failed", writes=len(group), error=repr(exc))
            await self._commit(group)
            return
        if base != first or updates:
            self._on_commit(Committed(first, base, updates))
        for item, (ok, value) in zip(group, outcomes, strict=True):
            if item.future.done():
                continue
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)

    def _blocking_commit(
        self, lane: Lane, payloads: list[Any]
    ) -> tuple[int, int, list[tuple[bool, Any]], dict[int, Partition | None]]:
        """One transaction on the blocking engine: read, decide, write, commit."""
        assert self._blocking is not None
        with Session(self._blocking) as session, session.begin():
            conn = session.connection(execution_options={WRITE_TRANSACTION: True})
            first = lane_sql.locked_generation(conn)
            outcomes, base, updates = lane.run_blocking(
                session, payloads, first, datetime.now(UTC), self._known
            )
            if base != first:
                lane_sql.set_generation(conn, base)
        return first, base, outcomes, updates

    async def _blocking_commit_on_loop(
        self, lane: Lane, payloads: list[Any]
    ) -> tuple[int, int, list[tuple[bool, Any]], dict[int, Partition | None]]:
        """The same transaction, its statements run on the event loop.

        Only the waits leave the loop: for the write lock when another
        connection (another process) holds it, and for the durable commit.
        The statements themselves take microseconds each once the lock is
        held; run in a worker thread, their Python side would contend with
        the event loop for the interpreter lock, and each side waits out the
        other's time slice, many times per group. Each hop to a thread costs
        as much under load, so a free lock is taken on the loop.
        """
        assert self._blocking is not None
        session = Session(self._blocking)
        committed = False
        try:
            conn = begin_write_now(session)
            if conn is None:  # begin_write_now closed that session
                session = Session(self._blocking)
                conn = await finish_in_thread(_begin_write, session)
            first = lane_sql.locked_generation(conn)
            outcomes, base, updates = lane.run_blocking(
                session, payloads, first, datetime.now(UTC), self._known
            )
            if base != first:
                lane_sql.set_generation(conn, base)
            await finish_in_thread(session.commit)
            committed = True
        finally:
            if committed:
                session.close()  # only hands the connection back
            else:
                # A rollback: in a thread, as it may touch the disk.
                await finish_in_thread(session.close)
        return first, base, outcomes, updates

    async def _lane(
        self, session: AsyncSession, group: list[_Item[Any]], tx: Tx
    ) -> tuple[list[tuple[bool, Any]], int] | None:
        ops = [item.op for item in group if isinstance(item.op, LaneOp)]
        savepoint = await session.begin_nested()
        done: tuple[list[tuple[bool, Any]], int] | None
        try:
            done = await ops[0].lane.run_group(tx, [op.payload for op in ops])
        except Exception as exc:
            # Each write then runs alone, so that the one at fault fails by itself.
            log.warning("write_lane_failed", writes=len(group), error=repr(exc))
            done = None
        if done is None:
            if savepoint.is_active:
                await savepoint.rollback()
            tx.updates.clear()
        else:
            await savepoint.commit()
        session.expunge_all()
        return done

    async def _one(self, session: AsyncSession, item: _Item[Any], tx: Tx) -> tuple[bool, Any]:
        savepoint = await session.begin_nested()
        try:
            value = await item.op(tx)
            if item.keep:
                await savepoint.commit()
            else:
                await savepoint.rollback()
            return True, value
        except Exception as exc:
            if savepoint.is_active:
                await savepoint.rollback()
            return False, self._map_error(exc) if isinstance(exc, IntegrityError) else exc


async def finish_in_thread(call: Callable[..., T], *args: Any) -> T:
    """call(*args) in a worker thread; a cancellation waits for it to finish first.

    The session must never be used by two threads at once: a cancelled
    caller would otherwise close it while the thread still commits.
    """
    future = asyncio.ensure_future(asyncio.to_thread(call, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():  # however often the caller is cancelled
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        raise


def _begin_write(session: Session) -> Connection:
    """Open the session's write transaction: waits for the database's write lock."""
    session.begin()
    return session.connection(execution_options={WRITE_TRANSACTION: True})


def _lane_group(batch: list[_Item[Any]], start: int) -> list[_Item[Any]]:
    """The writes from `start` on that share its lane (none if it has none)."""
    first = batch[start]
    if not isinstance(first.op, LaneOp) or not first.keep:
        return []
    end = start + 1
    while end < len(batch):
        item = batch[end]
        if not (isinstance(item.op, LaneOp) and item.op.lane is first.op.lane and item.keep):
            break
        end += 1
    return batch[start:end]


async def _locked_generation(session: AsyncSession) -> int:
    # FOR UPDATE serialises writers of other processes on a shared server
    # database; SQLite's BEGIN IMMEDIATE has already taken the write lock.
    value = await session.scalar(
        select(StateRow.desired_generation).where(StateRow.id == 1).with_for_update()
    )
    return int(value or 0)
