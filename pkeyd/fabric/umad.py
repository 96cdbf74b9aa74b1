"""ctypes bindings to libibumad (rdma-core) and a MAD transport for the asyncio reader.

Only the calls the SMP reader needs are bound; struct layouts follow
<infiniband/umad.h> (ib_user_mad ABI 5) and are checked against umad_size().

Why a receive thread instead of ``loop.add_reader(umad_get_fd(...))``: under
the simulator, libumad2sim.so hands out *fake* descriptors (1024 + n) that
exist only inside its own read/write/poll wrappers. epoll (what asyncio uses)
goes straight to the kernel, which answers EBADF for such a number - or, worse,
silently watches an unrelated real descriptor 1024 if the process has one
(RLIMIT_NOFILE is often far above 1024). libumad2sim's poll() wrapper only
works for one umad descriptor and nothing else in the same call, so it cannot
be mixed with a wake-up pipe either. A thread blocked in umad_recv() (which
polls through whatever libc/preload provides, with the GIL released by ctypes)
works unchanged on the simulator and on a real /dev/infiniband/umadN, so it is
the single code path; it hands MADs to the loop in batches.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pkeyd.fabric.engine import Batch
from pkeyd.fabric.model import FabricError, NodeType, PortState
from pkeyd.fabric.smp import MAD_SIZE, MGMT_CLASS_SMI, MGMT_CLASS_SMI_DR, PERMISSIVE_LID

LIBRARY = "libibumad.so.3"
CA_NAME_LEN = 20  # UMAD_CA_NAME_LEN
CA_MAX_PORTS = 10  # UMAD_CA_MAX_PORTS
MAX_CAS = 32
SMI_CLASS_VERSION = 1
# How long the receive thread blocks per umad_recv(): bounds how late it sees
# the stop flag, i.e. how long close() can take.
RECV_POLL_MS = 50
# A real fd is never this high under the default RLIMIT_NOFILE soft limit;
# umad2sim numbers its fake descriptors from here.
UMAD2SIM_FD_BASE = 1024


class UmadError(FabricError):
    """libibumad is missing, finds no port, or a call into it failed."""

    code = "umad_unavailable"


class _MadAddr(ctypes.Structure):
    _fields_ = (
        ("qpn", ctypes.c_uint32),  # network order
        ("qkey", ctypes.c_uint32),  # network order
        ("lid", ctypes.c_uint16),  # network order
        ("sl", ctypes.c_uint8),
        ("path_bits", ctypes.c_uint8),
        ("grh_present", ctypes.c_uint8),
        ("gid_index", ctypes.c_uint8),
        ("hop_limit", ctypes.c_uint8),
        ("traffic_class", ctypes.c_uint8),
        ("gid", ctypes.c_uint8 * 16),
        ("flow_label", ctypes.c_uint32),
        ("pkey_index", ctypes.c_uint16),
        ("reserved", ctypes.c_uint8 * 6),
    )


class _UserMad(ctypes.Structure):
    """struct ib_user_mad without the flexible data[] member."""

    _fields_ = (
        ("agent_id", ctypes.c_uint32),
        ("status", ctypes.c_uint32),
        ("timeout_ms", ctypes.c_uint32),
        ("retries", ctypes.c_uint32),
        ("length", ctypes.c_uint32),
        ("addr", _MadAddr),
    )


class _UmadPort(ctypes.Structure):
    _fields_ = (
        ("ca_name", ctypes.c_char * CA_NAME_LEN),
        ("portnum", ctypes.c_int),
        ("base_lid", ctypes.c_uint),
        ("lmc", ctypes.c_uint),
        ("sm_lid", ctypes.c_uint),
        ("sm_sl", ctypes.c_uint),
        ("state", ctypes.c_uint),
        ("phys_state", ctypes.c_uint),
        ("rate", ctypes.c_uint),
        ("capmask", ctypes.c_uint32),  # network order
        ("gid_prefix", ctypes.c_uint64),  # network order
        ("port_guid", ctypes.c_uint64),  # network order
        ("pkeys_size", ctypes.c_uint),
        ("pkeys", ctypes.POINTER(ctypes.c_uint16)),
        ("link_layer", ctypes.c_char * CA_NAME_LEN),
    )


class _UmadCa(ctypes.Structure):
    _fields_ = (
        ("ca_name", ctypes.c_char * CA_NAME_LEN),
        ("node_type", ctypes.c_uint),
        ("numports", ctypes.c_int),
        ("fw_ver", ctypes.c_char * 20),
        ("ca_type", ctypes.c_char * 40),
        ("hw_ver", ctypes.c_char * 20),
        ("node_guid", ctypes.c_uint64),  # network order
        ("system_guid", ctypes.c_uint64),  # network order
        ("ports", ctypes.POINTER(_UmadPort) * CA_MAX_PORTS),
    )


HEADER_SIZE = ctypes.sizeof(_UserMad)
# The x86-64/aarch64 ABI sizes of the C structs; a mismatch would corrupt memory.
assert HEADER_SIZE == 64, "ib_user_mad layout drifted from the ABI"
assert ctypes.sizeof(_UmadPort) == 112, "umad_port_t layout drifted"
assert ctypes.sizeof(_UmadCa) == 208, "umad_ca_t layout drifted"


def _be64(value: int) -> int:
    return int.from_bytes(value.to_bytes(8, "little"), "big")


def _htons(value: int) -> int:
    return int.from_bytes(value.to_bytes(2, "big"), "little")


@dataclass(frozen=True, slots=True)
class LocalPort:
    """The HCA port the reader sends from, as libibumad sees it (sysfs)."""

    ca_name: str
    port_num: int
    node_guid: int
    port_guid: int
    node_type: NodeType
    lid: int
    state: PortState


class Libumad:
    """The bound library. Loading it is cheap; it talks to nothing until used.

    Two handles on the same library: ``lib`` (ctypes.CDLL) releases the GIL
    during a call, which every call that may wait needs; ``lib_gil``
    (ctypes.PyDLL) keeps it, for the receive thread's non-blocking drain.
    Releasing the GIL for each MAD drained handed it to the event loop and
    left the thread waiting up to the 5 ms switch interval to get it back:
    a 256-HCA pass took 600 ms that way instead of 65 ms.
    """

    def __init__(self, path: str = LIBRARY) -> None:
        try:
            lib = ctypes.CDLL(path, use_errno=True)
            lib_gil = ctypes.PyDLL(path, use_errno=True)
        except OSError as exc:
            found = ctypes.util.find_library("ibumad")
            raise UmadError(f"cannot load {path} (rdma-core libibumad3): {exc}; {found=}") from exc
        c_int, c_char_p, c_void_p = ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p
        sigs: dict[str, tuple[list[type], type | None]] = {
            "umad_init": ([], c_int),
            "umad_size": ([], ctypes.c_size_t),
            "umad_get_cas_names": ([c_void_p, c_int], c_int),
            "umad_get_ca": ([c_char_p, ctypes.POINTER(_UmadCa)], c_int),
            "umad_release_ca": ([ctypes.POINTER(_UmadCa)], c_int),
            "umad_open_port": ([c_char_p, c_int], c_int),
            "umad_close_port": ([c_int], c_int),
            "umad_get_fd": ([c_int], c_int),
            "umad_register": ([c_int, c_int, c_int, ctypes.c_uint8, c_void_p], c_int),
            "umad_unregister": ([c_int, c_int], c_int),
            "umad_send": ([c_int, c_int, c_void_p, c_int, c_int, c_int], c_int),
            "umad_recv": ([c_int, c_void_p, ctypes.POINTER(c_int), c_int], c_int),
        }
        for handle in (lib, lib_gil):
            for name, (argtypes, restype) in sigs.items():
                fn = getattr(handle, name)
                fn.argtypes = argtypes
                fn.restype = restype
        self.lib = lib
        self.lib_gil = lib_gil
        if lib.umad_init() < 0:
            raise UmadError("umad_init failed")

    def ca_names(self) -> list[str]:
        buf = (ctypes.c_char * CA_NAME_LEN * MAX_CAS)()
        n = self.lib.umad_get_cas_names(buf, MAX_CAS)
        if n < 0:
            raise UmadError(f"umad_get_cas_names failed ({n})")
        return [bytes(buf[i]).split(b"\0", 1)[0].decode() for i in range(n)]

    def local_ports(self) -> list[LocalPort]:
        """Every port of every CA that libibumad lists, in CA then port order."""
        ports: list[LocalPort] = []
        for name in self.ca_names():
            ca = _UmadCa()
            if self.lib.umad_get_ca(name.encode(), ctypes.byref(ca)) < 0:
                continue  # vanished or unreadable: try the next CA
            try:
                for i in range(min(ca.numports + 1, CA_MAX_PORTS)):
                    p = ca.ports[i]
                    if not p:
                        continue
                    port = p.contents
                    ports.append(
                        LocalPort(
                            ca_name=name,
                            port_num=port.portnum,
                            node_guid=_be64(ca.node_guid),
                            port_guid=_be64(port.port_guid),
                            node_type=NodeType.from_wire(ca.node_type),
                            lid=port.base_lid,
                            state=PortState.from_wire(port.state),
                        )
                    )
            finally:
                self.lib.umad_release_ca(ctypes.byref(ca))
        return ports

    def find_port(self, ca_name: str | None = None, port_num: int | None = None) -> LocalPort:
        """The requested port, else the first ACTIVE one, else the first with a link."""
        candidates = [
            p
            for p in self.local_ports()
            if (ca_name is None or p.ca_name == ca_name)
            and (port_num is None or p.port_num == port_num)
        ]
        if not candidates:
            which = f" matching {ca_name or '*'}:{port_num or '*'}" if ca_name or port_num else ""
            raise UmadError(
                f"no umad port found{which}; no HCA, ib_umad not loaded, "
                "or (simulator) the process was not started with LD_PRELOAD=libumad2sim.so"
            )
        # DR SMPs need only a physical link (INIT); LID routing would need ACTIVE.
        for wanted in (PortState.ACTIVE, PortState.INIT):
            for p in candidates:
                if p.state >= wanted:
                    return p
        return candidates[0]


class UmadTransport:
    """One umad port with the two SMI agents (LID-routed 0x01, directed route 0x81).

    ``send`` is called on the event loop thread; received MADs arrive on the
    loop through ``on_receive`` in batches. Not thread-safe beyond that split.
    """

    def __init__(self, umad: Libumad, port: LocalPort) -> None:
        self._umad = umad
        self.port = port
        lib = umad.lib
        fd = lib.umad_open_port(port.ca_name.encode(), port.port_num)
        if fd < 0:
            raise UmadError(
                f"umad_open_port({port.ca_name}, {port.port_num}) failed ({fd}); "
                "SMPs need read-write access to /dev/infiniband/umad*"
            )
        self._fd = fd
        self._agents: dict[int, int] = {}
        try:
            # Only meaningful once a port is open: libibumad picks the header
            # size from the kernel's answer to IB_USER_MAD_ENABLE_PKEY.
            size = int(lib.umad_size())
            if size != HEADER_SIZE:
                raise UmadError(f"umad_size() is {size}, expected {HEADER_SIZE} (umad ABI 5+)")
            for mgmt_class in (MGMT_CLASS_SMI, MGMT_CLASS_SMI_DR):
                agent = lib.umad_register(fd, mgmt_class, SMI_CLASS_VERSION, 0, None)
                if agent < 0:
                    raise UmadError(f"umad_register(class {mgmt_class:#x}) failed ({agent})")
                self._agents[mgmt_class] = agent
        except BaseException:
            self._release()
            raise
        # One send buffer, reused: the address (QP0, no GRH, P_Key index 0)
        # is the same for every SMP but the destination LID; umad_send fills
        # in agent, timeout and retries itself.
        self._send_buf = ctypes.create_string_buffer(HEADER_SIZE + MAD_SIZE)
        self._send_hdr = _UserMad.from_buffer(self._send_buf)
        self._send_mad = ctypes.addressof(self._send_buf) + HEADER_SIZE
        self._send_dlid = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def fd(self) -> int:
        return int(self._umad.lib.umad_get_fd(self._fd))

    @property
    def is_simulated(self) -> bool:
        """True when the descriptor is one of umad2sim's fakes (not pollable by epoll)."""
        return self.fd >= UMAD2SIM_FD_BASE

    def start(self, on_receive: Callable[[Batch], None], call_soon: Callable[..., object]) -> None:
        """Start the receive thread; ``call_soon`` is loop.call_soon_threadsafe."""
        if self._thread is not None:
            raise RuntimeError("transport already started")
        self._thread = threading.Thread(
            target=self._receive_loop,
            args=(on_receive, call_soon),
            name=f"umad-recv-{self.port.ca_name}:{self.port.port_num}",
            daemon=True,
        )
        # A daemon thread inside umad_recv() while libumad2sim's own atexit
        # handler frees the queue it waits on would crash the exit; stop first.
        atexit.register(self.close)
        self._thread.start()

    def send(self, mad: bytes, dlid: int, timeout_ms: int) -> None:
        """Queue one 256-byte SMP; DR SMPs go to the permissive LID 0xffff."""
        if self._closed:
            raise UmadError("umad transport is closed")
        if len(mad) != MAD_SIZE:
            raise ValueError(f"a MAD is {MAD_SIZE} bytes, got {len(mad)}")
        mgmt_class = MGMT_CLASS_SMI_DR if dlid == PERMISSIVE_LID else MGMT_CLASS_SMI
        if dlid != self._send_dlid:
            self._send_hdr.addr.lid = _htons(dlid)
            self._send_dlid = dlid
        ctypes.memmove(self._send_mad, mad, MAD_SIZE)
        # The kernel retries nothing (retries=0): the reader owns retries so it
        # can count them; timeout_ms makes a real kernel bounce the MAD back
        # with status ETIMEDOUT, which the reader treats like its own timer.
        # Under umad2sim this is a write to ibsim's datagram socket, which
        # waits while net.unix.max_dgram_qlen (10) MADs are queued there.
        rc = self._umad.lib.umad_send(
            self._fd, self._agents[mgmt_class], self._send_buf, MAD_SIZE, timeout_ms, 0
        )
        if rc < 0:
            raise UmadError(f"umad_send failed ({rc}, errno {ctypes.get_errno()})")

    def _receive_loop(
        self, on_receive: Callable[[Batch], None], call_soon: Callable[..., object]
    ) -> None:
        wait, drain = self._umad.lib.umad_recv, self._umad.lib_gil.umad_recv
        buf = ctypes.create_string_buffer(HEADER_SIZE + MAD_SIZE)
        hdr = _UserMad.from_buffer(buf)
        mad_addr = ctypes.addressof(buf) + HEADER_SIZE
        length = ctypes.c_int(MAD_SIZE)
        stop = self._stop
        while not stop.is_set():
            batch: list[tuple[int, bytes]] = []
            # Block (GIL released) for the first MAD, then drain what is queued
            # without waiting (GIL kept), so the loop is woken once per burst.
            recv, timeout = wait, RECV_POLL_MS
            while True:
                length.value = MAD_SIZE
                rc = recv(self._fd, buf, ctypes.byref(length), timeout)
                if rc < 0:
                    break
                batch.append((hdr.status, ctypes.string_at(mad_addr, MAD_SIZE)))
                recv, timeout = drain, 0
                if len(batch) >= 256:
                    break
            if batch:
                try:
                    call_soon(on_receive, batch)
                except RuntimeError:
                    return  # the loop is closed: nobody is waiting any more
            elif rc not in (-errno.ETIMEDOUT, -errno.EAGAIN, -errno.EWOULDBLOCK):
                stop.wait(0.01)  # an unexpected error: do not spin on it

    def close(self) -> None:
        """Stop the thread, unregister the agents, close the port. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5 * RECV_POLL_MS / 1000 + 1.0)
            if self._thread.is_alive():
                # Still inside umad_recv(): closing the port under it would free
                # memory it waits on. Leaking one descriptor is the lesser harm.
                raise UmadError("umad receive thread did not stop; port left open")
        self._release()

    def _release(self) -> None:
        lib = self._umad.lib
        for agent in self._agents.values():
            with contextlib.suppress(Exception):
                lib.umad_unregister(self._fd, agent)
        self._agents.clear()
        lib.umad_close_port(self._fd)
