"""Results of reading PKey tables from ports, shared by the SMP and verbs readers.

A ``FabricPort`` is the same shape whichever reader produced it, so callers
compare desired partitions with what a port holds without caring how it was
read. ``pkeys`` is the raw table: 16-bit entries in index order, zeros
included, exactly ``partition_cap`` long. Indexes matter (OpenSM keeps them
stable, IPoIB binds to one), so the table is never compacted here; use
``members`` for the non-zero entries.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Self

from pkeyd.errors import PkeydError

FULL_MEMBER_BIT = 0x8000
Membership = Literal["full", "limited"]


class FabricError(PkeydError):
    """Reading the fabric failed; transient unless a subclass says otherwise."""

    code = "fabric_unavailable"
    status = 503


class MadTimeoutError(FabricError):
    """A MAD got no answer after every retry."""

    code = "mad_timeout"


class MadStatusError(FabricError):
    """The target answered with a non-zero MAD status (e.g. bad attribute modifier)."""

    code = "mad_status"

    def __init__(self, message: str, mad_status: int) -> None:
        super().__init__(message)
        self.mad_status = mad_status


class PortNotFoundError(FabricError):
    """No port with that GUID was found on the fabric."""

    code = "port_not_found"
    status = 404


class NodeType(enum.IntEnum):
    UNKNOWN = 0
    CA = 1
    SWITCH = 2
    ROUTER = 3

    @classmethod
    def from_wire(cls, value: int) -> NodeType:
        return cls(value) if value in cls._value2member_map_ else cls.UNKNOWN


class PortState(enum.IntEnum):
    """IB logical port state (PortInfo.PortState, ibv_port_state)."""

    NO_CHANGE = 0
    DOWN = 1
    INIT = 2
    ARMED = 3
    ACTIVE = 4
    ACTIVE_DEFER = 5

    @classmethod
    def from_wire(cls, value: int) -> PortState:
        return cls(value) if value in cls._value2member_map_ else cls.NO_CHANGE


def _guid(value: int) -> str:
    return f"0x{value:016x}"


@dataclass(frozen=True, slots=True)
class FabricPort:
    """One port and its PKey table, as read from the port itself.

    ``node_desc`` is the SMP NodeDescription for ports read over the fabric
    ("" unless the reader was asked to read it)
    and the local device name (e.g. ``mlx5_0``) for ports read through verbs.
    ``lid`` is 0 for switch external ports (they have none) and unassigned ports.
    """

    node_guid: int
    port_guid: int
    port_num: int
    node_type: NodeType
    node_desc: str
    lid: int
    state: PortState
    partition_cap: int
    pkeys: tuple[int, ...]

    @property
    def members(self) -> tuple[int, ...]:
        """Non-zero entries (raw, membership bit included) in table order."""
        return tuple(p for p in self.pkeys if p)

    def membership(self, pkey: int) -> Membership | None:
        """How this port belongs to ``pkey`` (its membership bit is ignored)."""
        if not 0 <= pkey <= 0xFFFF:
            raise ValueError(f"PKey {pkey:#x} is not a 16-bit value")
        base = pkey & ~FULL_MEMBER_BIT
        if base | FULL_MEMBER_BIT in self.pkeys:
            return "full"
        return "limited" if base in self.pkeys else None

    def to_json(self) -> dict[str, Any]:
        return {
            "node_guid": _guid(self.node_guid),
            "port_guid": _guid(self.port_guid),
            "port_num": self.port_num,
            "node_type": self.node_type.name,
            "node_desc": self.node_desc,
            "lid": self.lid,
            "state": self.state.name,
            "partition_cap": self.partition_cap,
            "pkeys": [f"0x{p:04x}" for p in self.pkeys],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            node_guid=int(data["node_guid"], 16),
            port_guid=int(data["port_guid"], 16),
            port_num=int(data["port_num"]),
            node_type=NodeType[data["node_type"]],
            node_desc=str(data["node_desc"]),
            lid=int(data["lid"]),
            state=PortState[data["state"]],
            partition_cap=int(data["partition_cap"]),
            pkeys=tuple(int(p, 16) for p in data["pkeys"]),
        )


@dataclass(frozen=True, slots=True)
class MadStats:
    """Counters since the reader opened; monotonic, so metrics can be derived."""

    sent: int = 0  # every transmission attempted, retries included
    received: int = 0  # responses matched to a waiting request
    timeouts: int = 0  # attempts that got no answer (timer or bounced send)
    retries: int = 0  # re-transmissions after a timeout
    failed: int = 0  # requests that gave up (last retry timed out, or the send failed)
    status_errors: int = 0  # answers with a non-zero MAD status
    unmatched: int = 0  # answers for no waiting request (late or foreign)
    max_in_flight: int = 0  # peak concurrent requests since the reader opened

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(**{k: int(v) for k, v in data.items() if k in cls.__dataclass_fields__})

    def __sub__(self, other: MadStats) -> MadStats:
        fields = self.__dataclass_fields__
        diff = {k: getattr(self, k) - getattr(other, k) for k in fields if k != "max_in_flight"}
        return MadStats(**diff, max_in_flight=self.max_in_flight)


@dataclass(frozen=True, slots=True)
class ReadFailure:
    """Something the reader could not read; the rest of the snapshot is still valid."""

    what: str  # e.g. "pkey_table", "port_info", "discovery"
    error: str
    node_guid: int | None = None
    port_num: int | None = None
    port_guid: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "error": self.error,
            "node_guid": None if self.node_guid is None else _guid(self.node_guid),
            "port_num": self.port_num,
            "port_guid": None if self.port_guid is None else _guid(self.port_guid),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        def opt(key: str) -> int | None:
            value = data.get(key)
            return None if value is None else int(value, 16)

        port_num = data.get("port_num")
        return cls(
            what=str(data["what"]),
            error=str(data["error"]),
            node_guid=opt("node_guid"),
            port_num=None if port_num is None else int(port_num),
            port_guid=opt("port_guid"),
        )


@dataclass(frozen=True, slots=True)
class FabricSnapshot:
    """Every port read in one pass. ``mad_stats`` counts this pass only."""

    ports: tuple[FabricPort, ...]
    read_at: datetime
    duration_s: float
    mad_stats: MadStats
    failures: tuple[ReadFailure, ...] = ()
    _by_guid: dict[int, FabricPort] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_guid: dict[int, FabricPort] = {}
        for p in sorted(self.ports, key=lambda p: p.port_num):
            by_guid.setdefault(p.port_guid, p)  # a switch's ports share one GUID
        object.__setattr__(self, "_by_guid", by_guid)

    def port(self, port_guid: int) -> FabricPort | None:
        """The CA port with this GUID (for a switch GUID: its lowest port read)."""
        return self._by_guid.get(port_guid)

    def ca_ports(self) -> tuple[FabricPort, ...]:
        return tuple(p for p in self.ports if p.node_type == NodeType.CA)

    def pkey_tables(self) -> dict[int, list[int]]:
        """CA port GUID -> non-zero entries, the shape ``pkeyd.sim.read_pkey_tables`` returns."""
        return {p.port_guid: list(p.members) for p in self.ca_ports()}

    def to_json(self) -> dict[str, Any]:
        return {
            "read_at": self.read_at.isoformat(),
            "duration_s": self.duration_s,
            "mad_stats": self.mad_stats.to_json(),
            "ports": [p.to_json() for p in self.ports],
            "failures": [f.to_json() for f in self.failures],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            ports=tuple(FabricPort.from_json(p) for p in data["ports"]),
            read_at=datetime.fromisoformat(data["read_at"]),
            duration_s=float(data["duration_s"]),
            mad_stats=MadStats.from_json(data["mad_stats"]),
            failures=tuple(ReadFailure.from_json(f) for f in data.get("failures", [])),
        )
