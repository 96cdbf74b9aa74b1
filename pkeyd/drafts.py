"""What clients ask for, parsed from JSON objects: strict, every error names its field.

Pure: no aiohttp here, so the service layer can take these types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pkeyd.domain import (
    Membership,
    PKey,
    PortGuid,
    parse_keyword,
    validate_name,
)
from pkeyd.errors import ValidationError
from pkeyd.groups import GroupSettings, McastGroup

PARTITION_FIELDS = {
    "name",
    "pkey",
    "ipoib",
    *GroupSettings.FIELDS,
    "defmember",
    "indx0",
    "members",
    "keywords",
    "mgroups",
}
PATCHABLE = PARTITION_FIELDS - {"pkey", "members", "keywords"}


def reject_unknown(body: Mapping[str, Any], allowed: set[str], prefix: str = "") -> None:
    for key in body:
        if key not in allowed:
            raise ValidationError(
                f"unknown field; allowed: {', '.join(sorted(allowed))}", f"{prefix}{key}"
            )


def _bool(body: Mapping[str, Any], key: str, default: bool, prefix: str = "") -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise ValidationError("must be true or false", prefix + key)
    return value


def _list(body: Mapping[str, Any], key: str, what: str) -> list[Any]:
    value = body.get(key, [])
    if not isinstance(value, list):
        raise ValidationError(f"must be a list of {what}", key)
    return value


def _optional_membership(body: Mapping[str, Any], key: str, where: str) -> Membership | None:
    raw = body.get(key)
    return None if raw is None else Membership.parse(raw, where)


class MemberSpec(NamedTuple):
    """A member as a client sent it; the membership may be left to the partition.

    A named tuple: a bulk request makes 100,000 of them.
    """

    target: PortGuid | str  # a GUID or a keyword
    membership: Membership | None
    index0: bool


_MEMBERSHIPS = {m.value: m for m in Membership}


def parse_member_specs(raw: list[Any], field_name: str, *, keywords: bool) -> list[MemberSpec]:
    key = "keyword" if keywords else "guid"
    allowed = {key, "membership", "index0"}
    specs: list[MemberSpec] = []
    seen: dict[object, int] = {}  # a GUID's value or a keyword -> its index
    for i, item in enumerate(raw):
        # A bulk request has 100,000 of these: the field's name is spelled
        # out only when there is an error to name it in.
        if not isinstance(item, dict):
            raise ValidationError(
                f"must be an object {{{key}, membership, index0}}", f"{field_name}[{i}]"
            )
        if not item.keys() <= allowed:
            reject_unknown(item, allowed, f"{field_name}[{i}].")
        if key not in item:
            raise ValidationError("is required", f"{field_name}[{i}].{key}")
        target: PortGuid | str
        if keywords:
            target = parse_keyword(item[key], f"{field_name}[{i}].{key}")
            identity: object = target
        else:
            target = PortGuid.parse(item[key], f"{field_name}[{i}].{key}")
            identity = target.value
        if identity in seen:
            raise ValidationError(
                f"{target} is listed twice (also at {field_name}[{seen[identity]}])",
                f"{field_name}[{i}].{key}",
            )
        seen[identity] = i
        given = item.get("membership")
        membership = _MEMBERSHIPS.get(given) if isinstance(given, str) else None
        if membership is None and given is not None:
            membership = Membership.parse(given, f"{field_name}[{i}].membership")
        index0 = item.get("index0", False)
        if index0 is not False and index0 is not True:
            raise ValidationError("must be true or false", f"{field_name}[{i}].index0")
        specs.append(MemberSpec(target, membership, index0))
    return specs


def _mgroups(body: Mapping[str, Any]) -> list[McastGroup]:
    groups = []
    for i, item in enumerate(_list(body, "mgroups", "multicast group objects")):
        if not isinstance(item, dict):
            raise ValidationError("must be an object {mgid, mtu?, rate?, ...}", f"mgroups[{i}]")
        groups.append(McastGroup.parse(item, f"mgroups[{i}]."))
    mgids = [g.mgid for g in groups]
    for i, mgid in enumerate(mgids):
        if mgid in mgids[:i]:
            raise ValidationError(f"{mgid} is listed twice", f"mgroups[{i}].mgid")
    return groups


@dataclass(frozen=True)
class PartitionDraft:
    """A partition as a client describes it; the service completes and checks it."""

    name: str
    pkey: PKey | None
    ipoib: bool
    settings: GroupSettings
    defmember: Membership | None
    indx0: bool
    members: list[MemberSpec] = field(default_factory=list)
    keywords: list[MemberSpec] = field(default_factory=list)
    mgroups: list[McastGroup] = field(default_factory=list)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> PartitionDraft:
        reject_unknown(body, PARTITION_FIELDS)
        if "name" not in body:
            raise ValidationError("is required", "name")
        return cls(
            name=validate_name(body["name"]),
            pkey=PKey.user(body["pkey"]) if body.get("pkey") is not None else None,
            ipoib=_bool(body, "ipoib", False),
            settings=GroupSettings.parse(body),
            defmember=_optional_membership(body, "defmember", "defmember"),
            indx0=_bool(body, "indx0", False),
            members=parse_member_specs(
                _list(body, "members", "{guid, membership} objects"), "members", keywords=False
            ),
            keywords=parse_member_specs(
                _list(body, "keywords", "{keyword, membership} objects"), "keywords", keywords=True
            ),
            mgroups=_mgroups(body),
        )


@dataclass(frozen=True)
class PartitionPatch:
    """The fields a PATCH names; absent fields stay as stored."""

    present: frozenset[str]
    name: str | None
    ipoib: bool | None
    settings: GroupSettings
    defmember: Membership | None
    indx0: bool | None
    mgroups: list[McastGroup] | None

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> PartitionPatch:
        reject_unknown(body, PATCHABLE)
        return cls(
            present=frozenset(body),
            name=validate_name(body["name"]) if "name" in body else None,
            ipoib=_bool(body, "ipoib", False) if "ipoib" in body else None,
            settings=GroupSettings.parse(body),
            defmember=_optional_membership(body, "defmember", "defmember"),
            indx0=_bool(body, "indx0", False) if "indx0" in body else None,
            mgroups=_mgroups(body) if "mgroups" in body else None,
        )


def parse_member_change(body: Mapping[str, Any]) -> tuple[list[MemberSpec], list[MemberSpec]]:
    reject_unknown(body, {"members", "keywords"})
    if "members" not in body and "keywords" not in body:
        raise ValidationError("is required (or keywords)", "members")
    members = parse_member_specs(
        _list(body, "members", "{guid, membership} objects"), "members", keywords=False
    )
    keywords = parse_member_specs(
        _list(body, "keywords", "{keyword, membership} objects"), "keywords", keywords=True
    )
    return members, keywords


def parse_member_removal(body: Mapping[str, Any]) -> tuple[list[PortGuid | str], bool]:
    """`{"guids": [...], "keywords": [...], "missing_ok": false}`: what to remove."""
    reject_unknown(body, {"guids", "keywords", "missing_ok"})
    if "guids" not in body and "keywords" not in body:
        raise ValidationError("is required (or keywords)", "guids")
    targets: list[PortGuid | str] = []
    seen: dict[object, str] = {}
    for name, parse in (("guids", PortGuid.parse), ("keywords", parse_keyword)):
        for i, raw in enumerate(_list(body, name, "strings")):
            where = f"{name}[{i}]"
            target = parse(raw, where)
            if target in seen:
                raise ValidationError(f"{target} is listed twice (also at {seen[target]})", where)
            seen[target] = where
            targets.append(target)
    return targets, _bool(body, "missing_ok", False)
