"""Revisions: who changed what and when, each change's diff, and restoring one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pkeyd.api.keys import SERVICE
from pkeyd.api.query_routes import decode_cursor, encode_cursor, query_limit
from pkeyd.api.schemas import read_json_object
from pkeyd.api.writing import options, write
from pkeyd.domain import PKey
from pkeyd.errors import ValidationError
from pkeyd.store.journal import Revision
from pkeyd.writes import Answer

history_routes = web.RouteTableDef()


def _revision_json(revision: Revision) -> dict[str, Any]:
    return {
        "id": revision.generation,
        "generation": revision.generation,
        "at": revision.at.isoformat(),
        "actor": revision.actor,
        "action": revision.action,
        "restored": revision.restored,
        "pkeys": [str(d.pkey) for d in revision.changes],
        "changes": [d.to_json() for d in revision.changes],
    }


def _revision_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or int(raw) < 1:
        raise ValidationError("must be a revision id (a positive integer)", "id")
    return int(raw)


@history_routes.get("/api/v1/revisions")
async def list_revisions(request: web.Request) -> web.Response:
    for name in request.query:
        if name not in ("limit", "cursor", "pkey"):
            raise ValidationError("unknown query parameter; allowed: cursor, limit, pkey", name)
    limit = query_limit(request)
    raw_pkey = request.query.get("pkey")
    pkey = None if raw_pkey is None else PKey.parse(raw_pkey, "pkey")
    query = [None if pkey is None else pkey.value]
    before = decode_cursor(request, query)
    found = await request.app[SERVICE].revisions(before=before, pkey=pkey, limit=limit + 1)
    page = found[:limit]
    next_cursor = encode_cursor(page[-1].generation, query) if len(found) > limit else None
    return web.json_response(
        {"revisions": [_revision_json(r) for r in page], "next_cursor": next_cursor}
    )


@history_routes.get("/api/v1/revisions/{id}")
async def get_revision(request: web.Request) -> web.Response:
    revision, diff = await request.app[SERVICE].revision(_revision_id(request))
    return web.json_response({**_revision_json(revision), "diff": diff})


def _restored(generation: int | None) -> Answer:
    return Answer(200, {"generation": generation, "changed": generation is not None})


@history_routes.post("/api/v1/revisions/{id}/restore")
async def restore(request: web.Request) -> web.Response:
    """Make the desired state what it was right after this revision (a new revision)."""
    generation = _revision_id(request)
    body = await read_json_object(request) if request.can_read_body else {}
    if body:
        raise ValidationError("takes no fields", next(iter(body)))
    opts = options(request, body=body, answer=_restored)
    return await write(request, request.app[SERVICE].restore_op(generation, opts), opts, _restored)
