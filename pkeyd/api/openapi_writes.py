"""OpenAPI: lists, revisions, and what every write route honours (pkeyd.api.writing).

Write routes take `?dry_run=true` (answering a report instead of committing),
`If-Match` (412 on a stale ETag), `Prefer: return=minimal` (no document), and
the POSTs an `Idempotency-Key`. with_write_options adds those to the
operations v1_paths describes.
"""

from __future__ import annotations

from typing import Any

from pkeyd.api.openapi_parts import Schema, error, json_content, nullable, obj, ref

_WRITES_WITH_IF_MATCH = {
    "patchPartition",
    "deletePartition",
    "addMembers",
    "replaceMembers",
    "removeMembers",
    "removeMember",
}
_WRITES_WITH_IDEMPOTENCY = {"createPartition", "addMembers", "removeMembers", "restoreRevision"}
_WRITES_WITH_MINIMAL = {
    "createPartition",
    "patchPartition",
    "addMembers",
    "replaceMembers",
    "removeMembers",
}
_WRITES = _WRITES_WITH_IF_MATCH | _WRITES_WITH_IDEMPOTENCY

_CHANGE = {
    "type": "object",
    "description": "one partition's change: fields before/after, members before/after",
    "properties": {
        "pkey": {"type": "string"},
        "fields": {"type": "object"},
        "members": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["pkey", "members"],
}

SCHEMAS: dict[str, Schema] = {
    "DryRun": obj(
        {
            "dry_run": {"const": True},
            "generation": {"type": "integer", "description": "the current one: unchanged"},
            "changes": {"type": "array", "items": _CHANGE},
            "diff": {"type": "string", "description": "unified diff of partitions.conf"},
            "result": {"description": "what the write would answer"},
        },
        ["dry_run", "generation", "changes", "diff", "result"],
    ),
    "Revision": obj(
        {
            "id": {"type": "integer", "description": "the generation the change got"},
            "generation": {"type": "integer"},
            "at": {"type": "string", "format": "date-time"},
            "actor": {"type": "string", "description": "the token's name, or anonymous"},
            "action": {"type": "string"},
            "restored": nullable({"type": "integer"}),
            "pkeys": {"type": "array", "items": {"type": "string"}},
            "changes": {"type": "array", "items": _CHANGE},
            "diff": {"type": "string", "description": "(one revision only) its partitions.conf"},
        },
        ["id", "generation", "at", "actor", "action", "pkeys", "changes"],
    ),
    "MemberRemoval": obj(
        {
            "guids": {"type": "array", "items": {"type": "string"}},
            "keywords": {
                "type": "array",
                "items": {
                    "type": "string",
                    "enum": ["ALL", "ALL_CAS", "ALL_SWITCHES", "ALL_ROUTERS", "SELF"],
                },
            },
            "missing_ok": {"type": "boolean", "description": "a non-member is no error"},
        }
    ),
}

_CURSOR = {
    "name": "cursor",
    "in": "query",
    "required": False,
    "description": "next_cursor of the previous page (same filters)",
    "schema": {"type": "string"},
}
_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "pattern": "^[0-9]+$", "description": "1-1000, default 100"},
}


