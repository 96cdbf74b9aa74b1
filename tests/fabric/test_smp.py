"""SMP encoding/decoding and the result model: pure, no simulator."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from pkeyd.fabric import smp
from pkeyd.fabric.model import (
    FabricPort,
    FabricSnapshot,
    MadStats,
    NodeType,
    PortState,
    ReadFailure,
)
from pkeyd.fabric.smp import DrPath


def test_directed_route_request_layout() -> None:
    mad = smp.encode_smp(
        method=smp.METHOD_GET,
        attr_id=smp.ATTR_PKEY_TABLE,
        attr_mod=smp.pkey_attr_mod(1, 17),
        tid=0x0102030405060708,
        route=DrPath((1, 17, 3)),
        m_key=0xAABB,
    )
    assert len(mad) == smp.MAD_SIZE
    # base version, class (DR), class version, method
    assert mad[:4] == bytes([1, 0x81, 1, 0x01])
    assert mad[4:6] == b"\0\0"  # D bit 0 and status 0 on the way out
    assert (mad[6], mad[7]) == (0, 3)  # hop pointer, hop count
    assert mad[8:16] == bytes(range(1, 9))
    assert struct.unpack_from(">HHI", mad, 16) == (0x0016, 0, (17 << 16) | 1)
    assert struct.unpack_from(">Q", mad, 24) == (0xAABB,)
    assert struct.unpack_from(">HH", mad, 32) == (0xFFFF, 0xFFFF)  # DrSLID, DrDLID
    assert mad[128:132] == bytes([0, 1, 17, 3])  # initial path; byte 0 unused
    assert mad[132:] == bytes(smp.MAD_SIZE - 132)
    assert smp.route_dlid(DrPath((1,))) == smp.PERMISSIVE_LID


def test_lid_routed_request_layout() -> None:
    data = smp.encode_pkey_block([0xFFFF, 0x8A12])
    mad = smp.encode_smp(
        method=smp.METHOD_SET, attr_id=smp.ATTR_PKEY_TABLE, attr_mod=0, tid=7, route=42, data=data
    )
    assert mad[:4] == bytes([1, 0x01, 1, 0x02])
    assert mad[6:8] == b"\0\0"  # no hop fields
    assert mad[32:64] == bytes(32)
    assert mad[64:128] == data
    assert mad[128:] == bytes(128)  # no path
    assert smp.route_dlid(42) == 42


@pytest.mark.parametrize("lid", [0, 0xFFFF, -1])
def test_lid_route_must_be_unicast(lid: int) -> None:
    with pytest.raises(ValueError, match="unicast"):
        smp.encode_smp(method=1, attr_id=0x11, attr_mod=0, tid=1, route=lid)


def test_request_argument_checks() -> None:
    with pytest.raises(ValueError, match="at most 64"):
        smp.encode_smp(method=1, attr_id=0x11, attr_mod=0, tid=1, route=DrPath(), data=bytes(65))
    with pytest.raises(ValueError, match="out of range"):
        smp.encode_smp(method=1, attr_id=0x11, attr_mod=2**32, tid=1, route=DrPath())
    with pytest.raises(ValueError, match="longer than 63"):
        DrPath(tuple([1] * 64))
    with pytest.raises(ValueError, match=r"0\.\.255"):
        DrPath((256,))


def test_dr_path_notation_and_extend() -> None:
    assert str(DrPath()) == "0"
    assert str(DrPath((1,)).extend(17)) == "0,1,17"
    assert DrPath((1,)).extend(2) == DrPath((1, 2))


def _response(request: bytes, *, status: int = 0, data: bytes = b"") -> bytes:
    out = bytearray(request)
    out[3] = smp.METHOD_GET_RESP
    direction = smp.DR_DIRECTION_BIT if request[1] == smp.MGMT_CLASS_SMI_DR else 0
    out[4:6] = (status | direction).to_bytes(2, "big")
    out[64 : 64 + len(data)] = data
    return bytes(out)


def test_decode_masks_the_direction_bit_of_dr_responses() -> None:
    request = smp.encode_smp(
        method=smp.METHOD_GET, attr_id=smp.ATTR_NODE_INFO, attr_mod=0, tid=9, route=DrPath((1,))
    )
    answer = smp.decode_smp(_response(request, data=b"\x01\x02"))
    assert answer.is_response
    assert (answer.status, answer.tid, answer.attr_id) == (0, 9, smp.ATTR_NODE_INFO)
    assert answer.data[:2] == b"\x01\x02"
    assert len(answer.data) == smp.SMP_DATA_SIZE
    assert smp.decode_smp(_response(request, status=0x1C)).status == 0x1C


def test_decode_keeps_the_full_status_of_lid_routed_responses() -> None:
    request = smp.encode_smp(method=smp.METHOD_GET, attr_id=0x15, attr_mod=1, tid=3, route=5)
    assert smp.decode_smp(_response(request, status=0x8004)).status == 0x8004
    assert not smp.decode_smp(request).is_response


def test_decode_rejects_what_is_not_an_smp() -> None:
    with pytest.raises(smp.SmpDecodeError, match="256"):
        smp.decode_smp(bytes(100))
    sa_mad = bytearray(256)
    sa_mad[0:3] = bytes([1, 0x03, 2])  # SubnAdm
    with pytest.raises(smp.SmpDecodeError, match="not an SMP"):
        smp.decode_smp(bytes(sa_mad))


def test_parse_node_info() -> None:
    data = struct.pack(
        ">BBBBQQQHHIB3s", 1, 1, 1, 2, 0x11, 0x0002C90300000100, 0x0002C90300000102, 64,
        0x1017, 0xA1, 2, b"\x00\x02\xc9",
    )  # fmt: skip
    info = smp.parse_node_info(data.ljust(64, b"\0"))
    assert info.node_type is NodeType.CA
    assert (info.num_ports, info.partition_cap, info.local_port_num) == (2, 64, 2)
    assert (info.node_guid, info.port_guid) == (0x0002C90300000100, 0x0002C90300000102)
    assert (info.system_image_guid, info.device_id, info.revision) == (0x11, 0x1017, 0xA1)
    assert info.vendor_id == 0x0002C9
    assert smp.parse_node_info(bytes([1, 1, 9]).ljust(64, b"\0")).node_type is NodeType.UNKNOWN


def test_parse_port_info_fields_share_bytes() -> None:
    data = bytearray(64)
    struct.pack_into(">HHI", data, 16, 0x1234, 1, 0x0251_0A6A)
    data[28] = 3  # local port number
    data[32] = 0x34  # LinkSpeedSupported 3 | PortState ACTIVE (4)
    data[33] = 0x52  # PortPhysicalState LinkUp (5) | LinkDownDefaultState 2
    data[34] = 0xC2  # M_KeyProtectBits 3 | LMC 2
    info = smp.parse_port_info(bytes(data))
    assert (info.lid, info.master_sm_lid, info.capability_mask) == (0x1234, 1, 0x02510A6A)
    assert (info.local_port_num, info.state, info.phys_state, info.lmc) == (
        3,
        PortState.ACTIVE,
        5,
        2,
    )
    data[32] = 0x21
    assert smp.parse_port_info(bytes(data)).state is PortState.DOWN


def test_parse_switch_info_and_node_desc() -> None:
    data = struct.pack(">HHHHBBBBHH", 0xC000, 0, 0x400, 18, 0, 0, 0, 0, 1, 64)
    info = smp.parse_switch_info(data.ljust(64, b"\0"))
    assert (info.linear_fdb_cap, info.linear_fdb_top, info.partition_enforcement_cap) == (
        0xC000,
        18,
        64,
    )
    assert smp.parse_node_desc(b"hca-0003 mlx5_0\0garbage".ljust(64, b"\0")) == "hca-0003 mlx5_0"
    assert smp.parse_node_desc(b"x" * 64) == "x" * 64  # no terminator when full


def test_pkey_block_roundtrip_and_padding() -> None:
    block = smp.encode_pkey_block([0xFFFF, 0x8A12, 0x0A13])
    assert len(block) == 64
    assert block[:6] == b"\xff\xff\x8a\x12\x0a\x13"  # big-endian on the wire
    assert smp.parse_pkey_block(block) == (0xFFFF, 0x8A12, 0x0A13, *[0] * 29)
    with pytest.raises(ValueError, match="32 entries"):
        smp.encode_pkey_block([1] * 33)
    with pytest.raises(ValueError, match="16-bit"):
        smp.encode_pkey_block([0x10000])


def test_pkey_attribute_modifier_and_blocks() -> None:
    assert smp.pkey_attr_mod(3) == 3
    assert smp.pkey_attr_mod(1, switch_port=5) == 0x0005_0001
    assert smp.pkey_attr_mod(0, switch_port=0) == 0
    with pytest.raises(ValueError, match="block"):
        smp.pkey_attr_mod(0x800)
    with pytest.raises(ValueError, match="switch port"):
        smp.pkey_attr_mod(0, switch_port=255)
    assert [smp.pkey_blocks(n) for n in (8, 32, 33, 64, 128)] == [1, 1, 2, 2, 4]


def _port(pkeys: tuple[int, ...]) -> FabricPort:
    return FabricPort(
        node_guid=0x100,
        port_guid=0x101,
        port_num=1,
        node_type=NodeType.CA,
        node_desc="hca-0001",
        lid=4,
        state=PortState.ACTIVE,
        partition_cap=len(pkeys),
        pkeys=pkeys,
    )


def test_fabric_port_membership() -> None:
    port = _port((0xFFFF, 0, 0x8A12, 0x0A13, 0, 0x0B01, 0x8B01, 0))
    assert port.members == (0xFFFF, 0x8A12, 0x0A13, 0x0B01, 0x8B01)
    assert port.membership(0x0A12) == "full"
    assert port.membership(0x8A13) == "limited"  # the bit of the query is ignored
    assert port.membership(0x0B01) == "full"  # both entries: full wins
    assert port.membership(0x0C00) is None
    with pytest.raises(ValueError, match="16-bit"):
        port.membership(0x10000)


def test_snapshot_json_roundtrip_and_lookup() -> None:
    ca = _port((0xFFFF, 0x8A12, 0, 0))
    switch = FabricPort(0x200, 0x200, 0, NodeType.SWITCH, "leaf", 2, PortState.ACTIVE, 8, (0xFFFF,))
    failure = ReadFailure("end_port", "SMP timed out", node_guid=0x300, port_num=1)
    snap = FabricSnapshot(
        ports=(ca, switch),
        read_at=datetime(2024, 5, 1, tzinfo=UTC),
        duration_s=0.05,
        mad_stats=MadStats(sent=10, received=9, timeouts=1, retries=1),
        failures=(failure,),
    )
    again = FabricSnapshot.from_json(snap.to_json())
    assert again == snap
    assert again.port(0x101) == ca
    assert again.port(0x999) is None
    assert again.ca_ports() == (ca,)
    assert again.pkey_tables() == {0x101: [0xFFFF, 0x8A12]}
    assert snap.to_json()["ports"][0]["pkeys"] == ["0xffff", "0x8a12", "0x0000", "0x0000"]


def test_mad_stats_difference_keeps_the_peak() -> None:
    later = MadStats(sent=30, received=25, timeouts=5, retries=4, failed=1, max_in_flight=16)
    earlier = MadStats(sent=10, received=10, max_in_flight=8)
    diff = later - earlier
    assert (diff.sent, diff.received, diff.timeouts, diff.retries, diff.failed) == (20, 15, 5, 4, 1)
    assert diff.max_in_flight == 16
    assert MadStats.from_json(later.to_json()) == later
