"""The single background loop that makes OpenSM hold the desired state.

Level-triggered: each pass reads the whole desired state, renders it, replaces
partitions.conf when its bytes differ and asks OpenSM to reload. Commits wake
the loop; a short coalescing delay and a minimum interval between reloads turn
a burst of API calls into a few reloads. A periodic resync repairs a file that
changed behind pkeyd's back. One pass at a time, never inside a DB transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as TallyCounter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from pkeyd.config import Settings
from pkeyd.domain import DesiredState
from pkeyd.errors import ReloadError
from pkeyd.metrics import Metrics
from pkeyd.opensm.reload import Reloader
from pkeyd.opensm.render import render
from pkeyd.opensm.writer import atomic_write, read_live, remove_stale_temps

log = structlog.get_logger("pkeyd.reconcile")

StateSource = Callable[[], Awaitable[DesiredState]]


@dataclass
class ReloadOutcome:
    result: str  # "ok" or "error"
    generation: int
    at: datetime
    error: str | None = None


@dataclass
class ReconcileStatus:
    applied_generation: int | None = None
    seen_generation: int | None = None
    last_reload: ReloadOutcome | None = None
    last_error: str | None = None
    reloads: TallyCounter[str] = field(default_factory=TallyCounter)
    passes: int = 0


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        load_state: StateSource,
        reloader: Reloader,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._load_state = load_state
        self._reloader = reloader
        self._metrics = metrics
        self._path: Path = settings.partitions_conf
        self._wake = asyncio.Event()
        self._last_reload_mono = -1e9
        self.status = ReconcileStatus()

    def wake(self) -> None:
        """Called after every commit; cheap and safe to call often."""
        self._wake.set()

    async def run(self) -> None:
        """Run until cancelled. Errors of a pass are recorded and retried with backoff."""
        removed = await asyncio.to_thread(remove_stale_temps, self._path)
        if removed:
            log.warning("stale_temp_files_removed", paths=[str(p) for p in removed])
        backoff = self._settings.retry_min_s
        self._wake.set()  # the first pass runs at once: OpenSM may hold an older file
        while True:
            await self._wait_for_work()
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.status.last_error = str(exc)
                if not isinstance(exc, ReloadError | OSError):
                    log.exception("reconcile_pass_crashed")
                log.warning("reconcile_retry", error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._settings.retry_max_s)
                self._wake.set()
            else:
                backoff = self._settings.retry_min_s

    async def _wait_for_work(self) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), self._settings.resync_interval_s)
        except TimeoutError:
            return  # periodic resync
        # Let a burst of commits land before reading the state once for all.
        since_reload = time.monotonic() - self._last_reload_mono
        delay = max(
            self._settings.coalesce_delay_s,
            self._settings.min_reload_interval_s - since_reload,
        )
        if delay > 0:
            await asyncio.sleep(delay)
        self._wake.clear()

    async def reconcile_once(self) -> None:
        started = time.perf_counter()
        state = await self._load_state()
        self.status.passes += 1
        self.status.seen_generation = state.generation
        self._update_state_gauges(state)

        with self._metrics.render_seconds.time():
            data = render(state, self._settings.default_partition_members).encode("ascii")
        live = await asyncio.to_thread(read_live, self._path)
        if live == data and self.status.applied_generation == state.generation:
            return
        if live != data:
            try:
                await asyncio.to_thread(atomic_write, self._path, data)
            except OSError as exc:
                self._metrics.writes.labels(result="error").inc()
                log.error("config_write_failed", path=str(self._path), error=str(exc))
                raise
            self._metrics.writes.labels(result="ok").inc()
            if live is not None and self.status.applied_generation is None:
                log.info("config_replaced_at_start", path=str(self._path))
        await self._reload(state.generation)
        self._metrics.reconcile_seconds.observe(time.perf_counter() - started)

    async def _reload(self, generation: int) -> None:
        self._last_reload_mono = time.monotonic()
        now = datetime.now(UTC)
        try:
            await self._reloader.reload()
        except ReloadError as exc:
            self._record_reload(ReloadOutcome("error", generation, now, exc.message))
            log.warning("opensm_reload_failed", generation=generation, error=exc.message)
            raise
        self._record_reload(ReloadOutcome("ok", generation, now))
        self.status.applied_generation = generation
        self.status.last_error = None
        self._metrics.applied_generation.set(generation)
        log.info("opensm_reloaded", generation=generation)

    def _record_reload(self, outcome: ReloadOutcome) -> None:
        self.status.last_reload = outcome
        self.status.reloads[outcome.result] += 1
        self._metrics.reloads.labels(result=outcome.result).inc()

    def _update_state_gauges(self, state: DesiredState) -> None:
        self._metrics.desired_generation.set(state.generation)
        self._metrics.partitions.set(len(state.partitions))
        tally: TallyCounter[str] = TallyCounter()
        for partition in state.partitions:
            tally.update(m.membership.value for m in partition.members)
        for membership in ("full", "limited", "both"):
            self._metrics.members.labels(membership=membership).set(tally[membership])
