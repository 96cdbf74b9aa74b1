"""Read every port's NodeInfo, PortInfo and PKey table over SMPs, many MADs in flight.

``SmpFabricReader`` runs a directed-route discovery from the local port across
switches (like ibnetdiscover, de-duplicated by node GUID) and reads each end
port's PortInfo and PKey table as soon as the port is found, so discovery and
table reads overlap and the window of MADs in flight (``engine.MadEngine``)
stays full. The pass is written with completion callbacks, not a task per
port, for the same CPU reason the engine is.

What one pass reads: NodeInfo at every link end reached; NodeDescription per
end port (``node_desc``); PortInfo of every external switch port, to learn
which links are up before walking them (a DR SMP out of a down port is dropped
silently on real hardware and would cost a whole timeout); PortInfo and the
full PKey table of every CA/router port. ``switch_ports=True`` adds
SwitchInfo and the tables of switch port 0 and of every linked external
switch port (their partition enforcement tables).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Self

from pkeyd.fabric import smp
from pkeyd.fabric.engine import MadEngine, MadTransport, Outcome, SmpReaderConfig
from pkeyd.fabric.model import (
    FabricError,
    FabricPort,
    FabricSnapshot,
    MadStats,
    NodeType,
    PortNotFoundError,
    PortState,
    ReadFailure,
)
from pkeyd.fabric.smp import DrPath, NodeInfo, Route, Smp
from pkeyd.fabric.umad import Libumad, LocalPort, UmadTransport

__all__ = ["MadTransport", "Routing", "SmpFabricReader", "SmpReaderConfig"]

Routing = Literal["directed", "lid"]


class _Join:
    """Collects one outcome per key, then calls ``then`` once with all of them."""

    def __init__(self, count: int, then: Callable[[dict[object, Outcome]], None]) -> None:
        self._left, self._then = count, then
        self.outcomes: dict[object, Outcome] = {}

    def slot(self, key: object) -> Callable[[Outcome], None]:
        return functools.partial(self._put, key)

    def _put(self, key: object, outcome: Outcome) -> None:
        self.outcomes[key] = outcome
        self._left -= 1
        if not self._left:
            self._then(self.outcomes)


def _first_error(outcomes: dict[object, Outcome]) -> FabricError | None:
    return next((o for o in outcomes.values() if isinstance(o, FabricError)), None)


def _pkey_table(outcomes: dict[object, Outcome], cap: int) -> tuple[int, ...]:
    """Blocks keyed 0..n-1, concatenated and cut to the capacity."""
    entries: list[int] = []
    for block in range(smp.pkey_blocks(cap)):
        answer = outcomes[block]
        assert isinstance(answer, Smp)
        entries += smp.parse_pkey_block(answer.data)
    return tuple(entries[:cap])  # the last block is zero-padded past the capacity


@dataclass(frozen=True, slots=True)
class _PortRoute:
    path: DrPath
    lid: int


class _Pass:
    """One discovery-and-read pass; ``run`` returns when no request is left open."""

    def __init__(self, engine: MadEngine, config: SmpReaderConfig) -> None:
        self._engine, self._config = engine, config
        self._finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._open = 0
        self._switches: set[int] = set()
        self._end_ports: set[tuple[int, int]] = set()
        self.ports: list[FabricPort] = []
        self.failures: list[ReadFailure] = []
        self._errors: list[FabricError] = []
        self.routes: dict[int, _PortRoute] = {}

    async def run(self) -> None:
        """Discover from the local port and read everything found."""
        self._open += 1  # the pass itself: nothing can finish it before this returns
        self._probe(DrPath())
        self._release()
        await self._finished

    async def read_end_port(self, info: NodeInfo, route: Route) -> FabricPort:
        """Instead of ``run``: just the port that answered ``info`` via ``route``."""
        self._open += 1
        self._read_end_port(info, route)
        self._release()
        await self._finished
        if not self.ports:
            raise self._errors[0]  # the typed error (MadTimeoutError, MadStatusError...)
        return self.ports[0]  # a NodeDescription that failed alone leaves "" there

    def _get(
        self, route: Route, attr_id: int, attr_mod: int, then: Callable[[Outcome], None]
    ) -> None:
        self._open += 1
        done = functools.partial(self._settled, then)
        self._engine.submit(route, smp.METHOD_GET, attr_id, attr_mod, b"", done)

    def _settled(self, then: Callable[[Outcome], None], outcome: Outcome) -> None:
        try:
            then(outcome)
        except Exception as exc:  # a bug: fail the pass rather than lose it in a callback
            if not self._finished.done():
                self._finished.set_exception(exc)
        finally:
            self._release()

    def _release(self) -> None:
        self._open -= 1
        if not self._open and not self._finished.done():
            self._finished.set_result(None)

    def _fail(self, what: str, exc: FabricError, **where: Any) -> None:
        self._errors.append(exc)
        self.failures.append(ReadFailure(what=what, error=str(exc), **where))

    def _on_node(self, path: DrPath, outcome: Outcome) -> None:
        if isinstance(outcome, FabricError):
            self._fail("node_info", outcome)
            return
        info = smp.parse_node_info(outcome.data)
        if info.node_type == NodeType.SWITCH:
            if info.node_guid not in self._switches:
                self._switches.add(info.node_guid)
                # Port 0 (the switch's own LID) matters only for its table.
                ports = range(0 if self._config.switch_ports else 1, info.num_ports + 1)
                join = _Join(len(ports), functools.partial(self._on_switch, info, path))
                for port_num in ports:
                    self._get(path, smp.ATTR_PORT_INFO, port_num, join.slot(port_num))
            return
        if not path.ports:  # we sit on an end node: the fabric starts behind our port
            self._probe(path.extend(info.local_port_num))
        # A node is walked once, but each port of a multi-port HCA is reached
        # through its own cable and read on its own.
        if (key := (info.node_guid, info.local_port_num)) in self._end_ports:
            return
        self._end_ports.add(key)
        self.routes[info.port_guid] = _PortRoute(path, 0)  # reachable even if the reads fail
        self._read_end_port(info, path)

    def _read_end_port(self, info: NodeInfo, route: Route) -> None:
        blocks = smp.pkey_blocks(info.partition_cap)
        with_desc = self._config.node_desc
        join = _Join(blocks + 1 + with_desc, functools.partial(self._on_end_port, info, route))
        self._get(route, smp.ATTR_PORT_INFO, info.local_port_num, join.slot("port_info"))
        for block in range(blocks):  # all on the wire at once
            self._get(route, smp.ATTR_PKEY_TABLE, block, join.slot(block))
        if with_desc:
            self._get(route, smp.ATTR_NODE_DESC, 0, join.slot("desc"))

    def _probe(self, path: DrPath) -> None:
        self._get(path, smp.ATTR_NODE_INFO, 0, functools.partial(self._on_node, path))

    def _desc(self, info: NodeInfo, outcome: Outcome | None) -> str:
        """The NodeDescription answer; "" when not read or unreadable (recorded)."""
        if outcome is None:
            return ""
        if isinstance(outcome, FabricError):
            self._fail("node_desc", outcome, node_guid=info.node_guid)
            return ""
        return smp.parse_node_desc(outcome.data)

    def _on_end_port(self, info: NodeInfo, route: Route, outcomes: dict[object, Outcome]) -> None:
        desc = self._desc(info, outcomes.pop("desc", None))
        error = _first_error(outcomes)
        if error is not None:
            self._fail(
                "end_port",
                error,
                node_guid=info.node_guid,
                port_num=info.local_port_num,
                port_guid=info.port_guid,
            )
            return
        port_info = outcomes["port_info"]
        assert isinstance(port_info, Smp)
        pi = smp.parse_port_info(port_info.data)
        self.ports.append(
            FabricPort(
                node_guid=info.node_guid,
                port_guid=info.port_guid,
                port_num=info.local_port_num,
                node_type=info.node_type,
                node_desc=desc,
                lid=pi.lid,
                state=pi.state,
                partition_cap=info.partition_cap,
                pkeys=_pkey_table(outcomes, info.partition_cap),
            )
        )
        if isinstance(route, DrPath):
            self.routes[info.port_guid] = _PortRoute(route, pi.lid)

    def _on_switch(self, info: NodeInfo, path: DrPath, outcomes: dict[object, Outcome]) -> None:
        states: dict[int, smp.PortInfo] = {}
        for port_num, outcome in outcomes.items():
            assert isinstance(port_num, int)
            if isinstance(outcome, FabricError):
                self._fail("port_info", outcome, node_guid=info.node_guid, port_num=port_num)
            else:
                states[port_num] = smp.parse_port_info(outcome.data)
        for port_num, pi in states.items():
            # DOWN is no physical link: a DR SMP out of it would just be lost.
            # The port we came in by leads back to where we already are.
            back = bool(path.ports) and port_num == info.local_port_num
            if port_num and pi.state >= PortState.INIT and not back:
                self._probe(path.extend(port_num))
        if self._config.switch_ports:
            with_desc = self._config.node_desc
            join = _Join(1 + with_desc, functools.partial(self._on_switch_info, info, path, states))
            self._get(path, smp.ATTR_SWITCH_INFO, 0, join.slot("switch_info"))
            if with_desc:
                self._get(path, smp.ATTR_NODE_DESC, 0, join.slot("desc"))

    def _on_switch_info(
        self,
        info: NodeInfo,
        path: DrPath,
        states: dict[int, smp.PortInfo],
        outcomes: dict[object, Outcome],
    ) -> None:
        desc = self._desc(info, outcomes.get("desc"))
        switch_info = outcomes["switch_info"]
        if isinstance(switch_info, FabricError):
            self._fail("switch_info", switch_info, node_guid=info.node_guid)
            return
        enforcement_cap = smp.parse_switch_info(switch_info.data).partition_enforcement_cap
        lid = states[0].lid if 0 in states else 0
        for port_num, pi in states.items():
            if port_num and pi.state < PortState.INIT:
                continue
            # Port 0's table is sized by NodeInfo.PartitionCap, external
            # ports' by SwitchInfo.PartitionEnforcementCap; only port 0 has a LID.
            cap = enforcement_cap if port_num else info.partition_cap
            port = FabricPort(
                node_guid=info.node_guid,
                port_guid=info.port_guid,
                port_num=port_num,
                node_type=NodeType.SWITCH,
                node_desc=desc,
                lid=0 if port_num else lid,
                state=pi.state,
                partition_cap=cap,
                pkeys=(),
            )
            if not cap:  # no table to read on this port
                self.ports.append(port)
                continue
            join = _Join(smp.pkey_blocks(cap), functools.partial(self._on_switch_table, port))
            for block in range(smp.pkey_blocks(cap)):
                attr_mod = smp.pkey_attr_mod(block, port_num)
                self._get(path, smp.ATTR_PKEY_TABLE, attr_mod, join.slot(block))

    def _on_switch_table(self, port: FabricPort, outcomes: dict[object, Outcome]) -> None:
        error = _first_error(outcomes)
        if error is not None:
            self._fail("pkey_table", error, node_guid=port.node_guid, port_num=port.port_num)
        else:
            pkeys = _pkey_table(outcomes, port.partition_cap)
            self.ports.append(dataclasses.replace(port, pkeys=pkeys))


class SmpFabricReader:
    """Reads the fabric over SMPs from one local port; use inside one event loop.

    ``open()`` binds to libibumad (under ibsim: a process started with
    LD_PRELOAD=libumad2sim.so, IBSIM_SOCKNAME and SIM_HOST - see probe.py).
    The constructor takes any ``MadTransport``, which is how tests fake one.
    """

    def __init__(
        self,
        transport: MadTransport,
        config: SmpReaderConfig | None = None,
        *,
        local_port: LocalPort | None = None,
    ) -> None:
        self.config = config or SmpReaderConfig()
        self.local_port = local_port
        self._transport = transport
        self._engine = MadEngine(transport, self.config)
        self._routes: dict[int, _PortRoute] = {}
        self._closed = False

    @classmethod
    async def open(
        cls,
        config: SmpReaderConfig | None = None,
        *,
        ca_name: str | None = None,
        port_num: int | None = None,
    ) -> Self:
        """Open the local umad port (the first active one unless named)."""

        def bind() -> tuple[UmadTransport, LocalPort]:
            # In a worker thread: under umad2sim the first sysfs access
            # connects to ibsim, which blocks (and retries every 2 s while
            # ibsim's socket refuses connections).
            umad = Libumad()
            port = umad.find_port(ca_name, port_num)
            return UmadTransport(umad, port), port

        transport, port = await asyncio.to_thread(bind)
        return cls(transport, config, local_port=port)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def stats(self) -> MadStats:
        """Counters since open; ``FabricSnapshot.mad_stats`` holds one pass's share."""
        return self._engine.stats

    async def read_all(self) -> FabricSnapshot:
        """Discover the fabric from the local port and read every end port's table."""
        self._check_open()
        before, started, read_at = self._engine.stats, time.perf_counter(), datetime.now(UTC)
        one_pass = _Pass(self._engine, self.config)
        await one_pass.run()
        self._routes = one_pass.routes
        return FabricSnapshot(
            ports=tuple(sorted(one_pass.ports, key=lambda p: (p.port_guid, p.port_num))),
            read_at=read_at,
            duration_s=time.perf_counter() - started,
            mad_stats=self._engine.stats - before,
            failures=tuple(one_pass.failures),
        )

    async def read_port(self, port_guid: int, *, routing: Routing = "directed") -> FabricPort:
        """One CA port, by the route learnt in the last pass (discovering if needed)."""
        self._check_open()
        info, route = await self._locate(port_guid, routing)
        return await _Pass(self._engine, self.config).read_end_port(info, route)

    async def set_pkey_block(
        self, port_guid: int, block: int, entries: Sequence[int], *, routing: Routing = "directed"
    ) -> tuple[int, ...]:
        """SubnSet(P_KeyTable) on a CA port behind the SM's back; returns the echoed block.

        For tests that tamper with a table. Entries are raw 16-bit values
        (membership bit included); fewer than 32 are zero-padded.
        """
        self._check_open()
        info, route = await self._locate(port_guid, routing)
        if not 0 <= block < smp.pkey_blocks(info.partition_cap):
            raise ValueError(f"block {block} beyond PartitionCap {info.partition_cap}")
        answer = await self._engine.request(
            route,
            smp.ATTR_PKEY_TABLE,
            smp.pkey_attr_mod(block),
            method=smp.METHOD_SET,
            data=smp.encode_pkey_block(entries),
        )
        return smp.parse_pkey_block(answer.data)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._engine.close()
        await asyncio.to_thread(self._transport.close)  # joins the receive thread

    def _check_open(self) -> None:
        if self._closed:
            raise FabricError("SMP reader is closed")

    async def _locate(self, port_guid: int, routing: Routing) -> tuple[NodeInfo, Route]:
        # The cached route is checked with a NodeInfo first: after a recabling
        # it could lead to another port, and a Set there would hit the wrong table.
        for attempt in range(2):
            known = self._routes.get(port_guid)
            if known is not None:
                route: Route = known.path
                if routing == "lid":
                    if not known.lid:
                        raise FabricError(f"port {port_guid:#018x} has no LID to route to")
                    route = known.lid
                answer = await self._engine.request(route, smp.ATTR_NODE_INFO)
                info = smp.parse_node_info(answer.data)
                if info.port_guid == port_guid and info.node_type != NodeType.SWITCH:
                    return info, route
            if attempt == 0:
                await self.read_all()
        raise PortNotFoundError(f"no CA port with GUID {port_guid:#018x} on the fabric")
