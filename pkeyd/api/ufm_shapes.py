"""The PKey resource of UFM's REST API, translated to and from pkeyd's model.

Pure: no aiohttp here. Request bodies become small typed requests that the
handlers hand to PartitionService; partitions become the maps UFM clients
parse. Every error names the UFM field the client sent.

Values UFM speaks in other units than OpenSM:
- ``mtu_limit`` is the MTU in KiB (2 or 4); OpenSM's ``mtu`` is the IB enum
  (4 = 2048 bytes, 5 = 4096 bytes).
- ``rate_limit`` is the rate in Gb/s (2.5, 10, 30, ...); OpenSM's ``rate`` is
  the IB rate enum (2 = 2.5 Gb/s, 3 = 10 Gb/s, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pkeyd.domain import KeywordMember, Membership, Partition, PKey, PortGuid, validate_name
from pkeyd.drafts import MemberSpec, reject_unknown
from pkeyd.errors import BadRequestError, ValidationError
from pkeyd.groups import GroupSettings

# IB MTU enum -> UFM's mtu_limit (KiB). UFM offers 2 and 4 only; the smaller
# MTUs a partition may carry from /api/v1 are answered in the same unit.
_MTU_KIB = {1: 0.25, 2: 0.5, 3: 1, 4: 2, 5: 4}
_MTU_ACCEPTED = {2: 4, 4: 5}  # mtu_limit -> IB enum

# IB rate enum (IBTA, as OpenSM's rate= flag) -> Gb/s.
_RATE_GBPS: dict[int, float] = {
    2: 2.5, 3: 10, 4: 30, 5: 5, 6: 20, 7: 40, 8: 60, 9: 80, 10: 120, 11: 14, 12: 56,
    13: 112, 14: 168, 15: 25, 16: 100, 17: 200, 18: 300, 19: 28, 20: 50, 21: 400, 22: 600,
}  # fmt: skip
_RATE_ENUM = {gbps: enum for enum, gbps in _RATE_GBPS.items()}

MEMBERSHIPS = ("full", "limited")
_HEX = re.compile(r"[0-9a-fA-F]+")
# A 20-byte IPoIB hardware address (Ironic's "client-id"): QPN + the port GID,
# whose last 8 bytes are the port GUID.
_IPOIB_HWADDR = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){19}")
GUID_MAX_DIGITS = 20  # UFM documents GUIDs as 16 to 20 hexadecimal characters


def pkey_key(pkey: PKey) -> str:
    """How UFM writes a PKey as a map key: ``0xa12`` (lowercase, no padding)."""
    return f"0x{pkey.value:x}"


def guid_text(guid: PortGuid) -> str:
    """How UFM writes a GUID: 16 lowercase hex digits, no ``0x``."""
    return f"{guid.value:016x}"


def parse_guid(raw: object, field: str) -> PortGuid:
    """A GUID as UFM clients send it.

    Accepted: 16 hex digits (what every client sends), the same with ``0x``,
    up to 20 digits when the extra leading digits are zeros (UFM's documented
    limit of 20 characters), and a 20-byte IPoIB hardware address written
    with colons (the port GUID is its last 8 bytes).
    """
    if not isinstance(raw, str):
        raise ValidationError("must be a string of 16 hex digits", field)
    text = raw.strip()
    if _IPOIB_HWADDR.fullmatch(text):
        text = text.replace(":", "")[-16:]
    elif text[:2].lower() == "0x":
        text = text[2:]
    if not _HEX.fullmatch(text) or not 16 <= len(text) <= GUID_MAX_DIGITS:
        raise ValidationError(
            f"{raw!r} is not a port GUID; send 16 hex digits like 0002c903000e0b72", field
        )
    value = int(text, 16)
    if value >= 1 << 64:
        raise ValidationError(f"{raw!r} does not fit in 64 bits", field)
    if value == 0:
        raise ValidationError("GUID 0 is not a port", field)
    return PortGuid(value)


def parse_guid_list(raw: object, field: str = "guids") -> list[PortGuid]:
    if not isinstance(raw, list):
        raise ValidationError("must be a list of GUID strings", field)
    seen: dict[PortGuid, int] = {}  # GUID -> its index: lists run to 100,000 GUIDs
    for i, item in enumerate(raw):
        guid = parse_guid(item, f"{field}[{i}]")
        if guid in seen:
            raise ValidationError(
                f"{guid_text(guid)} is listed twice (also at {field}[{seen[guid]}])",
                f"{field}[{i}]",
            )
        seen[guid] = i
    return list(seen)


def parse_flag(query: Mapping[str, str], name: str) -> bool:
    """A query flag: ``true``/``false`` in any case (Python clients send ``True``), 1/0."""
    raw = query.get(name)
    if raw is None:
        return False
    text = raw.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise BadRequestError(f"query parameter must be true or false, not {raw!r}", name)


def _bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise ValidationError("must be true or false", key)
    return value


def _membership(raw: object, field: str) -> Membership:
    if raw not in MEMBERSHIPS:
        raise ValidationError(f"{raw!r} is not a membership; use full or limited", field)
    return Membership(str(raw))


def _number(raw: object, field: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValidationError("must be a number", field)
    return raw


@dataclass(frozen=True)
class Qos:
    """The qos_conf values a client sent; None where it sent nothing."""

    mtu: int | None = None  # IB enum
    rate: int | None = None  # IB enum
    sl: int | None = None

    FIELDS = ("mtu_limit", "service_level", "rate_limit")

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Qos:
        mtu = rate = sl = None
        if body.get("mtu_limit") is not None:
            kib = _number(body["mtu_limit"], "mtu_limit")
            if kib not in _MTU_ACCEPTED:
                raise ValidationError(f"{kib} is not an MTU limit; use 2 or 4 (KiB)", "mtu_limit")
            mtu = _MTU_ACCEPTED[int(kib)]
        if body.get("rate_limit") is not None:
            gbps = _number(body["rate_limit"], "rate_limit")
            if gbps not in _RATE_ENUM:
                shown = ", ".join(f"{g:g}" for g in sorted(_RATE_ENUM))
                raise ValidationError(
                    f"{gbps:g} Gb/s is not an IB rate; use one of {shown}", "rate_limit"
                )
            rate = _RATE_ENUM[gbps]
        if body.get("service_level") is not None:
            raw = body["service_level"]
            if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 15:
                raise ValidationError("must be an integer 0-15", "service_level")
            sl = raw
        return cls(mtu, rate, sl)

    @property
    def present(self) -> frozenset[str]:
        """The GroupSettings fields this request sets."""
        return frozenset(
            name
            for name, value in (("mtu", self.mtu), ("rate", self.rate), ("sl", self.sl))
            if value is not None
        )

    def settings(self) -> GroupSettings:
        return GroupSettings(mtu=self.mtu, rate=self.rate, sl=self.sl)


@dataclass(frozen=True)
class MemberChange:
    """POST / PUT /resources/pkeys: GUIDs with their membership, for one PKey."""

    pkey: PKey
    guids: list[PortGuid]
    memberships: list[Membership]
    index0: bool
    ip_over_ib: bool | None  # None: the client did not say (UFM's default is true)

    ALLOWED = frozenset({"pkey", "guids", "membership", "memberships", "index0", "ip_over_ib"})

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> MemberChange:
        reject_unknown(body, set(cls.ALLOWED))
        pkey = _required_pkey(body)
        if "guids" not in body:
            raise ValidationError("is required: a list of GUID strings", "guids")
        guids = parse_guid_list(body["guids"])
        if "memberships" in body and "membership" in body:
            raise ValidationError(
                "send either membership (one for all) or memberships (one per GUID)",
                "memberships",
            )
        if "memberships" in body:
            raw = body["memberships"]
            if not isinstance(raw, list) or len(raw) != len(guids):
                raise ValidationError(
                    f"must be a list of {len(guids)} memberships, one per GUID", "memberships"
                )
            memberships = [_membership(m, f"memberships[{i}]") for i, m in enumerate(raw)]
        else:
            one = _membership(body.get("membership", "full"), "membership")
            memberships = [one] * len(guids)
        ip_over_ib = _bool(body, "ip_over_ib", True) if "ip_over_ib" in body else None
        return cls(pkey, guids, memberships, _bool(body, "index0", False), ip_over_ib)

    def specs(self) -> list[MemberSpec]:
        return [
            MemberSpec(guid, membership, self.index0)
            for guid, membership in zip(self.guids, self.memberships, strict=True)
        ]


@dataclass(frozen=True)
class NewPKey:
    """POST /resources/pkeys/add: an empty PKey with its flags."""

    pkey: PKey
    name: str | None
    index0: bool
    ip_over_ib: bool
    qos: Qos

    ALLOWED = frozenset({"pkey", "partition_name", "index0", "ip_over_ib", *Qos.FIELDS})

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> NewPKey:
        reject_unknown(body, set(cls.ALLOWED))
        pkey = _required_pkey(body)
        raw_name = body.get("partition_name")
        name = None if raw_name is None else validate_name(raw_name, "partition_name")
        return cls(
            pkey,
            name,
            _bool(body, "index0", False),
            _bool(body, "ip_over_ib", True),
            Qos.parse(body),
        )


@dataclass(frozen=True)
class QosChange:
    """POST or PUT /resources/pkeys/qos_conf."""

    pkey: PKey
    qos: Qos

    ALLOWED = frozenset({"pkey", *Qos.FIELDS})

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> QosChange:
        reject_unknown(body, set(cls.ALLOWED))
        pkey = _required_pkey(body)
        qos = Qos.parse(body)
        if not qos.present:
            raise ValidationError(
                "send at least one of mtu_limit, service_level, rate_limit", "mtu_limit"
            )
        return cls(pkey, qos)


@dataclass(frozen=True)
class GuidRemoval:
    """POST /actions/remove_guids_from_pkey (the deprecated form clients still send)."""

    pkey: PKey
    guids: list[PortGuid]

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> GuidRemoval:
        reject_unknown(body, {"pkey", "guids"})
        pkey = _required_pkey(body)
        if "guids" not in body:
            raise ValidationError("is required: a list of GUID strings", "guids")
        return cls(pkey, parse_guid_list(body["guids"]))


def _required_pkey(body: Mapping[str, Any]) -> PKey:
    if body.get("pkey") is None:
        raise ValidationError("is required: a hex string like 0x0a12", "pkey")
    return PKey.user(body["pkey"], "pkey")


def default_name(pkey: PKey) -> str:
    """The OpenSM name of a PKey created without ``partition_name``."""
    return f"pk_{pkey}"


def guid_path_list(raw: str) -> list[PortGuid]:
    """The ``g1,g2,...`` segment of DELETE /resources/pkeys/{pkey}/guids/{guids}."""
    return parse_guid_list([part.strip() for part in raw.split(",")])


# -- answers -----------------------------------------------------------------


def _kib(mtu: int) -> float | int:
    value = _MTU_KIB[mtu]
    return int(value) if float(value).is_integer() else value


def _gbps(rate: int) -> float | int:
    value = _RATE_GBPS[rate]
    return int(value) if float(value).is_integer() else value


def qos_json(settings: GroupSettings) -> dict[str, Any]:
    """What OpenSM applies (its defaults where the partition sets nothing)."""
    return {
        "mtu_limit": _kib(settings.effective_mtu),
        "service_level": settings.sl or 0,
        "rate_limit": _gbps(settings.effective_rate),
    }


def _default_keyword(partition: Partition) -> KeywordMember | None:
    return next((k for k in partition.keywords if k.keyword == "ALL"), None)


def pkey_json(partition: Partition, *, guids_data: bool, qos_conf: bool) -> dict[str, Any]:
    """One PKey as UFM answers it. ``guids_data`` and ``qos_conf`` combine (UFM's don't)."""
    body: dict[str, Any] = {"partition": partition.name, "ip_over_ib": partition.ipoib}
    if guids_data:
        # UFM knows full and limited only; a 'both' member holds the full PKey.
        body["guids"] = [
            {
                "guid": guid_text(m.guid),
                "membership": "limited" if m.membership is Membership.LIMITED else "full",
                "index0": m.index0 or partition.indx0,
            }
            for m in partition.members
        ]
        everyone = _default_keyword(partition)
        if everyone is not None:
            # UFM reports the membership every port gets (the Default's ALL=...).
            body["membership"] = "limited" if everyone.membership is Membership.LIMITED else "full"
            body["index0"] = everyone.index0 or partition.indx0
    if qos_conf:
        body["qos_conf"] = qos_json(partition.settings)
    return body


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip


def ufm_time(moment: datetime) -> str:
    """UFM's last_updated format with its zone: ``Thu Sep  3 11:42:39 UTC 2020``.

    Written by hand, not with strftime: the names must not follow the locale.
    The zone is always UTC, so clients need no idea of the server's zone.
    """
    t = moment.astimezone(UTC)
    return (
        f"{_DAYS[t.weekday()]} {_MONTHS[t.month - 1]} {t.day:2d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} UTC {t.year}"
    )
