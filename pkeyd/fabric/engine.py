"""MAD transactions: TIDs, timeouts, retries and a cap on MADs in flight.

``MadEngine`` sits between a ``MadTransport`` (raw 256-byte MADs in and out;
``umad.UmadTransport`` is the real one) and whoever asks questions
(``reader._Pass``). A fresh 32-bit TID per attempt keys the pending
requests; only the low 32 TID bits are ours, the kernel (and umad2sim and
ibsim) rewrite the upper bits to route the answer back to this agent.
Requests beyond the window wait in a FIFO. Completions are plain callbacks,
called on the event loop: at ~1,400 MADs per pass on 256 HCAs, a task or a
gather per MAD was the largest share of the CPU, and the pass is CPU-bound.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pkeyd.fabric import smp
from pkeyd.fabric.model import FabricError, MadStats, MadStatusError, MadTimeoutError
from pkeyd.fabric.smp import Route, Smp

TID_MASK = 0xFFFF_FFFF
Batch = Sequence[tuple[int, bytes]]  # (umad status, 256-byte MAD) as received
Outcome = Smp | FabricError


class MadTransport(Protocol):
    """Moves raw MADs; ``UmadTransport`` is the real one, tests bring fakes."""

    def start(self, on_receive: Callable[[Batch], None], call_soon: Callable[..., Any]) -> None:
        """Deliver (umad status, MAD) batches from now on via ``call_soon(on_receive, b)``."""

    def send(self, mad: bytes, dlid: int, timeout_ms: int) -> None:
        """Transmit one 256-byte MAD without blocking for long."""

    def close(self) -> None:
        """Stop delivering and release the port (may block briefly)."""


@dataclass(frozen=True, slots=True)
class SmpReaderConfig:
    """Tuning of the SMP reader; times in seconds."""

    timeout_s: float = 0.5  # per attempt
    retries: int = 3  # re-transmissions after the first attempt
    # On ibsim a full pass got faster up to ~64 in flight (one run, 256 HCAs:
    # 8: 180 ms, 16: 116, 32: 93, 64: 78, 128: 77) and no better beyond. On real
    # fabrics, mind that OpenSM keeps only 4 SMPs on the wire by default
    # (max_wire_smps): VL15 has no flow control and a busy switch drops what
    # it cannot buffer - the retry counters show it; lower this if they climb.
    max_in_flight: int = 64
    m_key: int = 0
    # NodeDescription is one more MAD per end port (+15 % per pass) and not
    # needed to verify tables; names are for people (probe --node-desc).
    node_desc: bool = False
    switch_ports: bool = False

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.retries < 0 or self.max_in_flight < 1:
            raise ValueError("timeout_s > 0, retries >= 0 and max_in_flight >= 1 required")


class _Request:
    __slots__ = ("attempts", "deadline", "dlid", "done", "mad", "tid")

    def __init__(self, mad: bytes, dlid: int, done: Callable[[Outcome], None]) -> None:
        self.mad, self.dlid, self.done = mad, dlid, done
        self.attempts, self.tid, self.deadline = 0, 0, 0.0


class MadEngine:
    """TIDs, timeouts, retries and the in-flight cap over one transport.

    One sweeper timer over the (at most ``max_in_flight``) pending requests
    replaces a loop timer per MAD, so a timeout fires 1 to 1.25 x timeout_s
    after the send. A send bounced back with a non-zero umad status (the
    kernel's own timeout, or an ibsim drop) counts as a timeout at once.
    """

    def __init__(self, transport: MadTransport, config: SmpReaderConfig) -> None:
        self._transport, self._config = transport, config
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, _Request] = {}
        self._waiting: collections.deque[_Request] = collections.deque()
        self._outbox: list[_Request] = []
        self._next_tid = secrets.randbits(32)
        self._counts = collections.Counter[str]()
        self._peak = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        transport.start(self._on_receive, self._loop.call_soon_threadsafe)

    @property
    def stats(self) -> MadStats:
        return MadStats(**self._counts, max_in_flight=self._peak)

    def submit(
        self,
        route: Route,
        method: int,
        attr_id: int,
        attr_mod: int,
        data: bytes,
        done: Callable[[Outcome], None],
    ) -> None:
        """Send one SMP; ``done`` gets the answer or a FabricError, on the loop."""
        if self._closed:
            self._loop.call_soon(done, FabricError("SMP reader is closed"))
            return
        mad = smp.encode_smp(
            method=method,
            attr_id=attr_id,
            attr_mod=attr_mod,
            tid=0,
            route=route,
            data=data,
            m_key=self._config.m_key,
        )
        req = _Request(mad, smp.route_dlid(route), done)
        if not self._waiting and len(self._pending) < self._config.max_in_flight:
            self._transmit(req)
        else:
            self._waiting.append(req)

    def request(
        self,
        route: Route,
        attr_id: int,
        attr_mod: int = 0,
        *,
        method: int = smp.METHOD_GET,
        data: bytes = b"",
    ) -> asyncio.Future[Smp]:
        """``submit`` as an awaitable, for the few requests outside a pass."""
        future: asyncio.Future[Smp] = self._loop.create_future()

        def settle(outcome: Outcome) -> None:
            if future.done():
                return
            if isinstance(outcome, FabricError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        self.submit(route, method, attr_id, attr_mod, data, settle)
        return future

    def close(self) -> None:
        """Fail everything not yet answered; the owner closes the transport."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        requests = [*self._pending.values(), *self._waiting]
        self._pending.clear()
        self._waiting.clear()
        for req in requests:
            self._settle(req, FabricError("SMP reader closed"))

    def _transmit(self, req: _Request) -> None:
        # A fresh TID per attempt: a late answer to an earlier attempt is then
        # simply unmatched instead of racing the retry.
        self._next_tid = req.tid = (self._next_tid + 1) & TID_MASK
        req.attempts += 1
        req.deadline = self._loop.time() + self._config.timeout_s
        self._pending[req.tid] = req
        self._peak = max(self._peak, len(self._pending))
        self._counts["sent"] += 1
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self._config.timeout_s / 4, self._sweep)
        self._outbox.append(req)
        if len(self._outbox) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        # Sends leave back to back, once per loop iteration: a MAD written
        # while the peer (ibsim, or the kernel's MAD layer) is still busy with
        # the previous one costs ~8 us; one that wakes it up ~30 us on a VM.
        outbox, self._outbox = self._outbox, []
        timeout_ms = int(self._config.timeout_s * 1000)
        for req in outbox:
            if self._pending.get(req.tid) is not req:
                continue  # settled or closed before it left
            try:
                mad = req.mad[:12] + req.tid.to_bytes(4, "big") + req.mad[16:]
                self._transport.send(mad, req.dlid, timeout_ms)
            except FabricError as exc:
                del self._pending[req.tid]
                self._counts["failed"] += 1
                self._complete(req, exc)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self._loop.time()
        for tid in [t for t, r in self._pending.items() if r.deadline <= now]:
            self._expire(tid)
        if self._pending and self._sweeper is None:
            self._sweeper = self._loop.call_later(self._config.timeout_s / 4, self._sweep)

    def _expire(self, tid: int) -> None:
        req = self._pending.pop(tid, None)
        if req is None:
            return  # answered meanwhile
        self._counts["timeouts"] += 1
        if req.attempts > self._config.retries:
            self._counts["failed"] += 1
            self._complete(req, MadTimeoutError(_describe(req)))
        else:
            self._counts["retries"] += 1
            self._transmit(req)

    def _on_receive(self, batch: Batch) -> None:
        for status, mad in batch:
            tid = int.from_bytes(mad[12:16], "big")
            if status:
                self._expire(tid)  # our send came back: see the class docstring
                continue
            req = self._pending.pop(tid, None)
            if req is None:
                self._counts["unmatched"] += 1
                continue
            self._counts["received"] += 1
            try:
                answer = smp.decode_smp(mad)
            except smp.SmpDecodeError as exc:
                self._complete(req, FabricError(f"{_describe(req)}: {exc}"))
                continue
            if answer.status:
                self._counts["status_errors"] += 1
                message = f"{_describe(req)}: MAD status {answer.status:#06x}"
                self._complete(req, MadStatusError(message, answer.status))
            else:
                self._complete(req, answer)

    def _complete(self, req: _Request, outcome: Outcome) -> None:
        """Settle a request already out of ``_pending``, then refill the window."""
        self._settle(req, outcome)
        while self._waiting and len(self._pending) < self._config.max_in_flight:
            self._transmit(self._waiting.popleft())

    def _settle(self, req: _Request, outcome: Outcome) -> None:
        try:
            req.done(outcome)
        except Exception as exc:  # a callback's bug must not stop the engine
            self._loop.call_exception_handler(
                {"message": "SMP completion callback failed", "exception": exc}
            )


def _describe(req: _Request) -> str:
    head = smp.decode_smp(req.mad)
    if req.dlid == smp.PERMISSIVE_LID:
        where = "DR path " + ",".join(["0", *map(str, req.mad[129 : 129 + req.mad[7]])])
    else:
        where = f"LID {req.dlid}"
    return (
        f"SMP attr {head.attr_id:#06x} mod {head.attr_mod:#x} to {where} "
        f"after {req.attempts} attempt(s)"
    )
