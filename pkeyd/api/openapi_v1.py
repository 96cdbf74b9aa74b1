"""The /api/v1 part of the OpenAPI document (pkeyd.api.openapi assembles it)."""

from __future__ import annotations

from typing import Any

from pkeyd.api.openapi_parts import NAME, Schema, error, json_content, nullable, obj, ref

PKEY_TEXT = {"type": "string", "pattern": "^0x[0-9a-f]{4}$", "examples": ["0x0a12"]}
GUID_TEXT = {"type": "string", "pattern": "^0x[0-9a-f]{16}$", "examples": ["0x0002c90300a1b2c3"]}
MEMBERSHIP = {"type": "string", "enum": ["full", "limited", "both"]}
KEYWORD = {"type": "string", "enum": ["ALL", "ALL_CAS", "ALL_SWITCHES", "ALL_ROUTERS", "SELF"]}
_GUID_FORMS = "0[xX][0-9a-fA-F]{16}|[0-9a-fA-F]{16}|[0-9a-fA-F]{4}(?::[0-9a-fA-F]{4}){3}"
_KEYWORDS = "ALL|ALL_CAS|ALL_SWITCHES|ALL_ROUTERS|SELF"


def _group_fields(*, answer: bool = True) -> dict[str, Schema]:
    """Multicast group flags; null (or absent) means OpenSM's default or inherited.

    A request may give one scope or a list (repeats are merged); answers
    carry the sorted list.
    """
    scope_item = {"type": "integer", "minimum": 1, "maximum": 15}
    scope: Schema = {"type": "array", "items": scope_item, "uniqueItems": True}
    if not answer:
        scope = {"anyOf": [scope_item, {"type": "array", "items": scope_item}]}
    return {
        "mtu": nullable({"type": "integer", "minimum": 1, "maximum": 5}),
        "rate": nullable({"type": "integer", "minimum": 2, "maximum": 22}),
        "sl": nullable({"type": "integer", "minimum": 0, "maximum": 15}),
        "scope": scope,
        "q_key": nullable({"type": "integer", "minimum": 1, "maximum": 0xFFFFFFFF}),
        "tclass": nullable({"type": "integer", "minimum": 1, "maximum": 255}),
        "flow_label": nullable({"type": "integer", "minimum": 1, "maximum": 0xFFFFF}),
    }


def _member(key: str, target: Schema, *, answer: bool) -> Schema:
    fields = {key: target, "membership": MEMBERSHIP, "index0": {"type": "boolean"}}
    if answer:
        return obj(fields, [key, "membership", "index0"])
    fields["membership"] = nullable(MEMBERSHIP)  # absent or null: the partition's default
    return obj(fields, [key])


def _guid_input() -> Schema:
    return {
        "type": "string",
        "pattern": f"^\\s*(?:{_GUID_FORMS})\\s*$",
        "description": "0x0002c90300a1b2c3, 0002c90300a1b2c3 or 0002:c903:00a1:b2c3",
        "examples": ["0x0002c90300a1b2c3"],
    }


def _partition_input(*, patch: bool) -> Schema:
    fields: dict[str, Schema] = {
        "name": NAME,
        "ipoib": {"type": "boolean"},
        **_group_fields(answer=False),
        "defmember": nullable(MEMBERSHIP),
        "indx0": {"type": "boolean"},
        "mgroups": {"type": "array", "items": ref("McastGroupInput")},
    }
    if patch:
        return obj(fields)
    fields["pkey"] = {
        "anyOf": [
            {"type": "string", "pattern": "^\\s*0[xX][0-9a-fA-F]{1,4}\\s*$"},
            {"type": "integer", "minimum": 1, "maximum": 0x7FFE},
            {"type": "null"},
        ],
        "description": "0x0001-0x7ffe; absent or null: the lowest free PKey of the ranges",
        "examples": ["0x0a12"],
    }
    fields["members"] = {"type": "array", "items": ref("MemberInput")}
    fields["keywords"] = {"type": "array", "items": ref("KeywordMemberInput")}
    return obj(fields, ["name"])


SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        {
            "error": obj(
                {
                    "code": {"type": "string", "examples": ["invalid"]},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "the field or parameter at fault"},
                },
                ["code", "message"],
            )
        },
        ["error"],
    ),
    "Member": _member("guid", GUID_TEXT, answer=True),
    "KeywordMember": _member("keyword", KEYWORD, answer=True),
    "MemberInput": _member("guid", _guid_input(), answer=False),
    "KeywordMemberInput": _member("keyword", KEYWORD, answer=False),
    "McastGroup": obj(
        {"mgid": {"type": "string"}, **_group_fields()},
        ["mgid", "mtu", "rate", "sl", "scope", "q_key", "tclass", "flow_label"],
    ),
    "McastGroupInput": obj(
        {
            "mgid": {
                "type": "string",
                "pattern": "^[fF][fF][0-9a-fA-F:.]*$",
                "description": "an IPv6-style multicast GID",
                "examples": ["ff12:401b:ffff::1"],
            },
            **_group_fields(answer=False),
        },
        ["mgid"],
    ),
    "Partition": obj(
        {
            "pkey": PKEY_TEXT,
            "name": {"type": "string"},
            "ipoib": {"type": "boolean"},
            **_group_fields(),
            "defmember": nullable(MEMBERSHIP),
            "indx0": {"type": "boolean"},
            "members": {"type": "array", "items": ref("Member")},
            "keywords": {"type": "array", "items": ref("KeywordMember")},
            "mgroups": {"type": "array", "items": ref("McastGroup")},
        },
        [
            "pkey",
            "name",
            "ipoib",
            "mtu",
            "rate",
            "sl",
            "scope",
            "q_key",
            "tclass",
            "flow_label",
            "defmember",
            "indx0",
            "members",
            "keywords",
            "mgroups",
        ],
    ),
    "PartitionCreate": _partition_input(patch=False),
    "PartitionPatch": _partition_input(patch=True),
    "MemberChange": obj(
        {
            "members": {"type": "array", "items": ref("MemberInput")},
            "keywords": {"type": "array", "items": ref("KeywordMemberInput")},
        }
    ),
    "Drift": obj(
        {
            "port_guid": GUID_TEXT,
            "pkey": PKEY_TEXT,
            "kind": {
                "type": "string",
                "enum": [
                    "missing",
                    "wrong_membership",
                    "unexpected",
                    "absent_member",
                    "over_capacity",
                ],
            },
            "expected": nullable({"type": "string"}),
            "actual": nullable({"type": "string"}),
        },
        ["port_guid", "pkey", "kind", "expected", "actual"],
    ),
    "PartitionStatus": obj(
        {
            "pkey": PKEY_TEXT,
            "state": {"type": "string", "enum": ["pending", "applied", "verified", "drifted"]},
            "generation": {"type": "integer"},
            "applied_generation": {"type": "integer"},
            "verified_generation": nullable({"type": "integer"}),
            "ports": {"type": "array", "items": ref("Drift")},
        },
        ["pkey", "state", "generation", "applied_generation", "verified_generation", "ports"],
    ),
    "FabricPort": {
        "type": "object",
        "properties": {
            "node_guid": GUID_TEXT,
            "port_guid": GUID_TEXT,
            "port_num": {"type": "integer"},
            "node_type": {"type": "string"},
            "node_desc": {"type": "string"},
            "lid": {"type": "integer"},
            "state": {"type": "string"},
            "partition_cap": nullable({"type": "integer"}),
            "pkeys": {"type": "array", "items": PKEY_TEXT},
            "source": {"type": "string", "enum": ["verbs", "smp"]},
        },
        "required": ["port_guid", "pkeys", "source"],
    },
    "PortTables": obj(
        {
            "port": ref("FabricPort"),
            "expected": {"type": "object", "additionalProperties": MEMBERSHIP},
            "actual": {"type": "object", "additionalProperties": MEMBERSHIP},
            "drift": {"type": "array", "items": ref("Drift")},
        },
        ["port", "expected", "actual", "drift"],
    ),
    "Status": {
        "type": "object",
        "description": "The reconciler's view: what was committed, written, reloaded, verified.",
        "properties": {
            "desired_generation": {"type": "integer"},
            "applied_generation": nullable({"type": "integer"}),
            "verified_generation": nullable({"type": "integer"}),
            "pending": {"type": "boolean"},
            "opensm_up": nullable({"type": "boolean"}),
            "held": {"type": "boolean"},
            "partitions_conf": {"type": "string"},
            "last_error": nullable({"type": "string"}),
            "reloads": {"type": "object"},
            "last_reload": nullable({"type": "object"}),
            "refused": nullable({"type": "object"}),
            "external_edit": nullable({"type": "object"}),
            "verification": {"type": "object"},
        },
        "required": [
            "desired_generation",
            "applied_generation",
            "pending",
            "held",
            "verification",
        ],
    },
    "Health": obj({"status": {"type": "string"}}, ["status"]),
}


ERRORS = {
    "400": error("the body is not JSON or not an object"),
    "404": error("no such partition or member"),
    "409": error("conflicts with stored data (name or PKey taken, port tables full...)"),
    "413": error("the body is larger than max_body_bytes"),
    "415": error("the body is not application/json"),
    "422": error("a field or parameter is invalid; `field` names it"),
    "503": error("verification is off (fabric_reader = off)"),
}


def errors(*codes: str) -> dict[str, Schema]:
    return {code: ERRORS[code] for code in codes}


