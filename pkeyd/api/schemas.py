"""JSON in and out of the HTTP layer: the body reader and the partition document."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pkeyd.domain import Partition
from pkeyd.errors import BadRequestError, UnsupportedMediaTypeError


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


def partition_json(partition: Partition, *, members: bool = True) -> dict[str, Any]:
    """The partition document; `members=False` leaves the member list out."""
    doc: dict[str, Any] = {
        "pkey": str(partition.pkey),
        "name": partition.name,
        "ipoib": partition.ipoib,
        **partition.settings.to_json(),
        "defmember": partition.defmember.value if partition.defmember else None,
        "indx0": partition.indx0,
        "keywords": [
            {"keyword": k.keyword, "membership": k.membership.value, "index0": k.index0}
            for k in partition.keywords
        ],
        "mgroups": [g.to_json() for g in partition.mgroups],
    }
    if members:
        doc["members"] = [
            {"guid": str(m.guid), "membership": m.membership.value, "index0": m.index0}
            for m in partition.members
        ]
    return doc
