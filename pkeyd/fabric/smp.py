"""Subnet Management Packets: encoding and decoding, pure (no I/O).

Layout per the IBA spec, vol. 1, 14.2.1 (LID-routed) and 14.2.2 (directed
route). Everything on the wire is big-endian. A MAD is always 256 bytes; the
SMP attribute data is the 64 bytes at offset 64 in both forms.

Directed-route path semantics (what ``DrPath.ports`` holds): entry i is the
port the SMP leaves node i by, node 0 being the sender. ``DrPath(())`` (hop
count 0) addresses the local port itself; ``DrPath((1,))`` is whatever is
cabled to local port 1; ``DrPath((1, 17))`` goes on out of that node's port 17.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from pkeyd.fabric.model import NodeType, PortState

MAD_SIZE = 256
SMP_DATA_OFFSET = 64
SMP_DATA_SIZE = 64
DR_PATH_OFFSET = 128
DR_RETURN_PATH_OFFSET = 192
MAX_HOPS = 63  # the initial path has 64 bytes, byte 0 unused

MGMT_CLASS_SMI = 0x01  # LID-routed SMP
MGMT_CLASS_SMI_DR = 0x81  # directed-route SMP
BASE_VERSION = 1
CLASS_VERSION = 1

METHOD_GET = 0x01
METHOD_SET = 0x02
METHOD_GET_RESP = 0x81
RESPONSE_BIT = 0x80

ATTR_NODE_DESC = 0x0010
ATTR_NODE_INFO = 0x0011
ATTR_SWITCH_INFO = 0x0012
ATTR_PORT_INFO = 0x0015
ATTR_PKEY_TABLE = 0x0016

PERMISSIVE_LID = 0xFFFF
PKEYS_PER_BLOCK = 32
DR_STATUS_MASK = 0x7FFF  # the top bit of a DR SMP's status word is the D(irection) bit
DR_DIRECTION_BIT = 0x8000

# BaseVersion, MgmtClass, ClassVersion, Method, Status, HopPointer, HopCount,
# TransactionID, AttributeID, Reserved, AttributeModifier, M_Key
_HEADER = struct.Struct(">BBBBHBBQHHIQ")
# Whole requests: header, DrSLID, DrDLID, 28 reserved, data, initial path,
# return path (zero) - or header, 32 reserved, data, 128 reserved.
_DR_SMP = struct.Struct(">BBBBHBBQHHIQHH28x64s64s64x")
_LID_SMP = struct.Struct(">BBBBHBBQHHIQ32x64s128x")
_NODE_INFO = struct.Struct(">BBBBQQQHHIB3s")
_PKEY_BLOCK = struct.Struct(f">{PKEYS_PER_BLOCK}H")
_SWITCH_INFO = struct.Struct(">HHHHBBBBHH")


class SmpDecodeError(ValueError):
    """Bytes that are not a well-formed SMP response."""


@dataclass(frozen=True, slots=True)
class DrPath:
    """A directed route: the output port at each hop (see the module docstring)."""

    ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.ports) > MAX_HOPS:
            raise ValueError(f"directed route longer than {MAX_HOPS} hops")
        if any(not 0 <= p <= 255 for p in self.ports):
            raise ValueError(f"port numbers must be 0..255: {self.ports}")

    def extend(self, port: int) -> DrPath:
        return DrPath((*self.ports, port))

    def __str__(self) -> str:
        # the notation of smpquery -D / ibnetdiscover: "0" then one number per hop
        return ",".join(["0", *map(str, self.ports)])


Route = DrPath | int  # a directed route, or a destination LID (LID-routed SMP)


class Smp(NamedTuple):
    """A decoded SMP (request or response); a NamedTuple because it is built per MAD."""

    mgmt_class: int
    method: int
    status: int  # for DR SMPs without the direction bit
    tid: int
    attr_id: int
    attr_mod: int
    data: bytes  # the 64 bytes of attribute data

    @property
    def is_response(self) -> bool:
        return bool(self.method & RESPONSE_BIT)


def encode_smp(
    *,
    method: int,
    attr_id: int,
    attr_mod: int,
    tid: int,
    route: Route,
    data: bytes = b"",
    m_key: int = 0,
) -> bytes:
    """A 256-byte SMP request for ``route`` (a DrPath, or a LID for LID routing)."""
    if len(data) > SMP_DATA_SIZE:
        raise ValueError(f"SMP data is at most {SMP_DATA_SIZE} bytes, got {len(data)}")
    if not 0 <= tid < 2**64 or not 0 <= attr_mod < 2**32 or not 0 <= attr_id < 2**16:
        raise ValueError("tid, attribute id or modifier out of range")
    # One struct.pack per MAD (the "s" fields zero-pad): this is on the hot path.
    if isinstance(route, DrPath):
        # Hop pointer 0 and D=0 on the way out; DrSLID/DrDLID permissive means
        # the whole route is directed (no LID-routed part at either end).
        return _DR_SMP.pack(
            BASE_VERSION, MGMT_CLASS_SMI_DR, CLASS_VERSION, method, 0, 0, len(route.ports),
            tid, attr_id, 0, attr_mod, m_key, PERMISSIVE_LID, PERMISSIVE_LID,
            data, bytes((0, *route.ports)),
        )  # fmt: skip
    if not 0 < route < PERMISSIVE_LID:
        raise ValueError(f"LID {route} is not a unicast LID")
    return _LID_SMP.pack(
        BASE_VERSION, MGMT_CLASS_SMI, CLASS_VERSION, method, 0, 0, 0,
        tid, attr_id, 0, attr_mod, m_key, data,
    )  # fmt: skip


def route_dlid(route: Route) -> int:
    """The destination LID the MAD is addressed to (permissive for directed routes)."""
    return PERMISSIVE_LID if isinstance(route, DrPath) else route


def decode_smp(mad: bytes) -> Smp:
    if len(mad) < MAD_SIZE:
        raise SmpDecodeError(f"MAD is {len(mad)} bytes, expected {MAD_SIZE}")
    base, mgmt_class, _cv, method, status, _hp, _hc, tid, attr_id, _r, attr_mod, _mk = (
        _HEADER.unpack_from(mad, 0)
    )
    if base != BASE_VERSION or mgmt_class not in (MGMT_CLASS_SMI, MGMT_CLASS_SMI_DR):
        raise SmpDecodeError(f"not an SMP: base version {base}, class {mgmt_class:#x}")
    if mgmt_class == MGMT_CLASS_SMI_DR:
        status &= DR_STATUS_MASK
    data = bytes(mad[SMP_DATA_OFFSET : SMP_DATA_OFFSET + SMP_DATA_SIZE])
    return Smp(mgmt_class, method, status, tid, attr_id, attr_mod, data)


def peek_tid(mad: bytes) -> int:
    """The transaction id of a MAD without decoding the rest (hot receive path)."""
    return int.from_bytes(mad[8:16], "big")


def pkey_attr_mod(block: int, switch_port: int | None = None) -> int:
    """P_KeyTable attribute modifier: block number, switch port in the upper 16 bits."""
    if not 0 <= block <= 0x7FF:  # 2048 blocks of 32 = the 65536-entry maximum
        raise ValueError(f"PKey block {block} out of range")
    if switch_port is None:
        return block
    if not 0 <= switch_port <= 254:
        raise ValueError(f"switch port {switch_port} out of range")
    return (switch_port << 16) | block


def pkey_blocks(partition_cap: int) -> int:
    """How many 32-entry blocks hold a table of ``partition_cap`` entries."""
    return -(-partition_cap // PKEYS_PER_BLOCK)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_type: NodeType
    num_ports: int
    system_image_guid: int
    node_guid: int
    port_guid: int
    partition_cap: int
    device_id: int
    revision: int
    local_port_num: int
    vendor_id: int


def parse_node_info(data: bytes) -> NodeInfo:
    (
        _bv,
        _cv,
        node_type,
        num_ports,
        sys_guid,
        node_guid,
        port_guid,
        partition_cap,
        device_id,
        revision,
        local_port,
        vendor,
    ) = _NODE_INFO.unpack_from(data, 0)
    return NodeInfo(
        node_type=NodeType.from_wire(node_type),
        num_ports=num_ports,
        system_image_guid=sys_guid,
        node_guid=node_guid,
        port_guid=port_guid,
        partition_cap=partition_cap,
        device_id=device_id,
        revision=revision,
        local_port_num=local_port,
        vendor_id=int.from_bytes(vendor, "big"),
    )


@dataclass(frozen=True, slots=True)
class PortInfo:
    lid: int
    master_sm_lid: int
    capability_mask: int
    local_port_num: int
    state: PortState
    phys_state: int
    lmc: int


def parse_port_info(data: bytes) -> PortInfo:
    lid, sm_lid, capmask = struct.unpack_from(">HHI", data, 16)
    return PortInfo(
        lid=lid,
        master_sm_lid=sm_lid,
        capability_mask=capmask,
        local_port_num=data[28],
        state=PortState.from_wire(data[32] & 0x0F),  # low nibble; high is LinkSpeedSupported
        phys_state=data[33] >> 4,
        lmc=data[34] & 0x07,
    )


@dataclass(frozen=True, slots=True)
class SwitchInfo:
    linear_fdb_cap: int
    linear_fdb_top: int
    partition_enforcement_cap: int


def parse_switch_info(data: bytes) -> SwitchInfo:
    lin_cap, _rnd, _mc, lin_top, _dp, _dmp, _dmnp, _flags, _lpp, enf_cap = _SWITCH_INFO.unpack_from(
        data, 0
    )
    return SwitchInfo(lin_cap, lin_top, enf_cap)


def parse_node_desc(data: bytes) -> str:
    return data[:SMP_DATA_SIZE].split(b"\0", 1)[0].decode("utf-8", errors="replace")


def parse_pkey_block(data: bytes) -> tuple[int, ...]:
    return tuple(_PKEY_BLOCK.unpack_from(data, 0))


def encode_pkey_block(entries: Sequence[int]) -> bytes:
    """32 raw entries (shorter input is zero-padded) as P_KeyTable attribute data."""
    if len(entries) > PKEYS_PER_BLOCK:
        raise ValueError(f"a PKey block holds {PKEYS_PER_BLOCK} entries, got {len(entries)}")
    if any(not 0 <= e <= 0xFFFF for e in entries):
        raise ValueError("PKey entries must be 16-bit values")
    padded = [*entries, *([0] * (PKEYS_PER_BLOCK - len(entries)))]
    return _PKEY_BLOCK.pack(*padded)
