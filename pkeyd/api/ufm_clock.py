"""UFM's ``last_updated``, made trustworthy: it moves only once a change is on the ports.

Clients poll ``GET /resources/pkeys/last_updated`` and compare it with the
server time of their own call (the Date header of a HEAD request just
before it). With UFM the value moves when UFM stores a change, long before
the fabric holds it. Here it is published only when the generation holding
the change is verified on the ports' PKey tables (or, with verification off,
applied: written to partitions.conf and OpenSM reloaded).

The published time is when that generation was applied, not when the
verification finished: a verification of an older generation can finish
after a client's call without containing its change, and stamping it "now"
would tell that client its change had arrived. An applied generation holds
every commit made before it, so its apply time is at or after the call of
every client whose change it carries.

A call that changes nothing (adding a GUID that is already a member) makes
no generation, yet its client waits for last_updated to pass its call too.
Such a call touches the clock: once the generation that holds the state it
asked for is verified, the value is at least the time of that call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

from aiohttp import web

from pkeyd.api.keys import RECONCILER, VERIFIER

# Generations applied but not yet verified; more only pile up while the
# fabric cannot be read, and then only the newest can still be verified.
_PENDING_MAX = 1024


class LastUpdated:
    def __init__(self, *, verifying: bool) -> None:
        self._verifying = verifying
        self._applied_at: dict[int, datetime] = {}
        self._touched_at: dict[int, datetime] = {}  # generation -> latest no-op call
        self.generation: int | None = None  # the generation `value` belongs to
        self.value: datetime | None = None

    def applied(self, generation: int, at: datetime) -> None:
        """A generation was written and OpenSM reloaded (first time only counts)."""
        if generation in self._applied_at or (
            self.generation is not None and generation <= self.generation
        ):
            return  # a repair reload of a generation seen before
        self._applied_at[generation] = at
        if len(self._applied_at) > _PENDING_MAX:
            del self._applied_at[min(self._applied_at)]
        if not self._verifying:
            self._publish(generation)

    def verified(self, generation: int | None) -> None:
        """The verifier saw `generation` on the ports (idempotent, called on every read)."""
        if generation is None or generation not in self._applied_at:
            return
        self._publish(generation)

    def touched(self, generation: int, at: datetime) -> None:
        """A call asked for the state of `generation` (or older) and changed nothing."""
        if self.generation is not None and generation <= self.generation:
            self._raise_to(at)  # already on the ports
            return
        self._touched_at[generation] = max(at, self._touched_at.get(generation, at))
        if len(self._touched_at) > _PENDING_MAX:
            del self._touched_at[min(self._touched_at)]

    def _publish(self, generation: int) -> None:
        if self.generation is None or generation > self.generation:
            self.generation = generation
            # Never backwards: a no-op call may have raised it past this apply time.
            self._raise_to(self._applied_at[generation])
        for older in [g for g in self._applied_at if g <= generation]:
            del self._applied_at[older]
        for older in [g for g in self._touched_at if g <= generation]:
            self._raise_to(self._touched_at.pop(older))

    def _raise_to(self, at: datetime) -> None:
        if self.value is None or at > self.value:
            self.value = at

    def current(self) -> datetime | None:
        return self.value


LAST_UPDATED = web.AppKey("ufm_last_updated", LastUpdated)


async def last_updated_ctx(app: web.Application) -> AsyncIterator[None]:
    """Follow the reconciler's reloads; runs after the daemon's own lifecycle started."""
    reconciler = app[RECONCILER]
    verifier = app[VERIFIER]
    clock = LastUpdated(verifying=verifier is not None)

    def on_applied() -> None:
        generation = reconciler.status.applied_generation
        if generation is not None:
            clock.applied(generation, datetime.now(UTC))

    # The first pass may already have run while the contexts before this one started.
    on_applied()
    reconciler.on_applied(on_applied)
    app[LAST_UPDATED] = clock
    yield


def _synced(app: web.Application) -> LastUpdated:
    """The clock, told what the verifier has seen on the ports by now."""
    clock = app[LAST_UPDATED]
    verifier = app[VERIFIER]
    if verifier is not None:
        clock.verified(verifier.status.verified_generation)
    return clock


def read_last_updated(app: web.Application) -> datetime | None:
    return _synced(app).current()


def touch_last_updated(app: web.Application, generation: int) -> None:
    """A UFM call answered with the state of `generation` (see LastUpdated.touched)."""
    _synced(app).touched(generation, datetime.now(UTC))
