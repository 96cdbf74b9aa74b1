"""The UFM-compatible calls in the OpenAPI document (docs/ufm-compat.md says why each is so).

The same operations under /ufmRest, /ufmRestV2 and /ufmRestV3, and the
collection with and without its trailing slash, as pkeyd.api.ufm_routes
serves them. Errors use pkeyd's error body, as on /api/v1.
"""

from __future__ import annotations

from typing import Any

from pkeyd.api.openapi_parts import NAME, Schema, error, json_content, nullable, obj, ref
from pkeyd.api.ufm_routes import MISSING_HEADER, PREFIXES

TAG = "UFM-compatible"
_GUID = {
    "type": "string",
    "pattern": (
        "^\\s*(?:(?:0[xX])?0{0,4}[0-9a-fA-F]{16}|[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){19})\\s*$"
    ),
    "description": "16 hex digits (0x allowed; up to 20 with leading zeros; or an IPoIB address)",
    "examples": ["0002c903000e0b72"],
}
_PKEY = {
    "anyOf": [
        {"type": "string", "pattern": "^\\s*0[xX][0-9a-fA-F]{1,4}\\s*$"},
        {"type": "integer", "minimum": 1, "maximum": 0x7FFE},
    ],
    "examples": ["0x0a12"],
}
_QOS_FIELDS: dict[str, Schema] = {
    "mtu_limit": nullable({"type": "number", "enum": [2, 4], "description": "KiB"}),
    "service_level": nullable({"type": "integer", "minimum": 0, "maximum": 15}),
    "rate_limit": nullable({"type": "number", "description": "Gb/s, an IB rate (2.5 ... 600)"}),
}
_UFM_MEMBERSHIP = {"type": "string", "enum": ["full", "limited"]}

SCHEMAS: dict[str, Schema] = {
    "UfmPKey": obj(
        {
            "partition": {"type": "string"},
            "ip_over_ib": {"type": "boolean"},
            "guids": {
                "type": "array",
                "items": obj(
                    {
                        "guid": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                        "membership": _UFM_MEMBERSHIP,
                        "index0": {"type": "boolean"},
                    },
                    ["guid", "membership", "index0"],
                ),
            },
            "membership": _UFM_MEMBERSHIP,
            "index0": {"type": "boolean"},
            "qos_conf": obj(
                {
                    "mtu_limit": {"type": "number"},
                    "service_level": {"type": "integer"},
                    "rate_limit": {"type": "number"},
                },
                ["mtu_limit", "service_level", "rate_limit"],
            ),
        },
        ["partition", "ip_over_ib"],
    ),
    "UfmMemberChange": obj(
        {
            "pkey": _PKEY,
            "guids": {"type": "array", "items": _GUID},
            "membership": _UFM_MEMBERSHIP,
            "memberships": {"type": "array", "items": _UFM_MEMBERSHIP},
            "index0": {"type": "boolean"},
            "ip_over_ib": {"type": "boolean"},
        },
        ["pkey", "guids"],
    ),
    "UfmNewPKey": obj(
        {
            "pkey": _PKEY,
            "partition_name": nullable(NAME),
            "index0": {"type": "boolean"},
            "ip_over_ib": {"type": "boolean"},
            **_QOS_FIELDS,
        },
        ["pkey"],
    ),
    "UfmQosChange": obj({"pkey": _PKEY, **_QOS_FIELDS}, ["pkey"]),
    "UfmGuidRemoval": obj(
        {"pkey": _PKEY, "guids": {"type": "array", "items": _GUID}}, ["pkey", "guids"]
    ),
}


def _body(name: str) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": ref(name)}}}


_ERRORS = {
    "400": error("the body or a query flag is malformed"),
    "404": error("no such PKey"),
    "409": error("the PKey or its name exists already, or port tables are full"),
    "413": error("the body is too large"),
    "415": error("the body is not application/json"),
    "422": error("a field is invalid; `field` names it"),
}


def _errors(*codes: str) -> dict[str, Schema]:
    return {code: _ERRORS[code] for code in codes}


_FLAGS = [
    {
        "name": name,
        "in": "query",
        "required": False,
        "description": "true/false (any case), 1/0, yes/no",
        "schema": {"type": "string"},
    }
    for name in ("guids_data", "qos_conf")
]
_PKEY_PARAM = {
    "name": "pkey",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^\\s*0[xX][0-9a-fA-F]{1,4}\\s*$"},
}
_GUIDS_PARAM = {
    "name": "guids",
    "in": "path",
    "required": True,
    "description": "GUIDs separated by commas",
    "schema": {"type": "string", "examples": ["0002c903000e0b72,0002c903000e0b73"]},
}
_WRITE = ("400", "413", "415", "422")


