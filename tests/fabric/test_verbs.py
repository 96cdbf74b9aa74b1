"""The pyverbs reader: the real module where it runs, a fake Context for the table logic."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from pkeyd.fabric import verbs
from pkeyd.fabric.model import FabricError, FabricPort, NodeType, PortState
from pkeyd.fabric.verbs import NoVerbsDevicesError, VerbsApi, VerbsDevice


class FakeVerbsError(Exception):
    """Stands in for pyverbs.pyverbs_error.PyverbsError."""


def _wire(pkey: int) -> int:
    # What pyverbs hands back: ibv_query_pkey's __be16, read as a native uint16.
    return int.from_bytes(pkey.to_bytes(2, "big"), sys.byteorder)


@dataclass
class FakePort:
    guid: int
    lid: int
    state: int = 4
    link_layer: int = 1
    pkeys: list[int] = field(default_factory=lambda: [0xFFFF] + [0] * 127)


@dataclass
class FakeContext:
    ports: dict[int, FakePort]
    fail_on_port: int | None = None
    closed: bool = False

    def query_device(self) -> Any:
        return SimpleNamespace(phys_port_cnt=len(self.ports))

    def query_port(self, port_num: int) -> Any:
        if port_num == self.fail_on_port:
            raise FakeVerbsError(f"Failed to query port {port_num}")
        p = self.ports[port_num]
        return SimpleNamespace(
            state=p.state, lid=p.lid, pkey_tbl_len=len(p.pkeys), link_layer=p.link_layer
        )

    def query_gid(self, port_num: int, index: int) -> Any:
        assert index == 0
        guid = f"{self.ports[port_num].guid:016x}"
        groups = ["fe80", "0000", "0000", "0000"] + [guid[i : i + 4] for i in range(0, 16, 4)]
        return SimpleNamespace(gid=":".join(groups))

    def query_pkey(self, port_num: int, index: int) -> int:
        return _wire(self.ports[port_num].pkeys[index])

    def close(self) -> None:
        self.closed = True


def _api(contexts: dict[str, FakeContext], devices: list[VerbsDevice] | None = None) -> VerbsApi:
    if devices is None:  # node GUIDs 0x...0100, 0x...0200, ... in the order given
        devices = [
            VerbsDevice(name, 0x0002C90300000100 + 0x100 * i, 1) for i, name in enumerate(contexts)
        ]
    listed = devices

    def open_context(name: str) -> FakeContext:
        if name not in contexts:
            raise FakeVerbsError(f"Failed to find device {name}")
        return contexts[name]

    return VerbsApi(lambda: listed, open_context, (FakeVerbsError,))


def test_reads_every_infiniband_port_with_its_whole_table() -> None:
    table = [0xFFFF, 0x8A12, 0x0A13] + [0] * 125
    mlx0 = FakeContext(
        {
            1: FakePort(guid=0x0002C90300000101, lid=4, pkeys=table),
            2: FakePort(guid=0x0002C90300000102, lid=0, link_layer=2),  # RoCE: skipped
        }
    )
    mlx1 = FakeContext({1: FakePort(guid=0x0002C90300000201, lid=0, state=1, pkeys=[0xFFFF] * 64)})
    ports = verbs.read_local_ports(_api({"mlx5_0": mlx0, "mlx5_1": mlx1}))

    assert ports == (
        FabricPort(
            node_guid=0x0002C90300000100,
            port_guid=0x0002C90300000101,
            port_num=1,
            node_type=NodeType.CA,
            node_desc="mlx5_0",
            lid=4,
            state=PortState.ACTIVE,
            partition_cap=128,
            pkeys=tuple(table),
        ),
        FabricPort(
            node_guid=0x0002C90300000200,
            port_guid=0x0002C90300000201,
            port_num=1,
            node_type=NodeType.CA,
            node_desc="mlx5_1",
            lid=0,
            state=PortState.DOWN,
            partition_cap=64,
            pkeys=(0xFFFF,) * 64,
        ),
    )
    assert ports[0].membership(0x0A12) == "full"  # byte order undone: 0x128a would be wrong
    assert ports[0].membership(0x0A13) == "limited"
    assert mlx0.closed
    assert mlx1.closed


def test_no_devices_is_a_specific_error() -> None:
    with pytest.raises(NoVerbsDevicesError, match="no verbs devices") as caught:
        verbs.read_local_ports(_api({}, devices=[]))
    assert caught.value.code == "no_verbs_devices"
    assert caught.value.status == 503

    def failing_list() -> list[VerbsDevice]:
        raise FakeVerbsError("Failed to get devices list")

    api = VerbsApi(failing_list, lambda name: FakeContext({}), (FakeVerbsError,))
    with pytest.raises(NoVerbsDevicesError, match="Failed to get devices list"):
        verbs.read_local_ports(api)


def test_device_failing_mid_read_is_a_fabric_error_and_closes_the_context() -> None:
    ctx = FakeContext({1: FakePort(0x1, 1), 2: FakePort(0x2, 2)}, fail_on_port=2)
    with pytest.raises(FabricError, match="mlx5_0 failed: Failed to query port 2"):
        verbs.read_local_ports(_api({"mlx5_0": ctx}))
    assert ctx.closed
    vanished = [VerbsDevice("mlx5_9", 0x9, 1)]
    with pytest.raises(FabricError, match="cannot open verbs device mlx5_9"):
        verbs.read_local_ports(_api({}, devices=vanished))


def test_missing_pyverbs_is_reported_not_raised_as_import_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.import_module

    def no_pyverbs(name: str, package: str | None = None) -> Any:
        if name.startswith("pyverbs"):
            raise ImportError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", no_pyverbs)
    with pytest.raises(NoVerbsDevicesError, match="pyverbs is not installed"):
        verbs.read_local_ports()


def test_gid_interface_id() -> None:
    assert verbs.gid_interface_id("fe80:0000:0000:0000:0002:c903:0000:0701") == 0x2C90300000701
    assert verbs.gid_interface_id("fe80::0:0:2:c903:0:701".replace("::", ":0:")) == 0x2C90300000701
    with pytest.raises(ValueError, match="not a GID"):
        verbs.gid_interface_id("fe80::1")


def test_real_pyverbs_reports_no_devices_cleanly() -> None:
    """Against the installed python3-pyverbs: no RDMA device here, so a clean error."""
    device = pytest.importorskip("pyverbs.device", reason="python3-pyverbs not installed")
    try:
        has_devices = bool(device.get_device_list())
    except Exception:  # PyverbsRDMAError("Failed to get devices list") without devices
        has_devices = False
    if not has_devices:
        with pytest.raises(NoVerbsDevicesError, match="no verbs devices"):
            verbs.read_local_ports()
        return
    # A host with real HCAs: the same shape as the SMP reader's result.
    for port in verbs.read_local_ports():
        assert len(port.pkeys) == port.partition_cap
        assert port.node_desc
