"""The OpenAPI 3.1 description of the HTTP API, served at /api/v1/openapi.json.

Written by hand next to the handlers it describes (openapi_v1, openapi_ufm);
tests keep the two equal: every route the app serves is here and nothing
else is, and schemathesis checks real answers against the schemas
(tests/api/). Authentication (pkeyd.api.auth) applies when the daemon runs
with `auth` on: every operation but /healthz then documents 401 and 403.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pkeyd import __version__
from pkeyd.api.openapi_parts import Schema, error, json_content, obj, ref
from pkeyd.api.openapi_ufm import SCHEMAS as UFM_SCHEMAS
from pkeyd.api.openapi_ufm import TAG as UFM_TAG
from pkeyd.api.openapi_ufm import ufm_paths
from pkeyd.api.openapi_v1 import PKEY_PARAM, PORT_PARAM, body, errors, v1_paths
from pkeyd.api.openapi_v1 import SCHEMAS as V1_SCHEMAS
from pkeyd.api.openapi_writes import SCHEMAS as WRITE_SCHEMAS
from pkeyd.api.openapi_writes import list_paths, with_write_options

openapi_routes = web.RouteTableDef()

_METHODS = ("get", "put", "post", "patch", "delete")
_OPEN_PATHS = {"/healthz"}

TOKEN_SCHEMAS: dict[str, Schema] = {
    "Token": obj(
        {
            "name": {"type": "string"},
            "role": {"type": "string", "enum": ["reader", "operator", "admin"]},
            "prefix": {"type": "string", "description": "the first characters of the secret"},
            "created_at": {"type": "string", "format": "date-time"},
            "revoked_at": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
        },
        ["name", "role", "prefix", "created_at", "revoked_at"],
    ),
    "NewToken": obj(
        {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"},
            "role": {"type": "string", "enum": ["reader", "operator", "admin"]},
        },
        ["name", "role"],
    ),
}


def _token_paths() -> dict[str, Any]:
    token = json_content(ref("Token"), "the token (never its secret)")
    with_secret = {
        "type": "object",
        "properties": {**TOKEN_SCHEMAS["Token"]["properties"], "token": {"type": "string"}},
        "required": [*TOKEN_SCHEMAS["Token"]["required"], "token"],
        "additionalProperties": False,
    }
    created = json_content(with_secret, "created; `token` is the secret, shown this once")
    return {
        "/api/v1/tokens": {
            "get": {
                "summary": "API tokens (admin)",
                "operationId": "listTokens",
                "responses": {
                    "200": json_content(
                        obj({"tokens": {"type": "array", "items": ref("Token")}}, ["tokens"]),
                        "every token, revoked ones included",
                    )
                },
            },
            "post": {
                "summary": "Create an API token (admin)",
                "operationId": "createToken",
                "requestBody": body("NewToken"),
                "responses": {
                    "201": {**created, "headers": {"Location": {"schema": {"type": "string"}}}},
                    **errors("400", "409", "413", "415", "422"),
                },
            },
        },
        "/api/v1/tokens/{name}": {
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "delete": {
                "summary": "Revoke an API token (admin); it stays listed",
                "operationId": "revokeToken",
                "responses": {"200": token, **errors("404")},
            },
        },
    }


def _with_auth(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation but the open ones: who may call it, and the 401/403 answers."""
    for path, item in paths.items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            if path in _OPEN_PATHS:
                op["security"] = []
                continue
            op["responses"].setdefault(
                "401", error("auth is on and the token is missing, unknown or revoked")
            )
            op["responses"].setdefault(
                "403",
                error(
                    "the token's role is too low (reads need reader, writes operator, "
                    "tokens admin), or token management while auth is off"
                ),
            )
    return paths


def _api_v1_paths() -> dict[str, Any]:
    paths = v1_paths()
    for path, item in list_paths(errors, PKEY_PARAM, PORT_PARAM).items():
        paths.setdefault(path, {}).update(item)
    return with_write_options(paths)


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pkeyd",
            "version": __version__,
            "description": "InfiniBand partitions for OpenSM: desired state, fabric truth.",
        },
        "tags": [
            {
                "name": UFM_TAG,
                "description": "The PKey calls of UFM's REST API (docs/ufm-compat.md)",
            }
        ],
        # With auth off (or reads open) no credentials are needed: hence {}.
        "security": [{"bearer": []}, {"basic": []}, {}],
        "paths": _with_auth({**_api_v1_paths(), **_token_paths(), **ufm_paths()}),
        "components": {
            "schemas": {**V1_SCHEMAS, **WRITE_SCHEMAS, **TOKEN_SCHEMAS, **UFM_SCHEMAS},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a pkeyd token"},
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "any user name, a pkeyd token as the password",
                },
            },
        },
    }


@openapi_routes.get("/api/v1/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
