"""Handlers of /api/v1, /healthz and /metrics. They parse, call the service, answer."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pkeyd.api.fabric_routes import verification_status
from pkeyd.api.keys import BACKGROUND_TASKS, METRICS, RECONCILER, SERVICE, SETTINGS, VERIFIER
from pkeyd.api.schemas import partition_json, read_json_object
from pkeyd.domain import KEYWORDS, PKey, PortGuid
from pkeyd.drafts import PartitionDraft, PartitionPatch, parse_member_change

routes = web.RouteTableDef()


def _pkey(request: web.Request) -> PKey:
    return PKey.parse(request.match_info["pkey"], "pkey")


@routes.get("/api/v1/partitions")
async def list_partitions(request: web.Request) -> web.Response:
    partitions = await request.app[SERVICE].list_partitions()
    return web.json_response({"partitions": [partition_json(p) for p in partitions]})


@routes.post("/api/v1/partitions")
async def create_partition(request: web.Request) -> web.Response:
    draft = PartitionDraft.parse(await read_json_object(request))
    partition = await request.app[SERVICE].create_partition(draft)
    return web.json_response(
        partition_json(partition),
        status=201,
        headers={"Location": f"/api/v1/partitions/{partition.pkey}"},
    )


@routes.get("/api/v1/partitions/{pkey}")
async def get_partition(request: web.Request) -> web.Response:
    partition = await request.app[SERVICE].get_partition(_pkey(request))
    return web.json_response(partition_json(partition))


@routes.patch("/api/v1/partitions/{pkey}")
async def patch_partition(request: web.Request) -> web.Response:
    pkey = _pkey(request)
    patch = PartitionPatch.parse(await read_json_object(request))
    partition = await request.app[SERVICE].patch_partition(pkey, patch)
    return web.json_response(partition_json(partition))


@routes.delete("/api/v1/partitions/{pkey}")
async def delete_partition(request: web.Request) -> web.Response:
    await request.app[SERVICE].delete_partition(_pkey(request))
    return web.Response(status=204)


@routes.post("/api/v1/partitions/{pkey}/members")
async def add_members(request: web.Request) -> web.Response:
    pkey = _pkey(request)
    members, keywords = parse_member_change(await read_json_object(request))
    partition = await request.app[SERVICE].add_members(pkey, members, keywords)
    return web.json_response(partition_json(partition))


@routes.delete("/api/v1/partitions/{pkey}/members/{guid}")
async def remove_member(request: web.Request) -> web.Response:
    pkey = _pkey(request)
    raw = request.match_info["guid"]
    target = raw if raw in KEYWORDS else PortGuid.parse(raw, "guid")
    await request.app[SERVICE].remove_member(pkey, target)
    return web.Response(status=204)


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
