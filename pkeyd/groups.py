"""Multicast group settings of a partition and its extra multicast groups (mgid entries).

Pure types with validation. The ranges are the ones OpenSM accepts without
silently changing the value (osm_prtn_config.c: parse_group_flag), so a value
stored here is the value OpenSM uses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pkeyd.errors import ValidationError

DEFAULT_MTU = 4  # IB MTU enum: 4 = 2048 bytes
DEFAULT_RATE = 3  # IB rate enum: 3 = 10 Gb/s
_IP_SIGNATURES = (0x401B, 0x601B)  # IPv4 / IPv6 over IB multicast groups


def _int_in(raw: object, low: int, high: int, field: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValidationError(f"must be an integer {low}-{high}", field)
    if not low <= raw <= high:
        raise ValidationError(f"{raw} is outside {low}-{high}", field)
    return raw


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """Flags of a multicast group; None means OpenSM's default (or inherited)."""

    mtu: int | None = None  # IB MTU enum 1-5
    rate: int | None = None  # IB rate enum 2-22
    sl: int | None = None  # 0-15; OpenSM forces 0 unless QoS is on
    scope: tuple[int, ...] = ()  # 1-15 each; several create one group per scope
    q_key: int | None = None
    tclass: int | None = None
    flow_label: int | None = None

    FIELDS = ("mtu", "rate", "sl", "scope", "q_key", "tclass", "flow_label")

    @classmethod
    def parse(cls, body: Mapping[str, Any], prefix: str = "") -> GroupSettings:
        """Read the group fields present in a JSON object (others stay None)."""

        def get(name: str, low: int, high: int) -> int | None:
            raw = body.get(name)
            return None if raw is None else _int_in(raw, low, high, prefix + name)

        scope_raw = body.get("scope", [])
        if isinstance(scope_raw, int) and not isinstance(scope_raw, bool):
            scope_raw = [scope_raw]
        if not isinstance(scope_raw, list):
            raise ValidationError("must be a scope 1-15 or a list of them", prefix + "scope")
        scope = tuple(
            sorted({_int_in(s, 1, 15, f"{prefix}scope[{i}]") for i, s in enumerate(scope_raw)})
        )
        return cls(
            mtu=get("mtu", 1, 5),
            rate=get("rate", 2, 22),
            sl=get("sl", 0, 15),
            scope=scope,
            q_key=get("q_key", 1, 0xFFFFFFFF),
            tclass=get("tclass", 1, 255),
            flow_label=get("flow_label", 1, 0xFFFFF),
        )

    def merged(self, changes: GroupSettings, present: set[str]) -> GroupSettings:
        """This, with the fields named in `present` taken from `changes` (PATCH)."""
        values = {f: getattr(changes if f in present else self, f) for f in self.FIELDS}
        return GroupSettings(**values)

    def to_json(self) -> dict[str, Any]:
        return {f: (list(self.scope) if f == "scope" else getattr(self, f)) for f in self.FIELDS}

    @property
    def effective_mtu(self) -> int:
        return DEFAULT_MTU if self.mtu is None else self.mtu

    @property
    def effective_rate(self) -> int:
        return DEFAULT_RATE if self.rate is None else self.rate


@dataclass(frozen=True, slots=True)
class McastGroup:
    """An extra multicast group of a partition (an `mgid=` entry)."""

    mgid: str  # canonical compressed IPv6 text
    settings: GroupSettings

    @classmethod
    def parse(cls, body: Mapping[str, Any], prefix: str) -> McastGroup:
        extra = set(body) - {"mgid", *GroupSettings.FIELDS}
        if extra:
            raise ValidationError("unknown field", prefix + sorted(extra)[0])
        raw = body.get("mgid")
        field = prefix + "mgid"
        if not isinstance(raw, str):
            raise ValidationError("is required: an IPv6-style multicast GID", field)
        try:
            addr = ipaddress.IPv6Address(raw)
        except ValueError:
            raise ValidationError(f"{raw!r} is not an IPv6-style GID", field) from None
        if addr.packed[0] != 0xFF:
            raise ValidationError("is not a multicast GID (must start with ff)", field)
        return cls(str(addr), GroupSettings.parse(body, prefix))

    @property
    def is_ip(self) -> bool:
        return int.from_bytes(ipaddress.IPv6Address(self.mgid).packed[2:4], "big") in _IP_SIGNATURES

    def bind(self, pkey: int, partition: GroupSettings, prefix: str) -> McastGroup:
        """Check the group against its partition as OpenSM's mgroup_create does.

        OpenSM skips, with only an error in its log, an IPoIB group whose PKey,
        rate or MTU disagree with the partition, and writes the partition's
        PKey into an IPoIB group's MGID. Refuse the first here; store the
        second as OpenSM will create it.
        """
        if not self.is_ip:
            return self
        packed = bytearray(ipaddress.IPv6Address(self.mgid).packed)
        full_pkey = pkey | 0x8000
        if int.from_bytes(packed[4:6], "big") not in (0, full_pkey):
            raise ValidationError(
                f"an IPoIB group's PKey bytes must be 0000 or {full_pkey:04x}", prefix + "mgid"
            )
        own = self.settings
        rate = own.rate if own.rate is not None else partition.effective_rate
        mtu = own.mtu if own.mtu is not None else partition.effective_mtu
        if rate != partition.effective_rate or mtu != partition.effective_mtu:
            raise ValidationError(
                "an IPoIB group must have the partition's rate and mtu", prefix + "rate"
            )
        packed[4:6] = full_pkey.to_bytes(2, "big")
        return McastGroup(str(ipaddress.IPv6Address(bytes(packed))), own)

    def to_json(self) -> dict[str, Any]:
        return {"mgid": self.mgid, **self.settings.to_json()}
