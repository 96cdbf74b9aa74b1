"""The subnet's side of OpenSM's multicast groups from partitions.conf.

Each ``ipoib`` partition gets its IPoIB broadcast group and each ``mgid=``
entry one group per scope (osm_prtn_add_mcgroup and __create_mgrp in
osm_prtn.c, osm_mcmr_rcv_find_or_create_new_mgrp): MGIDs are global to the
subnet, so whether a group is created depends on the groups of every
partition parsed before it. ``GroupTable`` holds that state for one parse.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Literal

from pkeyd.opensm.parsed import GroupFlags, McastGroup

IPOIB_QKEY = 0x0B1B  # OSM_IPOIB_BROADCAST_MGRP_QKEY
DEFAULT_SCOPE = 2  # OSM_DEFAULT_MGRP_SCOPE, link-local
MTU_RANGE = range(1, 6)  # IB_MIN_MTU..IB_MAX_MTU
RATE_RANGE = range(2, 25)  # IB_MIN_RATE..IB_MAX_RATE
# osm_ipoib_broadcast_mgid: ff12:401b:ffff::ffff:ffff, PKey bytes still 0xffff.
BROADCAST_TEMPLATE = bytes.fromhex("ff12401bffff000000000000ffffffff")
_IP_SIGNATURES = (b"\x40\x1b", b"\x60\x1b")  # IPv4 / IPv6 over IB (mgid_is_ip)

Warn = Callable[[int, str, str], None]  # (line, warning code, detail)
Outcome = Literal["created", "exists", "failed"]


class GroupFlagState:
    """Mutable ``struct group_flags``; frozen into GroupFlags when recorded."""

    __slots__ = ("flow_label", "mtu", "q_key", "rate", "scope_mask", "sl", "tclass")

    def __init__(self) -> None:
        self.mtu, self.rate, self.sl, self.scope_mask = 4, 3, 0, 0
        self.q_key, self.tclass, self.flow_label = 0, 0, 0

    def freeze(self) -> GroupFlags:
        s = self
        return GroupFlags(s.mtu, s.rate, s.sl, s.scope_mask, s.q_key, s.tclass, s.flow_label)

    def copy(self) -> GroupFlagState:
        other = GroupFlagState()
        other.mtu, other.rate, other.sl = self.mtu, self.rate, self.sl
        other.scope_mask, other.q_key = self.scope_mask, self.q_key
        other.tclass, other.flow_label = self.tclass, self.flow_label
        return other


class GroupTable:
    """The multicast groups one parse creates on a fresh subnet."""

    def __init__(self, warn: Warn) -> None:
        self._warn = warn
        self._mgids: set[bytes] = set()
        self._interned: dict[tuple[int, ...], GroupFlags] = {}  # equal flags, one object

    def broadcast(self, pkey: int, f: GroupFlagState, line: int) -> GroupFlags | None:
        """The IPoIB broadcast group of a partition: its flags, or None if not created."""
        head, tail = BROADCAST_TEMPLATE[:4], BROADCAST_TEMPLATE[6:]
        mgid = b"%b%c%c%b" % (head, pkey >> 8 | 0x80, pkey & 0xFF, tail)
        # It copies every flag but scope; a Q_Key of 0 means the IPoIB one.
        key = (f.mtu, f.rate, f.sl, 0, f.q_key or IPOIB_QKEY, f.tclass, f.flow_label)
        if self._create(mgid, key[0], key[1], line) != "created":
            return None
        flags = self._interned.get(key)
        if flags is None:
            flags = self._interned[key] = GroupFlags(*key)
        return flags

    def add(self, mgid: bytes, f: GroupFlagState, line: int) -> McastGroup | None:
        """The creation step of mgroup_create (__create_mgrp): one group per scope bit."""
        canonical = str(ipaddress.IPv6Address(mgid))
        if mgid in self._mgids:  # osm_get_mgrp_by_mgid on the MGID as written
            self._warn(line, "duplicate_mgid", canonical)
            return None
        created, outcomes = 0, set()
        # Scope 0 means link-local; either way the MGID's scope nibble is rewritten.
        for scope in [s for s in range(16) if f.scope_mask >> s & 1] or [DEFAULT_SCOPE]:
            scoped = mgid[:1] + bytes([(mgid[1] & 0xF0) | scope]) + mgid[2:]
            outcome = self._create(scoped, f.mtu, f.rate, line)
            outcomes.add(outcome)
            if outcome == "created":
                created |= 1 << scope
        if not created:
            if "exists" in outcomes:  # reused as it is, this entry's flags unused
                self._warn(line, "duplicate_mgid", canonical)
            return None
        if f.scope_mask:
            f.scope_mask = created  # the scopes OpenSM could create
        return McastGroup(canonical, f.freeze(), line)

    def _create(self, mgid: bytes, mtu: int, rate: int, line: int) -> Outcome:
        """One group of osm_prtn_add_mcgroup.

        osm_mcmr_rcv_find_or_create_new_mgrp returns an existing group as it
        is; a new one must have a realizable MTU and rate, and (by default,
        ipoib_mcgroup_creation_validation) an IPoIB group other than a
        broadcast group needs the broadcast group of its scope and PKey.
        """
        if mgid in self._mgids:
            return "exists"
        if mtu & 0x3F not in MTU_RANGE or rate & 0x3F not in RATE_RANGE:
            shown = ipaddress.IPv6Address(mgid)
            self._warn(line, "mgroup_not_created", f"{shown}: mtu={mtu}, rate={rate}")
            return "failed"
        if mgid[2:4] in _IP_SIGNATURES:
            broadcast = b"\xff%c\x40\x1b%b%b" % (
                0x10 | mgid[1] & 0xF,
                mgid[4:6],
                BROADCAST_TEMPLATE[6:],
            )
            if mgid != broadcast and broadcast not in self._mgids:
                shown, missing = ipaddress.IPv6Address(mgid), ipaddress.IPv6Address(broadcast)
                self._warn(line, "mgroup_not_created", f"{shown}: no broadcast group {missing}")
                return "failed"
        self._mgids.add(mgid)
        return "created"


def is_ip_mgid(raw: bytes | bytearray) -> bool:
    """mgid_is_ip: an IPv4 or IPv6 over IB group (signature 0x401b or 0x601b)."""
    return raw[2:4] in _IP_SIGNATURES
