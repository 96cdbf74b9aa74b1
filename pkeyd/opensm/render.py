"""Render the desired state as OpenSM's partitions.conf.

Deterministic: the same desired state gives the same bytes. Every line stays
far below the 4 KiB fgets buffer of OpenSM's parser: long member lists are
continued by repeating the whole statement header, which OpenSM merges into
the first definition of that PKey (repeating the flags too keeps the
partition's SL and IPoIB group identical on every statement).
"""

from __future__ import annotations

import hashlib
import re

from pkeyd.domain import DEFAULT_PKEY, DesiredState, Partition

MEMBERS_PER_LINE = 48  # 48 x 29 bytes: about 1.4 KiB per line
HEADER_PREFIX = "# partitions.conf for OpenSM, written by pkeyd"
_GENERATION_RE = re.compile(r"^# generation: (\d+)$", re.MULTILINE)
_MEMBER_SPEC = re.compile(
    r"^\s*(ALL|ALL_CAS|ALL_SWITCHES|ALL_ROUTERS|SELF|0x[0-9a-fA-F]{16})"
    r"(=(full|limited|both))?\s*$"
)


def validate_default_members(spec: str) -> str:
    """Check the configured member list of the Default partition (0x7fff)."""
    entries = spec.split(",")
    if not spec.strip() or not all(_MEMBER_SPEC.match(e) for e in entries):
        raise ValueError(
            f"default partition members {spec!r}: write entries like "
            "'ALL=limited, SELF=full' (keywords ALL, ALL_CAS, ALL_SWITCHES, ALL_ROUTERS, "
            "SELF or 0x-prefixed 16-digit GUIDs, each optionally =full|limited|both)"
        )
    return ", ".join(e.strip() for e in entries)


def _statement_header(partition: Partition) -> str:
    flags = ", ipoib" if partition.ipoib else ""
    return f"{partition.name}={partition.pkey}{flags} :"


def _render_partition(partition: Partition) -> list[str]:
    header = _statement_header(partition)
    if not partition.members:
        # OpenSM deletes member-less partitions anyway; a comment keeps the
        # file honest about what is stored without risking a parse quirk.
        return [f"# {header} no members yet"]
    entries = [f"{m.guid}={m.membership.value}" for m in partition.members]
    return [
        f"{header} {', '.join(entries[i : i + MEMBERS_PER_LINE])} ;"
        for i in range(0, len(entries), MEMBERS_PER_LINE)
    ]


def render(state: DesiredState, default_members: str) -> str:
    """The whole file: a header naming pkeyd, the generation and a content hash."""
    body_lines = [f"Default=0x{DEFAULT_PKEY:04x}, ipoib : {default_members} ;"]
    for partition in sorted(state.partitions, key=lambda p: p.pkey):
        body_lines.extend(_render_partition(partition))
    body = "\n".join(body_lines) + "\n"
    digest = hashlib.sha256(body.encode("ascii")).hexdigest()
    header = (
        f"{HEADER_PREFIX}. Do not edit: pkeyd rewrites it.\n"
        f"# generation: {state.generation}\n"
        f"# sha256: {digest}\n"
    )
    return header + body


def rendered_generation(text: str) -> int | None:
    """The generation in a file pkeyd wrote, or None for any other file."""
    if not text.startswith(HEADER_PREFIX):
        return None
    match = _GENERATION_RE.search(text)
    return int(match.group(1)) if match else None
