"""JSON bodies in and out. Strict: unknown fields and wrong types are 422s naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pkeyd.domain import Member, Membership, Partition, PKey, PortGuid, validate_name
from pkeyd.errors import (
    BadRequestError,
    UnsupportedMediaTypeError,
    ValidationError,
)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise UnsupportedMediaTypeError(
            f"send the body as application/json, not {request.content_type or 'nothing'}"
        )
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequestError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequestError("body must be a JSON object")
    return body


def reject_unknown(body: Mapping[str, Any], allowed: set[str], prefix: str = "") -> None:
    for key in body:
        if key not in allowed:
            raise ValidationError(
                f"unknown field; allowed: {', '.join(sorted(allowed))}", f"{prefix}{key}"
            )


def _bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise ValidationError("must be true or false", key)
    return value


def parse_members(raw: object, field: str = "members") -> list[Member]:
    if not isinstance(raw, list):
        raise ValidationError("must be a list of {guid, membership} objects", field)
    members: list[Member] = []
    seen: dict[PortGuid, int] = {}
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise ValidationError("must be an object {guid, membership}", where)
        reject_unknown(item, {"guid", "membership"}, f"{where}.")
        if "guid" not in item:
            raise ValidationError("is required", f"{where}.guid")
        guid = PortGuid.parse(item["guid"], f"{where}.guid")
        membership = Membership.parse(item.get("membership", "full"), f"{where}.membership")
        if guid in seen:
            raise ValidationError(
                f"{guid} is listed twice (also at {field}[{seen[guid]}])", f"{where}.guid"
            )
        seen[guid] = i
        members.append(Member(guid, membership))
    return members


@dataclass(frozen=True)
class CreatePartition:
    name: str
    pkey: PKey | None
    ipoib: bool
    members: list[Member]

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> CreatePartition:
        reject_unknown(body, {"name", "pkey", "ipoib", "members"})
        if "name" not in body:
            raise ValidationError("is required", "name")
        name = validate_name(body["name"])
        pkey = PKey.user(body["pkey"]) if body.get("pkey") is not None else None
        members = parse_members(body.get("members", []))
        return cls(name, pkey, _bool(body, "ipoib", False), members)


def parse_member_list(body: Mapping[str, Any]) -> list[Member]:
    reject_unknown(body, {"members"})
    if "members" not in body:
        raise ValidationError("is required", "members")
    return parse_members(body["members"])


def partition_json(partition: Partition) -> dict[str, Any]:
    return {
        "pkey": str(partition.pkey),
        "name": partition.name,
        "ipoib": partition.ipoib,
        "members": [
            {"guid": str(m.guid), "membership": m.membership.value} for m in partition.members
        ],
    }
