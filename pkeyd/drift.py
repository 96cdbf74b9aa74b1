"""Compare what the ports' PKey tables hold with what the desired state means.

The expectation is computed the way OpenSM computes it: the render of the
desired state is read back by pkeyd's OpenSM-exact parser and expanded against
the ports found on the fabric (keywords such as ALL and ALL_CAS, last entry
wins, the implicit Default partition). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pkeyd.domain import DesiredState
from pkeyd.fabric.model import FULL_MEMBER_BIT, FabricPort, FabricSnapshot, NodeType
from pkeyd.opensm.parse import parse
from pkeyd.opensm.render import render
from pkeyd.opensm.semantics import NodeType as SemanticNodeType
from pkeyd.opensm.semantics import Tables, expected_tables

DriftKind = Literal["missing", "wrong_membership", "unexpected", "absent_member", "over_capacity"]
# Drift a reload can repair: OpenSM reprograms tables on every heavy sweep.
REPAIRABLE: frozenset[DriftKind] = frozenset({"missing", "wrong_membership", "unexpected"})
_NODE_TYPES: dict[NodeType, SemanticNodeType] = {
    NodeType.CA: "ca",
    NodeType.SWITCH: "switch",
    NodeType.ROUTER: "router",
}


@dataclass(frozen=True, slots=True)
class Drift:
    port_guid: int
    pkey: int  # 15 bits
    kind: DriftKind
    expected: str | None  # full / limited / both
    actual: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "port_guid": f"0x{self.port_guid:016x}",
            "pkey": f"0x{self.pkey:04x}",
            "kind": self.kind,
            "expected": self.expected,
            "actual": self.actual,
        }


def actual_memberships(port: FabricPort) -> dict[int, str]:
    """PKey (15 bits) -> full / limited / both, from a port's raw table."""
    found: dict[int, set[str]] = {}
    for entry in port.pkeys:
        base = entry & ~FULL_MEMBER_BIT
        if base:
            found.setdefault(base, set()).add("full" if entry & FULL_MEMBER_BIT else "limited")
    return {p: "both" if len(kinds) == 2 else kinds.pop() for p, kinds in found.items()}


def expected_for(
    state: DesiredState, ports: Iterable[FabricPort], sm_port_guid: int, *, allow_both: bool
) -> Tables:
    """What OpenSM programs on these ports for the desired state."""
    result = parse(render(state), allow_both_pkeys=allow_both, qos=True)
    typed = [(p.port_guid, _NODE_TYPES[p.node_type]) for p in ports if p.node_type in _NODE_TYPES]
    return expected_tables(result, typed, sm_port_guid, allow_both_pkeys=allow_both)


def compute_drift(
    state: DesiredState,
    snapshot: FabricSnapshot,
    sm_port_guid: int,
    *,
    allow_both: bool,
) -> list[Drift]:
    """Every difference between the CA ports' tables and the desired state."""
    ports = snapshot.ca_ports()
    expected = expected_for(state, ports, sm_port_guid, allow_both=allow_both)
    drift: list[Drift] = []
    for port in ports:
        want = expected.get(port.port_guid, {})
        have = actual_memberships(port)
        # A table too small for what is asked: OpenSM drops the rest silently.
        over = len(want) + sum(m == "both" for m in want.values()) > port.partition_cap
        for pkey in sorted(set(want) | set(have)):
            w, h = want.get(pkey), have.get(pkey)
            if w == h:
                continue
            kind: DriftKind
            if h is None:
                kind = "over_capacity" if over else "missing"
            elif w is None:
                kind = "unexpected"
            else:
                kind = "wrong_membership"
            drift.append(Drift(port.port_guid, pkey, kind, w, h))
    present = {p.port_guid for p in snapshot.ports}
    for partition in state.partitions:
        for member in partition.members:
            if member.guid.value not in present:
                drift.append(
                    Drift(
                        member.guid.value,
                        partition.pkey.value,
                        "absent_member",
                        member.membership.value,
                        None,
                    )
                )
    return drift


def corrected_table(
    port: FabricPort, expected: Mapping[int, str], last_good: tuple[int, ...] | None
) -> tuple[int, ...]:
    """The table this port should hold, changing as few entries as possible.

    OpenSM programs a table only when its own idea of it changes: an entry
    overwritten behind its back stays wrong through any number of reloads.
    The repair writes back the port's last verified table when that still
    means what is asked (same indexes as OpenSM chose); otherwise it clears
    the wrong entries and puts missing ones in the first free slots.
    """
    if (
        last_good is not None
        and len(last_good) == len(port.pkeys)
        and actual_memberships(dataclasses.replace(port, pkeys=last_good)) == expected
    ):
        return last_good
    wanted = {
        (pkey | FULL_MEMBER_BIT if kind == "full" else pkey)
        for pkey, m in expected.items()
        for kind in (("full", "limited") if m == "both" else (m,))
    }
    table = [e if (e & ~FULL_MEMBER_BIT) == 0 or e in wanted else 0 for e in port.pkeys]
    present = set(table)
    for entry in sorted(wanted - present):
        free = table.index(0) if 0 in table else None
        if free is None:
            break  # over capacity: reported as such, nothing more fits
        table[free] = entry
    return tuple(table)


def ports_by_kind(drift: Iterable[Drift]) -> Counter[str]:
    """How many distinct ports show each kind of drift."""
    seen = {(d.kind, d.port_guid) for d in drift}
    return Counter(kind for kind, _ in seen)
