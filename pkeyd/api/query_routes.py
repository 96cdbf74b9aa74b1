"""Lists: partitions filtered and paginated, the partitions of one port, revisions."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from aiohttp import web

from pkeyd.api.keys import SERVICE
from pkeyd.api.schemas import partition_json
from pkeyd.api.writing import query_bool
from pkeyd.domain import PKey, PortGuid
from pkeyd.errors import ValidationError
from pkeyd.store.listing import PartitionFilter

query_routes = web.RouteTableDef()

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_PARTITION_QUERY = {"limit", "cursor", "name", "ipoib", "guid", "pkey_min", "pkey_max"}


def _reject_unknown(request: web.Request, allowed: set[str]) -> None:
    for name in request.query:
        if name not in allowed:
            raise ValidationError(
                f"unknown query parameter; allowed: {', '.join(sorted(allowed))}", name
            )


def query_limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ValidationError(f"must be an integer 1-{MAX_LIMIT}", "limit")
    return int(raw)


def _fingerprint(what: Any) -> str:
    """Ties a cursor to the query it came from: another query may not reuse it."""
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def encode_cursor(after: int, query: Any) -> str:
    raw = json.dumps({"after": after, "query": _fingerprint(query)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(request: web.Request, query: Any) -> int | None:
    raw = request.query.get("cursor")
    if raw is None:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        after, tied = data["after"], data["query"]
    except (ValueError, binascii.Error, KeyError, TypeError):
        raise ValidationError("is not a cursor this API gave out", "cursor") from None
    if not isinstance(after, int) or tied != _fingerprint(query):
        raise ValidationError("belongs to another query: send the same filters", "cursor")
    return after


def _optional_pkey(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    return None if raw is None else PKey.parse(raw, name).value


def _partition_filter(request: web.Request) -> PartitionFilter:
    _reject_unknown(request, _PARTITION_QUERY)
    guid = request.query.get("guid")
    ipoib = request.query.get("ipoib")
    flt = PartitionFilter(
        name_prefix=request.query.get("name"),
        ipoib=None if ipoib is None else query_bool(request, "ipoib"),
        guid=None if guid is None else str(PortGuid.parse(guid, "guid")),
        pkey_min=_optional_pkey(request, "pkey_min"),
        pkey_max=_optional_pkey(request, "pkey_max"),
    )
    if flt.pkey_min is not None and flt.pkey_max is not None and flt.pkey_min > flt.pkey_max:
        raise ValidationError("must not exceed pkey_max", "pkey_min")
    return flt


@query_routes.get("/api/v1/partitions")
async def list_partitions(request: web.Request) -> web.Response:
    flt = _partition_filter(request)
    limit = query_limit(request)
    query = [flt.name_prefix, flt.ipoib, flt.guid, flt.pkey_min, flt.pkey_max]
    after = decode_cursor(request, query)
    partitions, more = await request.app[SERVICE].list_page(flt, after, limit)
    next_cursor = encode_cursor(partitions[-1].pkey.value, query) if more else None
    return web.json_response(
        {"partitions": [partition_json(p) for p in partitions], "next_cursor": next_cursor}
    )


@query_routes.get("/api/v1/ports/{guid}/partitions")
async def port_partitions(request: web.Request) -> web.Response:
    """Which partitions is this port in? Listed by GUID, or through ALL / ALL_CAS."""
    guid = PortGuid.parse(request.match_info["guid"], "guid")
    found = await request.app[SERVICE].port_partitions(guid)
    return web.json_response({"guid": str(guid), "partitions": found})
