"""The single background loop that makes OpenSM hold the desired state.

Level-triggered: each pass reads the whole desired state, renders it, checks
the render with pkeyd's own OpenSM parser, replaces partitions.conf when its
bytes differ and asks OpenSM to reload. Commits wake the loop; a short
coalescing delay and a minimum interval between reloads turn a burst of API
calls into a few reloads. A periodic resync notices a file edited behind
pkeyd's back. One pass at a time, never inside a DB transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as TallyCounter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import structlog

from pkeyd.config import Settings
from pkeyd.domain import DesiredState, Membership, Partition
from pkeyd.errors import ReloadError
from pkeyd.metrics import Metrics
from pkeyd.opensm.fastpath import Steps, run_sliced
from pkeyd.opensm.livefile import ExternalEdit, LiveFile
from pkeyd.opensm.reload import Reloader
from pkeyd.opensm.render import render_steps
from pkeyd.opensm.selfcheck import full_check, reads_back_steps

log = structlog.get_logger("pkeyd.reconcile")

StateSource = Callable[[], Awaitable[DesiredState]]


@dataclass
class ReloadOutcome:
    result: str  # "ok" or "error"
    generation: int
    at: datetime
    error: str | None = None


@dataclass
class Refusal:
    """A render the safety net kept off the live file."""

    generation: int
    at: datetime
    problems: list[str]


@dataclass
class ReconcileStatus:
    applied_generation: int | None = None
    seen_generation: int | None = None
    last_reload: ReloadOutcome | None = None
    last_error: str | None = None
    reloads: TallyCounter[str] = field(default_factory=TallyCounter)
    passes: int = 0
    refused: Refusal | None = None
    external_edit: ExternalEdit | None = None
    held: bool = False
    opensm_up: bool | None = None  # None until the first reload was tried


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
        self._member_counts: dict[int, tuple[Partition, TallyCounter[Membership]]] = {}
        self._live = LiveFile(settings.partitions_conf, settings.state_dir / "external-edits")
        self._wake = asyncio.Event()
        # Work asked for that no finished pass has done yet (the stop's last pass).
        self._pending = True
        self._last_reload_mono = -1e9
        self._force_reload = False
        self._applied_listeners: list[Callable[[], None]] = []
        # Commit times (monotonic) not yet in a pass, then per generation.
        self._unread_commits: list[float] = []
        self._commits_by_generation: list[tuple[int, list[float]]] = []
        self.applied_state: DesiredState | None = None
        self._pass_started: float | None = None
        # Set once the first pass ended, success or failure (sd_notify READY=1 waits for it).
        self.first_pass_done = asyncio.Event()
        self.status = ReconcileStatus()

    def replace_settings(self, settings: Settings) -> None:
        """A re-read config (SIGHUP): timings and policies apply from the next pass."""
        self._settings = settings

    def wake(self) -> None:
        """Ask for a pass; cheap and safe to call often."""
        self._pending = True
        self._wake.set()

    def committed(self) -> None:
        """Called after every commit: wake, and remember when (for apply latency)."""
        self._unread_commits.append(time.monotonic())
        self.wake()

    def request_reload(self) -> None:
        """Reload OpenSM on the next pass even if the file is unchanged (drift repair)."""
        self._force_reload = True
        self.wake()

    def on_applied(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every successful reload."""
        self._applied_listeners.append(listener)

    def stuck_for(self) -> float:
        """Seconds the current pass has been running (0 between passes): a watchdog feed."""
        started = self._pass_started
        return 0.0 if started is None else time.monotonic() - started

    def take_commit_latencies(self, generation: int) -> list[float]:
        """Seconds from each commit folded into `generation` (or earlier) until now."""
        now = time.monotonic()
        done = [t for g, times in self._commits_by_generation if g <= generation for t in times]
        self._commits_by_generation = [
            (g, times) for g, times in self._commits_by_generation if g > generation
        ]
        return [now - t for t in done]

    def resume(self) -> None:
        """An operator decided: put pkeyd's version back and apply again."""
        self.status.held = False
        self._metrics.held.set(0)
        log.info("reconcile_resumed")
        self.wake()

    async def run(self) -> None:
        """Run until cancelled. Errors of a pass are recorded and retried with backoff."""
        removed = await asyncio.to_thread(self._live.remove_stale_temps)
        if removed:
            log.warning("stale_temp_files_removed", paths=[str(p) for p in removed])
        backoff = self._settings.retry_min_s
        self._wake.set()  # the first pass runs at once: OpenSM may hold an older file
        while True:
            await self._wait_for_work()
            self._pass_started = time.monotonic()
            self._pending = False  # a commit from now on asks for another pass
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                self._pending = True  # the pass did not finish: its work is still to do
                raise
            except Exception as exc:
                self.first_pass_done.set()
                self.status.last_error = str(exc)
                if not isinstance(exc, ReloadError | OSError):
                    log.exception("reconcile_pass_crashed")
                log.warning("reconcile_retry", error=str(exc), retry_in_s=backoff)
                self._pass_started = None  # waiting out a backoff is not being stuck
                self._pending = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._settings.retry_max_s)
                self._wake.set()
            else:
                self.first_pass_done.set()
                backoff = self._settings.retry_min_s
            finally:
                self._pass_started = None

    async def final_pass(self, within_s: float) -> None:
        """At stop, after the run loop and the last write: apply what is still pending.

        Every acknowledged write is stored either way, and the next start
        applies it; this pass keeps OpenSM current while pkeyd is down (an
        upgrade, a move to another node). Bounded: a stop must end.
        """
        if not self._pending:
            return
        self._pending = False
        try:
            async with asyncio.timeout(within_s):
                await self.reconcile_once()
        except Exception as exc:  # TimeoutError included: the next start applies it
            log.warning("final_pass_incomplete", error=repr(exc), within_s=within_s)

    async def _wait_for_work(self) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
        # cancellation that arrives as the event is set (a commit just before
        # SIGTERM), and the loop would then never stop.
        try:
            async with asyncio.timeout(self._settings.resync_interval_s):
                await self._wake.wait()
        except TimeoutError:
            return  # periodic resync
        # Debounce: wait until commits pause for coalesce_delay_s (but no longer
        # than coalesce_max_s), so a burst of API calls becomes one pass.
        settings = self._settings
        give_up = time.monotonic() + settings.coalesce_max_s
        while True:
            self._wake.clear()
            await asyncio.sleep(settings.coalesce_delay_s)
            if not self._wake.is_set() or time.monotonic() >= give_up:
                break
        since_reload = time.monotonic() - self._last_reload_mono
        if since_reload < settings.min_reload_interval_s:
            await asyncio.sleep(settings.min_reload_interval_s - since_reload)
        self._wake.clear()

    async def _render_checked(
        self, state: DesiredState
    ) -> tuple[str, list[str], TallyCounter[Membership]]:
        """The file for this state, what the safety net found wrong with it, the member counts.

        On the event loop in slices (fastpath.run_sliced): a large state takes
        a good part of a second, and the API keeps answering meanwhile. A file
        the quick read-back cannot pass (multicast groups, say) goes through
        the full parse in a worker thread.
        """
        dialect = {"allow_both_pkeys": self._settings.allow_both_pkeys, "qos": self._settings.qos}
        text = await run_sliced(render_steps(state))
        problems: list[str] = []
        if not await run_sliced(reads_back_steps(text, state, **dialect)):
            problems = await asyncio.to_thread(partial(full_check, text, state, **dialect))
        return text, problems, await run_sliced(self._count_members(state))

    async def reconcile_once(self) -> None:
        started = time.perf_counter()
        commits, self._unread_commits = self._unread_commits, []
        state = await self._load_state()
        if commits:
            self._commits_by_generation.append((state.generation, commits))
        self.status.passes += 1
        self.status.seen_generation = state.generation
        self._metrics.desired_generation.set(state.generation)
        self._metrics.partitions.set(len(state.partitions))

        with self._metrics.render_seconds.time():
            text, problems, members = await self._render_checked(state)
        for membership in Membership:
            self._metrics.members.labels(membership=membership.value).set(members[membership])
        if problems:
            self._refuse(state.generation, problems)
            return
        self.status.refused = None
        data = text.encode("ascii")

        live = await asyncio.to_thread(self._live.read)
        edit = await asyncio.to_thread(self._live.inspect, live)
        if edit is not None:
            self._note_external_edit(edit)
        if self.status.held:
            return
        if (
            live == data
            and self.status.applied_generation == state.generation
            and not self._force_reload
        ):
            self._note_opensm_alive()
            return
        if live != data:
            try:
                await asyncio.to_thread(self._live.write, data)
            except OSError as exc:
                self._metrics.writes.labels(result="error").inc()
                log.error("config_write_failed", path=str(self._live.path), error=str(exc))
                raise
            self._metrics.writes.labels(result="ok").inc()
        await self._reload(state)
        self._force_reload = False
        self._metrics.reconcile_seconds.observe(time.perf_counter() - started)

    def _refuse(self, generation: int, problems: list[str]) -> None:
        """Keep the last good file: this render would not mean what was asked."""
        if self.status.refused is None or self.status.refused.problems != problems:
            log.error("render_refused", generation=generation, problems=problems[:20])
            self._metrics.refused_writes.labels(reason="self_check").inc()
        self.status.refused = Refusal(generation, datetime.now(UTC), problems)

    def _note_external_edit(self, edit: ExternalEdit) -> None:
        self.status.external_edit = edit
        if edit.kind == "taken_over":
            log.warning("config_taken_over", path=str(self._live.path), saved_to=str(edit.saved_to))
            return
        self._metrics.external_edits.inc()
        log.warning(
            "external_edit_detected",
            kind=edit.kind,
            path=str(self._live.path),
            saved_to=str(edit.saved_to) if edit.saved_to else None,
            policy=self._settings.on_external_edit,
        )
        if self._settings.on_external_edit == "hold":
            self.status.held = True
            self._metrics.held.set(1)
            # The held file is the new baseline: the same bytes are not a new edit.
            self._live.accept(self._live_bytes_for(edit))

    def _live_bytes_for(self, edit: ExternalEdit) -> bytes | None:
        return None if edit.saved_to is None else edit.saved_to.read_bytes()

    async def _reload(self, state: DesiredState) -> None:
        generation = state.generation
        self._last_reload_mono = time.monotonic()
        now = datetime.now(UTC)
        try:
            await self._reloader.reload()
        except ReloadError as exc:
            self._record_reload(ReloadOutcome("error", generation, now, exc.message))
            self._metrics.opensm_up.set(0)
            self.status.opensm_up = False
            log.warning("opensm_reload_failed", generation=generation, error=exc.message)
            raise
        self._record_reload(ReloadOutcome("ok", generation, now))
        self.status.applied_generation = generation
        self.applied_state = state
        self.status.last_error = None
        self._metrics.opensm_up.set(1)
        self.status.opensm_up = True
        self._metrics.applied_generation.set(generation)
        log.info("opensm_reloaded", generation=generation)
        for listener in self._applied_listeners:
            listener()

    def _note_opensm_alive(self) -> None:
        """Between reloads, opensm_up follows the process where the reloader can tell
        (SIGHUP by pid file); a reload command cannot, so the last reload decides."""
        alive = getattr(self._reloader, "alive", None)
        if alive is None:
            return
        up = bool(alive())
        if up != self.status.opensm_up:
            (log.info if up else log.warning)("opensm_up_changed", up=up)
        self.status.opensm_up = up
        self._metrics.opensm_up.set(1 if up else 0)

    def _record_reload(self, outcome: ReloadOutcome) -> None:
        self.status.last_reload = outcome
        self.status.reloads[outcome.result] += 1
        self._metrics.reloads.labels(result=outcome.result).inc()

    def _count_members(self, state: DesiredState) -> Steps[TallyCounter[Membership]]:
        """Member entries by membership, in steps (one pass at a time).

        Counted again only for the partitions that changed (a new object): a
        pass under a stream of writes would otherwise walk every member.
        """
        counts: dict[int, tuple[Partition, TallyCounter[Membership]]] = {}
        tally: TallyCounter[Membership] = TallyCounter()
        for partition in state.partitions:
            known = self._member_counts.get(partition.pkey.value)
            if known is None or known[0] is not partition:
                known = (partition, TallyCounter(m.membership for m in partition.members))
                yield
            counts[partition.pkey.value] = known
            tally.update(known[1])
        self._member_counts = counts
        return tally
