"""Building blocks of the OpenAPI document (pkeyd.api.openapi, pkeyd.api.openapi_ufm)."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

# Printable ASCII but OpenSM's separators = , : ; #, no blank at either end,
# no digit first (OpenSM would read a PKey), and not "Default".
_NAME_CHAR = '[!-"$-+\\--9<>-~]'
_NAME_FIRST = '[!-"$-+\\-/<>-~]'
NAME = {
    "type": "string",
    "pattern": f"^(?!Default$){_NAME_FIRST}(?:(?:{_NAME_CHAR}| ){{0,29}}{_NAME_CHAR})?$",
    "examples": ["tenant-a"],
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    """A closed object: pkeyd rejects unknown fields, and answers only these."""
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def json_content(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> Schema:
    return json_content(ref("Error"), description)
