"""How a write runs besides plainly: dry, or under an Idempotency-Key; and its revision."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError

from pkeyd.domain import DesiredState
from pkeyd.errors import ValidationError
from pkeyd.groupcommit import Op, Tx
from pkeyd.history import PartitionDelta
from pkeyd.store import journal
from pkeyd.writes import Answer, DryRun, Outcome, WriteOptions, dry_run

# Expired Idempotency-Keys are purged at most this often.
_PURGE_EVERY = timedelta(minutes=1)


async def record(
    tx: Tx,
    opts: WriteOptions,
    action: str,
    deltas: Sequence[PartitionDelta],
    restored: int | None = None,
) -> int:
    """Give the write its generation and record it as a revision (same savepoint)."""
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


def dry(op: Op[object]) -> Op[DryRun[object]]:
    """The write, with the whole desired state read before and after (then rolled back)."""

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


class Idempotency:
    """Stores a write's answer with its change; answers a retry of the key with it."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl = timedelta(seconds=ttl_s)
        self._last_purge = datetime.min.replace(tzinfo=UTC)

    def wrap(self, op: Op[object], opts: WriteOptions) -> Op[Outcome[object]]:
        request = opts.idempotency
        assert request is not None

        async def run(tx: Tx) -> Outcome[object]:
            session = tx.session
            if tx.now - self._last_purge > _PURGE_EVERY:
                self._last_purge = tx.now
                await journal.purge_answers(session, tx.now - self._ttl)
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
                        body=answer.json_body(),
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

    async def _replay(
        self, tx: Tx, actor: str, key: str, request_hash: str
    ) -> Outcome[object] | None:
        stored = await journal.find_answer(tx.session, actor, key)
        if stored is None:
            return None
        created = stored.created_at
        if created.tzinfo is None:  # SQLite hands back naive UTC
            created = created.replace(tzinfo=UTC)
        if created < tx.now - self._ttl:
            await journal.forget_answer(tx.session, actor, key)
            return None
        if stored.request_hash != request_hash:
            raise ValidationError(
                "this key was sent before with a different request; use a new key",
                "Idempotency-Key",
            )
        headers = {**stored.headers, "Idempotent-Replayed": "true"}
        return Outcome("replay", replay=Answer(stored.status, stored.body, headers))
