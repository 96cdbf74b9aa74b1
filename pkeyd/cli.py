"""`pkeyd` command line: argv and environment -> Settings -> the chosen command.

This is the only module that reads the environment. Every flag of `serve` may
also come from a PKEYD_* variable (a flag wins over the variable).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
from aiohttp import web

from pkeyd import __version__, admin, logs
from pkeyd.config import (
    DEFAULT_DB_URL,
    DEFAULT_PARTITIONS_CONF,
    DEFAULT_STATE_DIR,
    Settings,
)
from pkeyd.domain import PKeyRange
from pkeyd.errors import SchemaOutdatedError
from pkeyd.opensm.check import run_check

log = structlog.get_logger("pkeyd.cli")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"PKEYD_{name}", default)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "8080"
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen {text!r}: the port must be a number")
    return host, int(port)


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=_env("DB", DEFAULT_DB_URL),
        help="SQLAlchemy URL of the store (env PKEYD_DB; default %(default)s)",
    )


def _add_opensm_options(parser: argparse.ArgumentParser) -> None:
    """How the OpenSM that reads the file is configured (mirrors opensm.conf)."""
    parser.add_argument(
        "--allow-both-pkeys",
        action="store_true",
        default=_env("ALLOW_BOTH_PKEYS", "") in ("1", "true", "yes"),
        help="accept membership 'both' (set only if opensm.conf has allow_both_pkeys TRUE)",
    )
    parser.add_argument(
        "--qos",
        action="store_true",
        default=_env("QOS", "") in ("1", "true", "yes"),
        help="accept a partition sl other than 0 (set only if opensm.conf has qos TRUE)",
    )


def _add_daemon_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=parse_listen(_env("LISTEN", "127.0.0.1:8080") or ""),
        help="HOST:PORT of the REST API (env PKEYD_LISTEN; default 127.0.0.1:8080)",
    )
    parser.add_argument(
        "--partitions-conf",
        type=Path,
        default=Path(_env("PARTITIONS_CONF", str(DEFAULT_PARTITIONS_CONF)) or ""),
        help="the partitions.conf OpenSM reads (default %(default)s)",
    )
    reload = parser.add_mutually_exclusive_group()
    reload.add_argument(
        "--opensm-pid-file",
        type=Path,
        default=_env("OPENSM_PID_FILE"),
        help="reload OpenSM by SIGHUP to the pid in this file",
    )
    reload.add_argument(
        "--reload-command",
        default=_env("RELOAD_COMMAND"),
        help="reload OpenSM by running this command, e.g. 'systemctl reload opensm'",
    )
    parser.add_argument(
        "--pkey-range",
        type=PKeyRange.parse,
        default=PKeyRange.parse(_env("PKEY_RANGE", "0x0001-0x7ffe") or ""),
        help="PKeys allocated when a client sends none (default 0x0001-0x7ffe)",
    )
    _add_opensm_options(parser)
    parser.add_argument(
        "--partition-cap",
        type=int,
        default=int(_env("PARTITION_CAP", "128") or "128"),
        help="PKey table entries per port when the fabric has not said (default 128)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(_env("STATE_DIR", str(DEFAULT_STATE_DIR)) or ""),
        help="where copies of externally edited partitions.conf files are kept",
    )
    parser.add_argument(
        "--resync-interval",
        type=float,
        default=float(_env("RESYNC_INTERVAL", "60") or "60"),
        help="seconds between passes that compare partitions.conf even without commits",
    )
    parser.add_argument(
        "--fabric-reader",
        choices=("smp", "off"),
        default=_env("FABRIC_READER", "smp"),
        help="verify PKey tables over SMPs from the local HCA port (default), or off",
    )
    parser.add_argument(
        "--verify-interval",
        type=float,
        default=float(_env("VERIFY_INTERVAL", "30") or "30"),
        help="seconds between verification passes (default 30)",
    )
    parser.add_argument(
        "--verify-settle",
        type=float,
        default=float(_env("VERIFY_SETTLE", "15") or "15"),
        help="seconds OpenSM gets after a reload before a difference counts as drift",
    )
    parser.add_argument(
        "--repair-max",
        type=int,
        default=int(_env("REPAIR_MAX", "3") or "3"),
        help="reloads tried per generation to repair drift (default 3)",
    )
    parser.add_argument(
        "--mad-timeout",
        type=float,
        default=float(_env("MAD_TIMEOUT", "0.5") or "0.5"),
        help="seconds per SMP attempt (default 0.5)",
    )
    parser.add_argument(
        "--mad-retries",
        type=int,
        default=int(_env("MAD_RETRIES", "3") or "3"),
        help="SMP retries after the first attempt (default 3)",
    )
    parser.add_argument(
        "--on-external-edit",
        choices=("restore", "hold"),
        default=_env("ON_EXTERNAL_EDIT", "restore"),
        help="when partitions.conf was edited behind pkeyd: restore pkeyd's version "
        "(default) or hold applying until an operator resumes",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    host, port = args.listen
    if args.opensm_pid_file is None and args.reload_command is None:
        raise ValueError("say how to reload OpenSM: --opensm-pid-file or --reload-command")
    return Settings(
        db_url=args.db,
        listen_host=host,
        listen_port=port,
        partitions_conf=Path(args.partitions_conf),
        opensm_pid_file=Path(args.opensm_pid_file) if args.opensm_pid_file else None,
        reload_command=tuple(shlex.split(args.reload_command)) if args.reload_command else None,
        pkey_range=args.pkey_range,
        allow_both_pkeys=args.allow_both_pkeys,
        qos=args.qos,
        default_partition_cap=args.partition_cap,
        state_dir=args.state_dir,
        on_external_edit=args.on_external_edit,
        resync_interval_s=args.resync_interval,
        fabric_reader=args.fabric_reader,
        verify_interval_s=args.verify_interval,
        verify_settle_s=args.verify_settle,
        repair_max=args.repair_max,
        mad_timeout_s=args.mad_timeout,
        mad_retries=args.mad_retries,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pkeyd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pkeyd {__version__}")
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default=_env("LOG_FORMAT", "auto"),
        help="JSON lines off a TTY, console on one (default auto)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    _add_db(serve)
    _add_daemon_options(serve)

    mig = sub.add_parser("migrate", help="bring the database schema to the newest revision")
    _add_db(mig)

    check = sub.add_parser("check", help="lint a partitions.conf with OpenSM's exact parser")
    check.add_argument("file", type=Path)
    check.add_argument("--json", action="store_true", help="machine-readable output")
    _add_opensm_options(check)

    imp = sub.add_parser("import", help="take over an existing partitions.conf into the store")
    _add_db(imp)
    imp.add_argument("file", type=Path)
    imp.add_argument("--dry-run", action="store_true", help="print what would be stored")
    imp.add_argument(
        "--replace", action="store_true", help="replace partitions already in the store"
    )
    _add_opensm_options(imp)

    rend = sub.add_parser("render", help="print or write the partitions.conf pkeyd would write")
    _add_db(rend)
    rend.add_argument("--output", type=Path, help="write atomically to this file")

    demo = sub.add_parser(
        "demo", help="run pkeyd on SQLite against a generated simulated fabric (ibsim + OpenSM)"
    )
    demo.add_argument("--hcas", type=int, default=16, help="HCAs in the fat tree (default 16)")
    demo.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 8080))
    demo.add_argument("--keep", action="store_true", help="keep the temp dir afterwards")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fmt = {"auto": None, "json": True, "console": False}[args.log_format]
    logs.configure(args.log_level, json=fmt)
    try:
        if args.command == "migrate":
            asyncio.run(admin.migrate_store(args.db))
            log.info("database_migrated")
            return 0
        if args.command == "check":
            return run_check(
                args.file,
                json_output=args.json,
                allow_both_pkeys=args.allow_both_pkeys,
                qos=args.qos,
                out=sys.stdout,
            )
        if args.command == "render":
            return asyncio.run(admin.render_store(args.db, args.output))
        if args.command == "import":
            offline = Settings(
                db_url=args.db,
                reload_command=("true",),
                allow_both_pkeys=args.allow_both_pkeys,
                qos=args.qos,
            )
            return asyncio.run(
                admin.import_file(
                    args.db, args.file, offline, dry_run=args.dry_run, replace=args.replace
                )
            )
        if args.command == "demo":
            from pkeyd.demo import run_demo  # imports the simulator only when asked

            return asyncio.run(run_demo(args.hcas, args.listen, keep=args.keep))
        return _serve(settings_from_args(args))
    except SchemaOutdatedError as exc:
        print(f"pkeyd: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"pkeyd: {exc}", file=sys.stderr)
        return 2


def _serve(settings: Settings) -> int:
    from pkeyd.api.app import create_app

    log.info(
        "pkeyd_starting",
        version=__version__,
        listen=f"{settings.listen_host}:{settings.listen_port}",
        partitions_conf=str(settings.partitions_conf),
    )
    web.run_app(
        create_app(settings),
        host=settings.listen_host,
        port=settings.listen_port,
        print=None,
        access_log=None,
        shutdown_timeout=10.0,
    )
    return 0
