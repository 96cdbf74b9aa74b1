"""`pkeyd token create|list|revoke`: API tokens, straight in the store.

The daemon need not run. A running daemon sees a new token at its first use
and stops accepting a revoked one within its `auth_cache_s`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO

from pkeyd.admin import open_store
from pkeyd.auth import Role, TokenInfo, TokenService
from pkeyd.errors import PkeydError


def add_token_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> list[argparse.ArgumentParser]:
    """The `token` command; returns its leaf parsers, which take --config and --db."""
    token = sub.add_parser("token", help="create, list or revoke API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser(
        "create", help="create a token and print it (alone, on the last line); it is not kept"
    )
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--name", required=True, help="who uses it; shown in the audit trail")
    listing = token_sub.add_parser("list", help="every token: name, role, prefix, dates")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    revoke = token_sub.add_parser("revoke", help="revoke a token for good")
    revoke.add_argument("name")
    return [create, listing, revoke]


async def run_token_command(
    args: argparse.Namespace, db_url: str, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """0 done; 2 refused (the message on stderr names the reason)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        async with open_store(db_url) as sessions:
            service = TokenService(sessions)
            if args.token_command == "create":
                info, secret = await service.create(args.name, Role(args.role))
                out.write(
                    f"Created token {info.name!r} with role {info.role.value}. "
                    "Copy it now: pkeyd keeps only its hash.\n"
                )
                out.write(secret + "\n")
                return 0
            if args.token_command == "list":
                tokens = await service.list_tokens()
                if args.json:
                    out.write(json.dumps([t.to_json() for t in tokens], indent=2) + "\n")
                else:
                    out.write(format_table(tokens))
                return 0
            info = await service.revoke(args.name)
            out.write(f"Token {info.name!r} revoked at {_when(info.revoked_at)}.\n")
            return 0
    except PkeydError as exc:
        err.write(f"pkeyd: {exc.message}\n")
        return 2


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_table(tokens: Sequence[TokenInfo]) -> str:
    rows = [("NAME", "ROLE", "PREFIX", "CREATED", "REVOKED")]
    rows += [
        (t.name, t.role.value, t.prefix + "...", _when(t.created_at), _when(t.revoked_at))
        for t in tokens
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    return "\n".join(lines) + "\n"