def _query(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def list_paths(errors: Any, pkey_param: Schema, port_param: Schema) -> dict[str, Any]:
    """GET /api/v1/partitions (paged, filtered), a port's partitions, revisions."""
    page = {"type": "object", "properties": {}, "required": ["next_cursor"]}
    partitions_page = {
        **page,
        "properties": {
            "partitions": {"type": "array", "items": ref("Partition")},
            "next_cursor": nullable({"type": "string"}),
        },
        "required": ["partitions", "next_cursor"],
        "additionalProperties": False,
    }
    revisions_page = {
        **page,
        "properties": {
            "revisions": {"type": "array", "items": ref("Revision")},
            "next_cursor": nullable({"type": "string"}),
        },
        "required": ["revisions", "next_cursor"],
        "additionalProperties": False,
    }
    boolean = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]}
    revision_param = {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
    return {
        "/api/v1/partitions": {
            "get": {
                "summary": "Partitions by PKey, a page at a time",
                "operationId": "listPartitions",
                "parameters": [
                    _LIMIT,
                    _CURSOR,
                    _query("name", "name prefix"),
                    _query("ipoib", "only with (or without) IPoIB", boolean),
                    _query("guid", "only partitions that list this port GUID"),
                    _query("pkey_min", "lowest PKey (hex)"),
                    _query("pkey_max", "highest PKey (hex)"),
                ],
                "responses": {
                    "200": json_content(partitions_page, "a page"),
                    **errors("422"),
                },
            }
        },
        "/api/v1/ports/{guid}/partitions": {
            "parameters": [port_param],
            "get": {
                "summary": "Which partitions is this port in (listed, or by ALL / ALL_CAS)?",
                "operationId": "getPortPartitions",
                "responses": {
                    "200": json_content(
                        {
                            "type": "object",
                            "properties": {
                                "guid": {"type": "string"},
                                "partitions": {"type": "array", "items": {"type": "object"}},
                            },
                            "required": ["guid", "partitions"],
                        },
                        "its partitions",
                    ),
                    **errors("422"),
                },
            },
        },
        "/api/v1/revisions": {
            "get": {
                "summary": "Committed changes, newest first",
                "operationId": "listRevisions",
                "parameters": [_LIMIT, _CURSOR, _query("pkey", "only those changing this PKey")],
                "responses": {"200": json_content(revisions_page, "a page"), **errors("422")},
            }
        },
        "/api/v1/revisions/{id}": {
            "parameters": [revision_param],
            "get": {
                "summary": "One revision and the partitions.conf lines it changed",
                "operationId": "getRevision",
                "responses": {
                    "200": json_content(ref("Revision"), "the revision"),
                    **errors("404", "422"),
                },
            },
        },
        "/api/v1/revisions/{id}/restore": {
            "parameters": [revision_param],
            "post": {
                "summary": "Make the desired state what it was right after this revision",
                "operationId": "restoreRevision",
                "responses": {
                    "200": json_content(
                        obj(
                            {
                                "generation": nullable({"type": "integer"}),
                                "changed": {"type": "boolean"},
                            },
                            ["generation", "changed"],
                        ),
                        "restored (changed false: it already was so)",
                    ),
                    **errors("400", "404", "409", "415", "422"),
                },
            },
        },
        "/api/v1/partitions/{pkey}/members/remove": {
            "parameters": [pkey_param],
            "post": {
                "summary": "Remove several members in one change",
                "operationId": "removeMembers",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("MemberRemoval")}},
                },
                "responses": {
                    "200": json_content(ref("Partition"), "the partition"),
                    **errors("400", "404", "409", "413", "415", "422"),
                },
            },
        },
    }


def _header(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


def with_write_options(paths: dict[str, Any]) -> dict[str, Any]:
    """Add dry runs, If-Match, Idempotency-Key and Prefer to the write operations."""
    for item in paths.values():
        for method in ("post", "put", "patch", "delete"):
            op = item.get(method)
            if op is None or op.get("operationId") not in _WRITES:
                continue
            op_id = op["operationId"]
            params = op.setdefault("parameters", [])
            params.append(
                {
                    "name": "dry_run",
                    "in": "query",
                    "required": False,
                    "description": "true: answer what would change (DryRun), commit nothing",
                    "schema": {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]},
                }
            )
            responses = op["responses"]
            success = next(code for code in ("201", "200", "204") if code in responses)
            # A dry run answers 200 with its report, whatever the write answers.
            if "200" in responses and "content" in responses["200"]:
                content = responses["200"]["content"]["application/json"]
                content["schema"] = {"anyOf": [content["schema"], ref("DryRun")]}
            else:
                responses["200"] = json_content(ref("DryRun"), "the dry run's report")
            if op_id in _WRITES_WITH_IF_MATCH:
                params.append(_header("If-Match", "the partition's ETag (or *): 412 if stale"))
                responses["412"] = error("If-Match names an ETag that is no longer current")
                responses[success].setdefault("headers", {})["ETag"] = {
                    "schema": {"type": "string"}
                }
            if op_id in _WRITES_WITH_IDEMPOTENCY:
                params.append(
                    _header(
                        "Idempotency-Key",
                        "a retry with the same key and request gets the first answer",
                    )
                )
            if op_id in _WRITES_WITH_MINIMAL:
                params.append(_header("Prefer", "return=minimal: no document in the answer"))
                if success == "200":
                    responses.setdefault("204", {"description": "done (Prefer: return=minimal)"})
    return paths
