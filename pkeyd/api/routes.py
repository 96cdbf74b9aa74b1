"""Handlers of /api/v1, /healthz and /metrics. They parse, call the service, answer."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pkeyd.api.fabric_routes import verification_status
from pkeyd.api.keys import (
    BACKGROUND_TASKS,
    BODIES,
    METRICS,
    RECONCILER,
    SERVICE,
    SETTINGS,
    VERIFIER,
)
from pkeyd.api.schemas import read_json_object
from pkeyd.api.writing import (
    check_count,
    member_limit,
    no_content,
    options,
    partition_answer,
    write,
)
from pkeyd.domain import KEYWORDS, Partition, PKey, PortGuid
from pkeyd.drafts import (
    PartitionDraft,
    PartitionPatch,
    parse_member_change,
    parse_member_removal,
)
from pkeyd.writes import Answer, partition_etag

routes = web.RouteTableDef()


def _pkey(request: web.Request) -> PKey:
    return PKey.parse(request.match_info["pkey"], "pkey")


@routes.post("/api/v1/partitions")
async def create_partition(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    check_count(body, ("members", "keywords"), member_limit(request))
    draft = PartitionDraft.parse(body)

    def answer(partition: Partition) -> Answer:
        location = f"/api/v1/partitions/{partition.pkey}"
        return partition_answer(partition, 201, Location=location)

    opts = options(request, body=body, answer=answer)
    return await write(request, request.app[SERVICE].create_op(draft, opts), opts, answer)


@routes.get("/api/v1/partitions/{pkey}")
async def get_partition(request: web.Request) -> web.Response:
    partition = await request.app[SERVICE].get_partition(_pkey(request))
    tag = partition_etag(partition)
    if tag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers={"ETag": tag})
    return web.Response(
        body=request.app[BODIES].partition(partition),
        content_type="application/json",
        headers={"ETag": tag},
    )


@routes.patch("/api/v1/partitions/{pkey}")
async def patch_partition(request: web.Request) -> web.Response:
    pkey = _pkey(request)
    patch = PartitionPatch.parse(await read_json_object(request))
    opts = options(request)
    op = request.app[SERVICE].patch_op(pkey, patch, opts)
    return await write(request, op, opts, partition_answer)


@routes.delete("/api/v1/partitions/{pkey}")
async def delete_partition(request: web.Request) -> web.Response:
    """A repeated DELETE answers 404: the partition is gone either way."""
    opts = options(request)
    op = request.app[SERVICE].delete_op(_pkey(request), opts)
    return await write(request, op, opts, no_content)


async def _member_body(request: web.Request) -> tuple[dict[str, Any], Any, Any]:
    body = await read_json_object(request)
    check_count(body, ("members", "keywords"), member_limit(request))
    members, keywords = parse_member_change(body)
    return body, members, keywords


@routes.post("/api/v1/partitions/{pkey}/members")
async def add_members(request: web.Request) -> web.Response:
    pkey = _pkey(request)
    body, members, keywords = await _member_body(request)
    opts = options(request, body=body, answer=partition_answer)
    op = request.app[SERVICE].add_members_op(pkey, members, keywords, opts)
    return await write(request, op, opts, partition_answer)


@routes.put("/api/v1/partitions/{pkey}/members")
async def replace_members(request: web.Request) -> web.Response:
    pkey = _pkey(request)
    _, members, keywords = await _member_body(request)
    opts = options(request)
    op = request.app[SERVICE].replace_members_op(pkey, members, keywords, opts)
    return await write(request, op, opts, partition_answer)


@routes.post("/api/v1/partitions/{pkey}/members/remove")
async def remove_members(request: web.Request) -> web.Response:
    pkey = _pkey(request)
    body = await read_json_object(request)
    check_count(body, ("guids", "keywords"), member_limit(request))
    targets, missing_ok = parse_member_removal(body)
    opts = options(request, body=body, answer=partition_answer)
    op = request.app[SERVICE].remove_members_op(pkey, targets, missing_ok=missing_ok, opts=opts)
    return await write(request, op, opts, partition_answer)


@routes.delete("/api/v1/partitions/{pkey}/members/{guid}")
async def remove_member(request: web.Request) -> web.Response:
    pkey = _pkey(request)
    raw = request.match_info["guid"]
    target = raw if raw in KEYWORDS else PortGuid.parse(raw, "guid")
    opts = options(request)
    op = request.app[SERVICE].remove_members_op(pkey, [target], field="guid", opts=opts)
    return await write(request, op, opts, no_content)


@routes.get("/api/v1/status")
async def status(request: web.Request) -> web.Response:
    desired = await request.app[SERVICE].desired_generation()
    rec = request.app[RECONCILER].status
    last = rec.last_reload
    body: dict[str, Any] = {
        "desired_generation": desired,
        "applied_generation": rec.applied_generation,
        "pending": rec.applied_generation != desired,
        "opensm_up": rec.opensm_up,
        "reloads": {"ok": rec.reloads["ok"], "error": rec.reloads["error"]},
        "last_reload": None
        if last is None
        else {
            "result": last.result,
            "generation": last.generation,
            "at": last.at.isoformat(),
            "error": last.error,
        },
        "last_error": rec.last_error,
        "partitions_conf": str(request.app[SETTINGS].partitions_conf),
        "held": rec.held,
        "refused": None
        if rec.refused is None
        else {
            "generation": rec.refused.generation,
            "at": rec.refused.at.isoformat(),
            "problems": rec.refused.problems,
        },
        "external_edit": None
        if rec.external_edit is None
        else {
            "kind": rec.external_edit.kind,
            "at": rec.external_edit.at.isoformat(),
            "saved_to": str(rec.external_edit.saved_to) if rec.external_edit.saved_to else None,
        },
        **verification_status(request.app[VERIFIER]),
    }
    return web.json_response(body)


@routes.post("/api/v1/reconcile/resume")
async def resume(request: web.Request) -> web.Response:
    """After an external edit held applying: put pkeyd's version back."""
    request.app[RECONCILER].resume()
    return web.json_response({"held": False})


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    stopped = sorted(name for name, t in request.app[BACKGROUND_TASKS].items() if t.done())
    if stopped:
        return web.json_response({"status": f"stopped: {', '.join(stopped)}"}, status=503)
    return web.json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[METRICS].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})
