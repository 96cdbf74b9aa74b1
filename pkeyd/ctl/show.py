"""Human output of pkeyctl: aligned tables and `key: value` blocks from the API's JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    text = [list(headers)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in text) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in text]  # fmt: skip
    return "\n".join(lines) + "\n"


def generic_table(items: Sequence[Mapping[str, Any]]) -> str:
    """Columns: every key holding a scalar, in the order first seen (for shapes pkeyctl
    does not know field by field, such as revisions)."""
    if not items:
        return "(none)\n"
    columns: list[str] = []
    for item in items:
        for key, value in item.items():
            if key not in columns and not isinstance(value, dict | list):
                columns.append(key)
    return table([c.upper() for c in columns], [[i.get(c) for c in columns] for i in items])


def block(pairs: Mapping[str, Any], indent: str = "") -> str:
    """`key: value` lines; a nested object becomes an indented block of its own."""
    width = max((len(k) for k in pairs), default=0) + 1
    lines = []
    for key, value in pairs.items():
        if isinstance(value, dict) and value:
            lines.append(f"{indent}{key}:")
            lines.append(block(value, indent + "  ").rstrip("\n"))
        else:
            lines.append(f"{indent}{(key + ':').ljust(width)} {cell(value)}")
    return "\n".join(lines) + "\n"


def partitions(items: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [p["pkey"], p["name"], p["ipoib"], len(p["members"]),
         [f"{k['keyword']}={k['membership']}" for k in p["keywords"]]]
        for p in items
    ]  # fmt: skip
    return table(["PKEY", "NAME", "IPOIB", "MEMBERS", "KEYWORDS"], rows)


_MEMBER_KEYS = ("members", "keywords", "mgroups")


def partition(p: Mapping[str, Any]) -> str:
    fields = {k: v for k, v in p.items() if k not in _MEMBER_KEYS}
    out = [block(fields)]
    if p.get("keywords"):
        rows = [[k["keyword"], k["membership"], k["index0"]] for k in p["keywords"]]
        out.append("\n" + table(["KEYWORD", "MEMBERSHIP", "INDEX0"], rows))
    members = p.get("members") or []
    rows = [[m["guid"], m["membership"], m["index0"]] for m in members]
    out.append("\n" + (table(["GUID", "MEMBERSHIP", "INDEX0"], rows) if rows else "no members\n"))
    if p.get("mgroups"):
        out.append("\n" + generic_table(p["mgroups"]))
    return "".join(out)


def drift(entries: Sequence[Mapping[str, Any]]) -> str:
    if not entries:
        return "no drift\n"
    rows = [[e["port_guid"], e["pkey"], e["kind"], e["expected"], e["actual"]] for e in entries]
    return table(["PORT", "PKEY", "KIND", "EXPECTED", "ACTUAL"], rows)


def port(answer: Mapping[str, Any]) -> str:
    info = {k: v for k, v in answer["port"].items() if k != "pkeys"}
    expected: Mapping[str, str] = answer.get("expected", {})
    actual: Mapping[str, str] = answer.get("actual", {})
    rows = [[pk, expected.get(pk), actual.get(pk)] for pk in sorted({*expected, *actual})]
    out = block(info) + "\n" + table(["PKEY", "EXPECTED", "ACTUAL"], rows)
    if answer.get("drift"):
        out += "\n" + drift(answer["drift"])
    return out


def revisions(items: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [r.get("id"), r.get("at"), r.get("actor"), r.get("action"), ",".join(r.get("pkeys", []))]
        for r in items
    ]
    return table(["ID", "AT", "ACTOR", "ACTION", "PKEYS"], rows) if rows else "(none)\n"


def revision(answer: Mapping[str, Any]) -> str:
    """One revision: its fields, then the partitions.conf lines it changed."""
    fields = {k: v for k, v in answer.items() if k not in ("changes", "diff")}
    fields["pkeys"] = ",".join(answer.get("pkeys", [])) or "-"
    diff = answer.get("diff") or "(no change to partitions.conf)\n"
    return block(fields) + "\n" + (diff if diff.endswith("\n") else diff + "\n")
