"""The proof on the ports: read the PKey tables, compare, report drift, repair.

A background task beside the reconciler. After every reload it reads the
fabric until the applied generation shows on the ports (then that generation
is `verified`), giving OpenSM `verify_settle_s` to finish its sweep; and it
reads again every `verify_interval_s`. Drift a reload can repair (missing,
wrong membership, unexpected PKeys) makes it ask the reconciler for a reload,
at most `repair_max` times per generation with doubling pauses; drift that
persists is reported, not looped on. Never holds a DB transaction: it works
on the state the reconciler applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import structlog

from pkeyd.capacity import CapacityGuard
from pkeyd.config import Settings
from pkeyd.drift import (
    REPAIRABLE,
    Drift,
    compute_drift,
    corrected_table,
    expected_for,
    ports_by_kind,
)
from pkeyd.fabric.engine import SmpReaderConfig
from pkeyd.fabric.model import FabricError, FabricPort, FabricSnapshot
from pkeyd.fabric.reader import SmpFabricReader
from pkeyd.fabric.verbs import NoVerbsDevicesError
from pkeyd.metrics import DRIFT_KINDS, Metrics
from pkeyd.reconcile import Reconciler

log = structlog.get_logger("pkeyd.verification")
PKEY_BLOCK = 32  # entries per P_KeyTable block


class FabricReader(Protocol):
    sm_port_guid: int

    async def read_all(self) -> FabricSnapshot: ...

    async def write_table(self, port: FabricPort, table: tuple[int, ...]) -> None: ...

    async def aclose(self) -> None: ...


ReaderFactory = Callable[[], Awaitable[FabricReader]]
LocalReader = Callable[[], tuple[FabricPort, ...]]


@dataclass
class VerifyStatus:
    verified_generation: int | None = None
    drift: list[Drift] = field(default_factory=list)
    drift_generation: int | None = None
    snapshot: FabricSnapshot | None = None
    last_success: datetime | None = None
    error: str | None = None
    local_ports: tuple[FabricPort, ...] = ()
    local_error: str | None = None
    repairs: int = 0
    persistent: bool = False


class Verifier:
    def __init__(
        self,
        settings: Settings,
        reconciler: Reconciler,
        metrics: Metrics,
        open_reader: ReaderFactory,
        read_local: LocalReader,
        capacity: CapacityGuard,
    ) -> None:
        self._settings = settings
        self._reconciler = reconciler
        self._metrics = metrics
        self._open_reader = open_reader
        self._read_local = read_local
        self._capacity = capacity
        self._reader: FabricReader | None = None
        self._wake = asyncio.Event()
        self._repair_generation: int | None = None
        # Each port's last table without drift: the layout OpenSM chose.
        self._last_good: dict[int, tuple[int, ...]] = {}
        self.status = VerifyStatus()
        self._after_reload = False
        reconciler.on_applied(self._applied)

    def replace_settings(self, settings: Settings) -> None:
        """A re-read config (SIGHUP): intervals and repair limits apply from the next pass."""
        self._settings = settings

    def _applied(self) -> None:
        self._after_reload = True
        self._wake.set()

    @property
    def sm_port_guid(self) -> int | None:
        return None if self._reader is None else self._reader.sm_port_guid

    @property
    def allow_both(self) -> bool:
        return self._settings.allow_both_pkeys

    async def run(self) -> None:
        try:
            while True:
                # asyncio.timeout, not wait_for: see Reconciler._wait_for_work.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.verify_interval_s):
                        await self._wake.wait()
                self._wake.clear()
                await self._pass()
        finally:
            if self._reader is not None:
                await self._reader.aclose()

    async def _pass(self) -> None:
        await self._refresh_local()
        applied = self._reconciler.applied_state
        if applied is None:
            return
        # Right after a reload, differences are OpenSM still sweeping: give it
        # the settle time. Otherwise a difference is drift at once.
        settle_s = self._settings.verify_settle_s if self._after_reload else 0.0
        self._after_reload = False
        try:
            reader = await self._ensure_reader()
            drift, snapshot = await self._settle(reader, applied.generation, settle_s)
        except FabricError as exc:
            self.status.error = f"fabric unavailable: {exc.message}"
            log.warning("verification_failed", error=exc.message)
            await self._drop_reader()
            return
        self._record(applied.generation, drift, snapshot)
        repairable = [d for d in drift if d.kind in REPAIRABLE]
        if repairable:
            await self._repair(reader, applied.generation, repairable, snapshot)

    async def _settle(
        self, reader: FabricReader, generation: int, settle_s: float
    ) -> tuple[list[Drift], FabricSnapshot]:
        """Read until the tables match, or OpenSM had its settle time."""
        deadline = time.monotonic() + settle_s
        while True:
            state = self._reconciler.applied_state
            assert state is not None
            started = time.perf_counter()
            snapshot = await reader.read_all()
            drift = compute_drift(
                state, snapshot, reader.sm_port_guid, allow_both=self._settings.allow_both_pkeys
            )
            self._metrics.verification_seconds.observe(time.perf_counter() - started)
            self._metrics.mads_sent.inc(snapshot.mad_stats.sent)
            self._metrics.mad_timeouts.inc(snapshot.mad_stats.timeouts)
            if not any(d.kind in REPAIRABLE for d in drift) or time.monotonic() >= deadline:
                return drift, snapshot
            if state.generation != generation:
                return drift, snapshot  # a newer reload is on its way
            await asyncio.sleep(0.2)

    def _record(self, generation: int, drift: list[Drift], snapshot: FabricSnapshot) -> None:
        status = self.status
        status.snapshot, status.drift, status.drift_generation = snapshot, drift, generation
        status.error = None
        status.last_success = datetime.now(UTC)
        self._metrics.last_verification.set(status.last_success.timestamp())
        self._metrics.observe_tables(snapshot)
        self._capacity.update(
            {f"0x{p.port_guid:016x}": p.partition_cap for p in snapshot.ca_ports()}
        )
        drifted = {d.port_guid for d in drift}
        for port in snapshot.ca_ports():
            if port.port_guid not in drifted:
                self._last_good[port.port_guid] = port.pkeys
        counts = ports_by_kind(drift)
        for kind in DRIFT_KINDS:
            self._metrics.drift_ports.labels(kind=kind).set(counts[kind])
        blocking = [d for d in drift if d.kind != "absent_member"]
        if not blocking:
            if status.verified_generation != generation:
                log.info("generation_verified", generation=generation, ports=len(snapshot.ports))
            status.verified_generation = generation
            status.persistent = False
            self._metrics.verified_generation.set(generation)
            for latency in self._reconciler.take_commit_latencies(generation):
                self._metrics.apply_latency.observe(latency)
        else:
            log.warning(
                "drift_detected",
                generation=generation,
                ports=len({d.port_guid for d in blocking}),
                kinds=dict(ports_by_kind(blocking)),
            )

    async def _repair(
        self,
        reader: FabricReader,
        generation: int,
        drift: list[Drift],
        snapshot: FabricSnapshot,
    ) -> None:
        """First a reload (OpenSM may simply not have swept yet), then the ports themselves.

        A heavy sweep does not read tables back: an entry changed behind
        OpenSM's back survives any number of reloads. So the next attempts
        write the tables OpenSM believes the ports hold, block by block.
        """
        if self._repair_generation != generation:
            self._repair_generation, self.status.repairs = generation, 0
        if self.status.repairs >= self._settings.repair_max:
            if not self.status.persistent:
                log.error(
                    "drift_persists",
                    generation=generation,
                    repairs_tried=self.status.repairs,
                    entries=len(drift),
                )
            self.status.persistent = True
            return
        pause = min(self._settings.retry_min_s * 2**self.status.repairs, self._settings.retry_max_s)
        self.status.repairs += 1
        await asyncio.sleep(pause)
        if self.status.repairs == 1:
            log.warning("drift_repair_reload", generation=generation)
            self._reconciler.request_reload()
            return
        await self._rewrite_tables(reader, drift, snapshot)
        self._wake.set()

    async def _rewrite_tables(
        self, reader: FabricReader, drift: list[Drift], snapshot: FabricSnapshot
    ) -> None:
        state = self._reconciler.applied_state
        assert state is not None
        ports = [p for p in snapshot.ca_ports() if p.port_guid in {d.port_guid for d in drift}]
        expected = expected_for(
            state, snapshot.ca_ports(), reader.sm_port_guid, allow_both=self.allow_both
        )
        for port in ports:
            table = corrected_table(
                port, expected.get(port.port_guid, {}), self._last_good.get(port.port_guid)
            )
            log.warning(
                "drift_repair_table_write", port_guid=f"0x{port.port_guid:016x}", lid=port.lid
            )
            try:
                await reader.write_table(port, table)
            except FabricError as exc:
                log.error(
                    "drift_repair_failed", port_guid=f"0x{port.port_guid:016x}", error=exc.message
                )

    async def _ensure_reader(self) -> FabricReader:
        if self._reader is None:
            self._reader = await self._open_reader()
        return self._reader

    async def _drop_reader(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.aclose()

    async def _refresh_local(self) -> None:
        try:
            self.status.local_ports = await asyncio.to_thread(self._read_local)
            self.status.local_error = None
        except NoVerbsDevicesError as exc:
            self.status.local_ports, self.status.local_error = (), exc.message
        except FabricError as exc:
            self.status.local_error = exc.message


class SmpSource:
    """The SMP reader, seen from the verifier: the SM's port is the local one."""

    def __init__(self, reader: SmpFabricReader) -> None:
        if reader.local_port is None:
            raise FabricError("the SMP reader has no local port")
        self._reader = reader
        self.sm_port_guid = reader.local_port.port_guid

    async def read_all(self) -> FabricSnapshot:
        return await self._reader.read_all()

    async def write_table(self, port: FabricPort, table: tuple[int, ...]) -> None:
        """SubnSet(P_KeyTable) for every 32-entry block that differs."""
        for block in range(0, len(table), PKEY_BLOCK):
            if table[block : block + PKEY_BLOCK] != port.pkeys[block : block + PKEY_BLOCK]:
                await self._reader.set_pkey_block(
                    port.port_guid, block // PKEY_BLOCK, table[block : block + PKEY_BLOCK]
                )

    async def aclose(self) -> None:
        await self._reader.aclose()


async def open_smp_source(settings: Settings) -> FabricReader:
    reader = await SmpFabricReader.open(
        SmpReaderConfig(timeout_s=settings.mad_timeout_s, retries=settings.mad_retries)
    )
    return SmpSource(reader)
