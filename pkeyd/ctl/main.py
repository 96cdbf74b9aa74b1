"""`pkeyctl`: list, show, create and delete partitions, change members, look at the fabric.

Human tables by default, the API's own JSON with --json. Exit status: 0 done,
1 pkeyd refused the call (its error is printed), 2 a usage or configuration
error, 3 pkeyd could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from pkeyd import __version__
from pkeyd.ctl import show
from pkeyd.ctl.http import Api, ApiError, UnreachableError, segment
from pkeyd.ctl.settings import DEFAULT_URL, CtlConfigError, environment, resolve
from pkeyd.domain import KEYWORDS

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
Command = Callable[[Api, argparse.Namespace], tuple[Any, str]]


def member_specs(texts: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """`GUID[=membership]` or `KEYWORD[=membership]` as the body of a member change."""
    body: dict[str, list[dict[str, str]]] = {"members": [], "keywords": []}
    for text in texts:
        target, sep, membership = text.partition("=")
        if target in KEYWORDS:
            item = {"keyword": target}
            body["keywords"].append(item)
        else:
            item = {"guid": target}
            body["members"].append(item)
        if sep:
            item["membership"] = membership
    return body


def _partition_path(pkey: str) -> str:
    return f"/api/v1/partitions/{segment(pkey)}"


def cmd_list(api: Api, _args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("GET", "/api/v1/partitions")
    return answer, show.partitions(answer["partitions"])


def cmd_show(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("GET", _partition_path(args.pkey))
    return answer, show.partition(answer)


def cmd_create(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    body: dict[str, Any] = {"name": args.name, **member_specs(args.member)}
    if args.pkey is not None:
        body["pkey"] = args.pkey
    if args.ipoib:
        body["ipoib"] = True
    answer = api.call("POST", "/api/v1/partitions", body)
    return answer, f"created partition {answer['pkey']}\n\n" + show.partition(answer)


def cmd_delete(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    api.call("DELETE", _partition_path(args.pkey))
    return {"deleted": args.pkey}, f"deleted partition {args.pkey}\n"


def cmd_add_members(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("POST", _partition_path(args.pkey) + "/members", member_specs(args.members))
    return answer, show.partition(answer)


def cmd_remove_members(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    """One DELETE per member; the first refusal stops, and says what was removed before it."""
    removed: list[str] = []
    for target in args.targets:
        try:
            api.call("DELETE", f"{_partition_path(args.pkey)}/members/{segment(target)}")
        except ApiError as exc:
            if removed:
                exc.message += f" (already removed: {', '.join(removed)})"
            raise
        removed.append(target)
    return {"removed": removed}, f"removed {len(removed)} from {args.pkey}: {', '.join(removed)}\n"


def cmd_status(api: Api, _args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("GET", "/api/v1/status")
    return answer, show.block(answer)


def cmd_drift(api: Api, _args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("GET", "/api/v1/drift")
    return answer, show.drift(answer)


def cmd_ports(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answers = [api.call("GET", f"/api/v1/ports/{segment(g)}") for g in args.guids]
    text = "\n".join(show.port(a) for a in answers)
    return (answers[0] if len(answers) == 1 else answers), text


def cmd_revisions(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    if args.id is not None:
        answer = api.call("GET", f"/api/v1/revisions/{segment(args.id)}")
        return answer, show.revision(answer)
    query = f"?pkey={segment(args.pkey)}" if args.pkey else ""
    answer = api.call("GET", f"/api/v1/revisions{query}")
    return answer, show.revisions(answer.get("revisions", []))


def cmd_restore(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    answer = api.call("POST", f"/api/v1/revisions/{segment(args.id)}/restore")
    if not answer.get("changed"):
        return answer, f"the desired state already is as of revision {args.id}\n"
    return answer, f"restored revision {args.id} as generation {answer.get('generation')}\n"


def cmd_tokens(api: Api, args: argparse.Namespace) -> tuple[Any, str]:
    """Token management over the API (admin role; `pkeyd token` does it on the store)."""
    if args.action == "create":
        if args.name is None or args.role is None:
            raise CtlConfigError("tokens create needs NAME and --role")
        answer = api.call("POST", "/api/v1/tokens", {"name": args.name, "role": args.role})
        text = (
            f"Created token {answer['name']!r} with role {answer['role']}. "
            "Copy it now: pkeyd keeps only its hash.\n" + answer["token"] + "\n"
        )
        return answer, text
    if args.action == "revoke":
        if args.name is None:
            raise CtlConfigError("tokens revoke needs NAME")
        answer = api.call("DELETE", f"/api/v1/tokens/{segment(args.name)}")
        return answer, f"token {args.name!r} revoked at {answer['revoked_at']}\n"
    answer = api.call("GET", "/api/v1/tokens")
    return answer, show.generic_table(answer["tokens"])


def build_parser() -> argparse.ArgumentParser:
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the API's JSON"
    )
    parser = argparse.ArgumentParser(
        prog="pkeyctl",
        description="Operate pkeyd over its REST API.",
        epilog="Address and token: flags, else PKEYCTL_URL / PKEYCTL_TOKEN / PKEYCTL_CACERT, "
        "else the config file (--config, $PKEYCTL_CONFIG, ~/.config/pkeyctl/config.toml: "
        "url, token, token_file, cacert). Exit 0 done, 1 refused by pkeyd, 2 usage or "
        "configuration, 3 pkeyd unreachable.",
        parents=[output],
    )
    parser.add_argument("--version", action="version", version=f"pkeyctl {__version__}")
    parser.add_argument("--url", help=f"pkeyd's address (default {DEFAULT_URL})")
    parser.add_argument("--token", help="API token (visible to `ps`: prefer --token-file)")
    parser.add_argument("--token-file", type=Path, metavar="PATH", help="read the token here")
    parser.add_argument("--cacert", type=Path, metavar="PATH", help="trust this CA (PEM)")
    parser.add_argument("--config", type=Path, metavar="PATH", help="pkeyctl's TOML file")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, parents=[output])
        p.set_defaults(func=func)
        return p

    command("list", cmd_list, "every partition")
    command("show", cmd_show, "one partition with its members").add_argument("pkey")
    create = command("create", cmd_create, "create a partition")
    create.add_argument("name")
    create.add_argument("--pkey", help="e.g. 0x0a12 (default: the lowest free one)")
    create.add_argument("--ipoib", action="store_true", help="with an IPoIB broadcast group")
    create.add_argument(
        "--member", action="append", default=[], metavar="GUID[=MEMBERSHIP]",
        help="a member port or keyword (ALL, SELF...); full, limited or both; repeatable",
    )  # fmt: skip
    command("delete", cmd_delete, "delete a partition").add_argument("pkey")
    add = command("add-members", cmd_add_members, "add members or change their membership")
    add.add_argument("pkey")
    add.add_argument("members", nargs="+", metavar="GUID[=MEMBERSHIP]")
    remove = command("remove-members", cmd_remove_members, "remove members (GUIDs or keywords)")
    remove.add_argument("pkey")
    remove.add_argument("targets", nargs="+", metavar="GUID")
    command("status", cmd_status, "generations, reloads, verification")
    command("drift", cmd_drift, "differences found on the ports")
    command("ports", cmd_ports, "ports' real PKey tables").add_argument("guids", nargs="+")
    revisions = command("revisions", cmd_revisions, "the desired state's history, or one entry")
    revisions.add_argument("id", nargs="?")
    revisions.add_argument("--pkey", help="only the revisions that changed this PKey")
    command("restore", cmd_restore, "make a revision the desired state again").add_argument("id")
    tokens = command("tokens", cmd_tokens, "list, create or revoke API tokens (admin)")
    tokens.add_argument("action", choices=["list", "create", "revoke"])
    tokens.add_argument("name", nargs="?")
    tokens.add_argument("--role", choices=["reader", "operator", "admin"])
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        settings = resolve(
            url=args.url,
            token=args.token,
            token_file=args.token_file,
            cacert=args.cacert,
            config=args.config,
            environ=environment() if environ is None else environ,
            warn=err,
        )
        api = Api(settings.url, settings.token, settings.tls(), args.timeout)
        answer, text = args.func(api, args)
    except CtlConfigError as exc:
        err.write(f"pkeyctl: {exc}\n")
        return EXIT_USAGE
    except ApiError as exc:
        err.write(f"pkeyctl: {exc}\n")
        return EXIT_REFUSED
    except UnreachableError as exc:
        err.write(f"pkeyctl: {exc}\n")
        return EXIT_UNREACHABLE
    if getattr(args, "json", False):
        out.write(json.dumps(answer, indent=2) + "\n")
    else:
        out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