PKEY_PARAM = {
    "name": "pkey",
    "in": "path",
    "required": True,
    "description": "hex, 0x0001-0x7fff (0x0a12)",
    "schema": {
        "type": "string",
        "pattern": "^\\s*0[xX][0-9a-fA-F]{1,4}\\s*$",
        "examples": ["0x0a12"],
    },
}
PORT_PARAM = {
    "name": "guid",
    "in": "path",
    "required": True,
    "description": "a port GUID",
    "schema": _guid_input(),
}
MEMBER_PARAM = {
    "name": "guid",
    "in": "path",
    "required": True,
    "description": "a member: a port GUID or a keyword",
    "schema": {
        "type": "string",
        "pattern": f"^(?:\\s*(?:{_GUID_FORMS})\\s*|{_KEYWORDS})$",
        "examples": ["0x0002c90300a1b2c3", "ALL"],
    },
}


def body(schema_name: str) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": ref(schema_name)}}}


WRITE_ERRORS = ("400", "413", "415", "422")


def v1_paths() -> dict[str, Any]:
    partition = json_content(ref("Partition"), "the partition")
    return {
        "/api/v1/partitions": {
            "post": {
                "summary": "Create a partition",
                "operationId": "createPartition",
                "requestBody": body("PartitionCreate"),
                "responses": {
                    "201": {
                        **json_content(ref("Partition"), "created"),
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    **errors(*WRITE_ERRORS, "409"),
                },
            },
        },
        "/api/v1/partitions/{pkey}": {
            "parameters": [PKEY_PARAM],
            "get": {
                "summary": "One partition",
                "operationId": "getPartition",
                "parameters": [
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "description": "an ETag: 304 while the partition still has it",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        **partition,
                        "headers": {"ETag": {"schema": {"type": "string"}}},
                    },
                    "304": {"description": "unchanged since that ETag"},
                    **errors("404", "422"),
                },
            },
            "patch": {
                "summary": "Change fields of a partition (members have their own routes)",
                "operationId": "patchPartition",
                "requestBody": body("PartitionPatch"),
                "responses": {"200": partition, **errors(*WRITE_ERRORS, "404", "409")},
            },
            "delete": {
                "summary": "Delete a partition (never the Default one)",
                "operationId": "deletePartition",
                "responses": {
                    "204": {"description": "deleted"},
                    **errors("404", "409", "422"),
                },
            },
        },
        "/api/v1/partitions/{pkey}/members": {
            "parameters": [PKEY_PARAM],
            "post": {
                "summary": "Add members or change their membership",
                "operationId": "addMembers",
                "requestBody": body("MemberChange"),
                "responses": {"200": partition, **errors(*WRITE_ERRORS, "404", "409")},
            },
            "put": {
                "summary": "Replace the whole member list (GUIDs and keywords)",
                "operationId": "replaceMembers",
                "requestBody": body("MemberChange"),
                "responses": {"200": partition, **errors(*WRITE_ERRORS, "404", "409")},
            },
        },
        "/api/v1/partitions/{pkey}/members/{guid}": {
            "parameters": [PKEY_PARAM, MEMBER_PARAM],
            "delete": {
                "summary": "Remove one member (a GUID or a keyword)",
                "operationId": "removeMember",
                "responses": {"204": {"description": "removed"}, **errors("404", "422")},
            },
        },
        "/api/v1/partitions/{pkey}/status": {
            "parameters": [PKEY_PARAM],
            "get": {
                "summary": "Whether the partition reached the ports",
                "operationId": "getPartitionStatus",
                "responses": {
                    "200": json_content(ref("PartitionStatus"), "its state on the fabric"),
                    **errors("404", "422", "503"),
                },
            },
        },
        "/api/v1/status": {
            "get": {
                "summary": "The daemon's state",
                "operationId": "getStatus",
                "responses": {
                    "200": json_content(ref("Status"), "generations, reloads, verification")
                },
            }
        },
        "/api/v1/reconcile/resume": {
            "post": {
                "summary": "After an external edit held applying: put pkeyd's file back",
                "operationId": "resumeReconcile",
                "responses": {
                    "200": json_content(obj({"held": {"type": "boolean"}}, ["held"]), "resumed")
                },
            }
        },
        "/api/v1/drift": {
            "get": {
                "summary": "Every difference the last verification found on the ports",
                "operationId": "listDrift",
                "responses": {
                    "200": json_content({"type": "array", "items": ref("Drift")}, "drift entries"),
                    **errors("503"),
                },
            }
        },
        "/api/v1/ports/{guid}": {
            "parameters": [PORT_PARAM],
            "get": {
                "summary": "A port's PKey table beside the one asked for",
                "operationId": "getPort",
                "responses": {
                    "200": json_content(ref("PortTables"), "the port"),
                    **errors("404", "422", "503"),
                },
            },
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "getOpenapi",
                "responses": {"200": json_content({"type": "object"}, "OpenAPI 3.1")},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: 503 when a background loop stopped",
                "operationId": "getHealth",
                "responses": {
                    "200": json_content(ref("Health"), "ok"),
                    "503": json_content(ref("Health"), "a loop stopped"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (docs/metrics.md)",
                "operationId": "getMetrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
