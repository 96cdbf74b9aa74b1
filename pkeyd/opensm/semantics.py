"""What OpenSM programs into the ports' PKey tables for a parsed partitions.conf.

Given a ``ParseResult`` and the end ports of a fabric, this computes the
membership OpenSM 3.3.23 gives every port in every partition, emulating
osm_prtn_make_partitions (osm_prtn.c) and the membership bookkeeping of
osm_prtn_add_port / manage_membership_change (osm_prtn_config.c):

* With a usable file, the Default partition 0x7fff starts with every port a
  limited member and the SM's port a full member (prtn_make_default), then
  the file's statements apply in order.
* A fatal error, or a file without statements, discards everything: OpenSM
  falls back to its no-config default, every port a full member of 0x7fff.
* Each entry is applied to the ports it names that exist (unknown GUIDs are
  skipped); for one port and one PKey, the last entry wins (osm_prtn_add_port
  removes the port from both tables first; with allow_both_pkeys,
  manage_membership_change clears the other table, except for ``both``).
* A partition left without members is deleted.

Index 0 of each table (``indx0``) is modelled by ``expected_index0``. Switch
ports are modelled as the management port 0 of each switch (its port GUID is
the switch's GUID), which ALL and ALL_SWITCHES reach like any end port; the
copy of an HCA's table onto the peer switch port for partition enforcement
(pkey_mgr_update_peer_port) is not modelled. Neither is a table overflowing a
port's PartitionCap (OpenSM drops the extra PKeys with ERR 0512).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal, NamedTuple

from pkeyd.opensm.parsed import DEFAULT_PKEY, MemberEntry, Membership, ParseResult

NodeType = Literal["ca", "switch", "router"]
FULL_BIT = 0x8000
_KEYWORD_TYPES: dict[str, NodeType] = {
    "ALL_CAS": "ca",
    "ALL_SWITCHES": "switch",
    "ALL_ROUTERS": "router",
}


class FabricPort(NamedTuple):
    """An end port: its GUID and the type of its node."""

    port_guid: int
    node_type: NodeType


Tables = dict[int, dict[int, Membership]]


def expected_tables(
    result: ParseResult,
    ports: Iterable[tuple[int, NodeType]],
    sm_port_guid: int,
    *,
    allow_both_pkeys: bool = False,
) -> Tables:
    """Port GUID -> PKey (15 bits) -> membership, for every given port."""
    types = dict(ports)
    if not result.ok:
        return {guid: {DEFAULT_PKEY: "full"} for guid in types}
    members = _members(result, types, sm_port_guid, allow_both_pkeys)
    tables: Tables = {guid: {} for guid in types}
    for pkey, table in members.items():
        for guid, membership in table.items():
            tables[guid][pkey] = membership
    return tables


def raw_entries(memberships: dict[int, Membership]) -> set[int]:
    """The 16-bit values a port table holds: pkey|0x8000 for full, pkey for limited."""
    values: set[int] = set()
    for pkey, membership in memberships.items():
        if membership in ("full", "both"):
            values.add(pkey | FULL_BIT)
        if membership in ("limited", "both"):
            values.add(pkey)
    return values


def expected_index0(
    result: ParseResult,
    ports: Iterable[tuple[int, NodeType]],
    sm_port_guid: int,
    *,
    allow_both_pkeys: bool = False,
) -> dict[int, int | None]:
    """Port GUID -> the raw PKey OpenSM puts at index 0 (None: not predictable).

    osm_prtn_add_port records an ``indx0`` PKey per port: set by an entry of
    an indx0 statement, cleared by a later entry of the same PKey without it.
    pkey_mgr_update_port then places that PKey at index 0, else the Default
    PKey. After a fatal parse the record of the failed parse survives the
    fallback (prtn_make_default only clears a Default one), so index 0 of
    such a port holds no Default entry: that case is None. With
    allow_both_pkeys only the full Default entry (0xffff) is moved to index
    0, so a port that is only a limited Default member is None as well.
    """
    types = dict(ports)
    indx0 = _indx0_records(result, types, sm_port_guid, allow_both_pkeys)
    if not result.ok:
        kept = {g: indx0.get(g, 0) & 0x7FFF for g in types}
        return {g: 0xFFFF if kept[g] in (0, DEFAULT_PKEY) else None for g in types}
    tables = expected_tables(result, types.items(), sm_port_guid, allow_both_pkeys=allow_both_pkeys)
    out: dict[int, int | None] = {}
    for guid in types:
        if indx0.get(guid):
            out[guid] = indx0[guid]
            continue
        default = tables[guid].get(DEFAULT_PKEY)
        if default in ("full", "both"):
            out[guid] = DEFAULT_PKEY | FULL_BIT
        else:
            out[guid] = None if allow_both_pkeys else DEFAULT_PKEY
    return out


def _members(
    result: ParseResult, types: dict[int, NodeType], sm: int, allow_both: bool
) -> dict[int, dict[int, Membership]]:
    default: dict[int, Membership] = dict.fromkeys(types, "limited")
    if sm in types:
        default[sm] = "full"
    members: dict[int, dict[int, Membership]] = {DEFAULT_PKEY: default}
    for partition in result.partitions:
        table = members.setdefault(partition.pkey, {})
        for entry in partition.entries:
            membership = entry.membership
            if membership == "both" and not allow_both:
                membership = "full"
            for guid in _targets(entry, types, sm):
                table[guid] = membership
    return {pkey: table for pkey, table in members.items() if table}


def _targets(entry: MemberEntry, types: dict[int, NodeType], sm: int) -> Iterator[int]:
    target = entry.target
    if target == "ALL":
        yield from types
    elif target in _KEYWORD_TYPES:
        wanted = _KEYWORD_TYPES[target]
        yield from (guid for guid, kind in types.items() if kind == wanted)
    else:
        guid = sm if target == "SELF" else int(target, 16)
        if guid in types:
            yield guid


def _indx0_records(
    result: ParseResult, types: dict[int, NodeType], sm: int, allow_both: bool
) -> dict[int, int]:
    """The indx0 PKey each port is left with by the file's entries, in file order."""
    records: dict[int, int] = {}
    entries = sorted(
        ((e, p.pkey) for p in result.partitions for e in p.entries), key=lambda t: t[0].seq
    )
    for entry, pkey in entries:
        membership = entry.membership
        # "both" calls osm_prtn_add_port for full, then for limited: limited stays.
        full = membership == "full" or (membership == "both" and not allow_both)
        for guid in _targets(entry, types, sm):
            if entry.indx0:
                records[guid] = pkey | FULL_BIT if full else pkey
            elif records.get(guid, 0) & 0x7FFF == pkey:
                records[guid] = 0
    return records
