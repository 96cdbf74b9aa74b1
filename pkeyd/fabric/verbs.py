"""PKey tables of this host's own HCA ports, through pyverbs (rdma-core's Python binding).

The kernel keeps a copy of each local port's PKey table (updated on every
PKey change event); libibverbs reads it from sysfs. This reader needs no SMI
access and no M_Key, but sees only local ports. Its result has the same shape
as the SMP reader's (``FabricPort``), with the device name (``mlx5_0``) as
``node_desc`` since verbs does not expose the NodeDescription.

pyverbs is a Debian system package (python3-pyverbs), imported lazily so that
pkeyd runs - and reports "no verbs devices" - on hosts without it. Byte order
is the trap here: ``Device.guid`` comes back in host order, but
``ibv_query_pkey`` returns the entry in network order and pyverbs passes the
raw ``__be16`` on, so entries are byte-swapped on little-endian hosts.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pkeyd.fabric.model import FabricError, FabricPort, NodeType, PortState

IBV_LINK_LAYER_UNSPECIFIED, IBV_LINK_LAYER_INFINIBAND = 0, 1


class NoVerbsDevicesError(FabricError):
    """pyverbs is missing, or it lists no RDMA device on this host."""

    code = "no_verbs_devices"


class VerbsContext(Protocol):
    """The part of ``pyverbs.device.Context`` this reader uses."""

    def query_device(self) -> Any: ...
    def query_port(self, port_num: int) -> Any: ...
    def query_gid(self, port_num: int, index: int) -> Any: ...
    def query_pkey(self, port_num: int, index: int) -> int: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class VerbsDevice:
    """What ``get_device_list`` tells about one device, before opening it."""

    name: str
    node_guid: int  # host byte order
    node_type: int


@dataclass(frozen=True, slots=True)
class VerbsApi:
    """Entry points of pyverbs; tests pass fakes with the same behaviour."""

    list_devices: Callable[[], list[VerbsDevice]]
    open_context: Callable[[str], VerbsContext]
    errors: tuple[type[BaseException], ...]  # what pyverbs raises for RDMA failures


def _be16(value: int) -> int:
    """A raw __be16 read as a native integer, back to its numeric value."""
    return int.from_bytes(value.to_bytes(2, sys.byteorder), "big")


def gid_interface_id(gid: str) -> int:
    """The port GUID in a GID string ``fe80:0000:0000:0000:0002:c903:0000:0701``."""
    groups = gid.split(":")
    if len(groups) != 8:
        raise ValueError(f"not a GID: {gid!r}")
    return int("".join(g.zfill(4) for g in groups[4:]), 16)


def pyverbs_api() -> VerbsApi:
    """The real pyverbs, imported on first use; NoVerbsDevicesError if absent."""
    try:
        device = importlib.import_module("pyverbs.device")
        errors_mod = importlib.import_module("pyverbs.pyverbs_error")
    except (ImportError, OSError) as exc:  # OSError: libibverbs itself missing
        raise NoVerbsDevicesError(f"pyverbs is not installed (python3-pyverbs): {exc}") from exc

    def list_devices() -> list[VerbsDevice]:
        return [
            VerbsDevice(
                name=d.name.decode() if isinstance(d.name, bytes) else str(d.name),
                node_guid=int(d.guid),
                node_type=int(d.node_type),
            )
            for d in device.get_device_list()
        ]

    def open_context(name: str) -> VerbsContext:
        context: VerbsContext = device.Context(name=name)
        return context

    return VerbsApi(list_devices, open_context, (errors_mod.PyverbsError,))


def read_local_ports(api: VerbsApi | None = None) -> tuple[FabricPort, ...]:
    """Every InfiniBand port of every local device with its full PKey table.

    Blocking (sysfs reads): call through ``asyncio.to_thread`` from a loop.
    Raises NoVerbsDevicesError when there is no device to read (pyverbs
    missing, ``get_device_list`` failing - as it does without any RDMA
    device - or an empty list), FabricError when a device fails mid-read.
    """
    api = api or pyverbs_api()
    try:
        devices = api.list_devices()
    except api.errors as exc:
        raise NoVerbsDevicesError(f"no verbs devices: {exc}") from exc
    if not devices:
        raise NoVerbsDevicesError("no verbs devices")
    ports: list[FabricPort] = []
    for dev in devices:
        ports.extend(_read_device(api, dev))
    return tuple(ports)


def _read_device(api: VerbsApi, dev: VerbsDevice) -> Iterable[FabricPort]:
    try:
        context = api.open_context(dev.name)
    except api.errors as exc:
        raise FabricError(f"cannot open verbs device {dev.name}: {exc}") from exc
    try:
        port_count = int(context.query_device().phys_port_cnt)
        ports = []
        for port_num in range(1, port_count + 1):  # verbs ports are 1-based
            port = _read_port(context, dev, port_num)
            if port is not None:
                ports.append(port)
        return ports
    except api.errors as exc:
        raise FabricError(f"reading verbs device {dev.name} failed: {exc}") from exc
    finally:
        context.close()


def _read_port(context: VerbsContext, dev: VerbsDevice, port_num: int) -> FabricPort | None:
    attr = context.query_port(port_num)
    if int(attr.link_layer) not in (IBV_LINK_LAYER_UNSPECIFIED, IBV_LINK_LAYER_INFINIBAND):
        return None  # RoCE: no partitions to program, the table is a stub
    cap = int(attr.pkey_tbl_len)
    return FabricPort(
        node_guid=dev.node_guid,
        port_guid=gid_interface_id(str(context.query_gid(port_num, 0).gid)),
        port_num=port_num,
        node_type=NodeType.from_wire(dev.node_type),
        node_desc=dev.name,
        lid=int(attr.lid),
        state=PortState.from_wire(int(attr.state)),
        partition_cap=cap,
        pkeys=tuple(_be16(context.query_pkey(port_num, i)) for i in range(cap)),
    )