def _op(op_id: str, summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {
        "tags": [TAG],
        "operationId": op_id,
        "summary": summary,
        "responses": responses,
        **extra,
    }


def _pkey_answer(description: str) -> Schema:
    return json_content(ref("UfmPKey"), description)


def _collection(prefix: str, suffix: str) -> Schema:
    name = prefix.strip("/") + ("Slash" if suffix else "")
    return {
        "get": _op(
            f"{name}ListPKeys",
            "Every PKey, keyed like 0xa12",
            {
                "200": json_content(
                    {"type": "object", "additionalProperties": ref("UfmPKey")}, "the PKeys"
                ),
                **_errors("400"),
            },
            parameters=_FLAGS,
        ),
        "post": _op(
            f"{name}AddGuids",
            "Add GUIDs (creates the PKey when absent)",
            {"200": _pkey_answer("the PKey"), **_errors(*_WRITE, "409")},
            requestBody=_body("UfmMemberChange"),
        ),
        "put": _op(
            f"{name}SetGuids",
            "Replace the GUID list (creates the PKey when absent)",
            {"200": _pkey_answer("the PKey"), **_errors(*_WRITE, "409")},
            requestBody=_body("UfmMemberChange"),
        ),
    }


def _paths_under(prefix: str) -> dict[str, Schema]:
    name = prefix.strip("/")
    pkeys = f"{prefix}/resources/pkeys"
    qos = {
        "200": _pkey_answer("the PKey"),
        **_errors(*_WRITE, "404"),
    }
    return {
        f"{prefix}/app/ufm_version": {
            "get": _op(
                f"{name}Version",
                "The liveness check clients call first",
                {
                    "200": json_content(
                        obj({"ufm_release_version": {"type": "string"}}, ["ufm_release_version"]),
                        "pkeyd's version",
                    )
                },
            )
        },
        f"{pkeys}/last_updated": {
            "get": _op(
                f"{name}LastUpdated",
                "When the newest change was verified on the ports (null before the first)",
                {
                    "200": json_content(
                        obj({"last_updated": nullable({"type": "string"})}, ["last_updated"]),
                        "e.g. Thu Sep  3 11:42:39 UTC 2020",
                    )
                },
            )
        },
        f"{pkeys}/add": {
            "post": _op(
                f"{name}CreatePKey",
                "Create an empty PKey",
                {"201": _pkey_answer("created"), **_errors(*_WRITE, "409")},
                requestBody=_body("UfmNewPKey"),
            )
        },
        f"{pkeys}/qos_conf": {
            "post": _op(f"{name}SetQos", "Set QoS", qos, requestBody=_body("UfmQosChange")),
            "put": _op(f"{name}PutQos", "Set QoS", qos, requestBody=_body("UfmQosChange")),
        },
        pkeys: _collection(prefix, ""),
        f"{pkeys}/": _collection(prefix, "/"),
        f"{pkeys}/{{pkey}}": {
            "parameters": [_PKEY_PARAM],
            "get": _op(
                f"{name}GetPKey",
                f"One PKey; a missing one answers 200 {{}} with {MISSING_HEADER}",
                {
                    "200": {
                        **json_content(
                            {"anyOf": [ref("UfmPKey"), {"type": "object", "maxProperties": 0}]},
                            "the PKey, or {} when it does not exist",
                        ),
                        "headers": {MISSING_HEADER: {"schema": {"type": "string"}}},
                    },
                    **_errors("400", "422"),
                },
                parameters=_FLAGS,
            ),
            "delete": _op(
                f"{name}DeletePKey",
                "Delete the PKey",
                {
                    "200": json_content({"type": "object", "maxProperties": 0}, "deleted: {}"),
                    **_errors("404", "409", "422"),
                },
            ),
        },
        f"{pkeys}/{{pkey}}/guids/{{guids}}": {
            "parameters": [_PKEY_PARAM, _GUIDS_PARAM],
            "delete": _op(
                f"{name}RemoveGuids",
                "Remove GUIDs (a non-member is a no-op)",
                {"200": _pkey_answer("the PKey"), **_errors("404", "422")},
            ),
        },
        f"{prefix}/actions/remove_guids_from_pkey": {
            "post": _op(
                f"{name}RemoveGuidsAction",
                "Remove GUIDs (the deprecated form)",
                {"200": _pkey_answer("the PKey"), **_errors(*_WRITE, "404")},
                requestBody=_body("UfmGuidRemoval"),
            )
        },
    }


def ufm_paths() -> dict[str, Schema]:
    paths: dict[str, Schema] = {}
    for prefix in PREFIXES:
        paths.update(_paths_under(prefix))
    return paths
