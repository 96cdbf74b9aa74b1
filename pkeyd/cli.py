"""`pkeyd` command line: config file, environment and argv -> Settings -> the chosen command.

This is the only module that reads the environment. Every setting has a key
in the TOML config file (the Settings field name), and most have a flag and a
PKEYD_* variable. Precedence, highest first: command-line flags, PKEYD_*
environment variables, the config file (--config PATH, else $PKEYD_CONFIG,
else /etc/pkeyd/pkeyd.toml if it exists), built-in defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from pkeyd import __version__, admin, configfile, logs
from pkeyd.config import DEFAULT_DB_URL, Settings
from pkeyd.configfile import DEFAULT_CONFIG_PATH, FIELDS, ConfigError
from pkeyd.daemon import serve
from pkeyd.errors import SchemaOutdatedError
from pkeyd.opensm.check import run_check
from pkeyd.tokencli import add_token_parser, run_token_command

log = structlog.get_logger("pkeyd.cli")

PRECEDENCE = (
    "Settings come from, highest first: command-line flags, PKEYD_* environment "
    "variables, the TOML config file (--config PATH, else $PKEYD_CONFIG, else "
    f"{DEFAULT_CONFIG_PATH} if it exists), built-in defaults. "
    "`pkeyd config show` prints the result."
)


@dataclass(frozen=True)
class Option:
    """One setting on the command line: its Settings field, flag and variable."""

    field: str
    flag: str
    env: str
    help: str
    metavar: str | None = None


LOG_OPTIONS = (
    Option("log_level", "--log-level", "LOG_LEVEL", "log threshold"),
    Option("log_format", "--log-format", "LOG_FORMAT", "JSON lines off a TTY, console on one"),
)
DB = Option("db_url", "--db", "DB", "SQLAlchemy URL of the store", "URL")
ALLOW_BOTH = Option(
    "allow_both_pkeys", "--allow-both-pkeys", "ALLOW_BOTH_PKEYS",
    "accept membership 'both' (only if opensm.conf has allow_both_pkeys TRUE)",
)  # fmt: skip
QOS = Option("qos", "--qos", "QOS", "accept an sl other than 0 (only if opensm.conf has qos TRUE)")
PID_FILE = Option(
    "opensm_pid_file", "--opensm-pid-file", "OPENSM_PID_FILE",
    "reload OpenSM by SIGHUP to the pid in this file", "PATH",
)  # fmt: skip
RELOAD_COMMAND = Option(
    "reload_command", "--reload-command", "RELOAD_COMMAND",
    "reload OpenSM by running this command, e.g. 'systemctl reload opensm@GUID.service'", "CMD",
)  # fmt: skip
# Field, flag, variable (PKEYD_...), help, metavar; S is seconds.
# fmt: off
_SPECS = (
    ("partitions_conf", "--partitions-conf", "PARTITIONS_CONF", "the file OpenSM reads", "PATH"),
    ("reload_timeout_s", "--reload-timeout", "RELOAD_TIMEOUT", "reload command limit", "S"),
    ("pkey_range", "--pkey-range", "PKEY_RANGE", "where PKeys are allocated", "LOW-HIGH"),
    ("pkey_ranges", "--pkey-ranges", "PKEY_RANGES", "several such ranges", "LOW-HIGH,..."),
    ("default_partition_cap", "--partition-cap", "PARTITION_CAP", "PKeys per port", "N"),
    ("state_dir", "--state-dir", "STATE_DIR", "copies of external edits go here", "PATH"),
    ("on_external_edit", "--on-external-edit", "ON_EXTERNAL_EDIT", "restore or hold"),
    ("coalesce_delay_s", "--coalesce-delay", "COALESCE_DELAY", "pause before a pass", "S"),
    ("coalesce_max_s", "--coalesce-max", "COALESCE_MAX", "longest such wait", "S"),
    ("min_reload_interval_s", "--min-reload-interval", "MIN_RELOAD_INTERVAL", "", "S"),
    ("resync_interval_s", "--resync-interval", "RESYNC_INTERVAL", "pass without commits", "S"),
    ("retry_min_s", "--retry-min", "RETRY_MIN", "first retry after a failed pass", "S"),
    ("retry_max_s", "--retry-max", "RETRY_MAX", "longest retry backoff", "S"),
    ("max_body_bytes", "--max-body-bytes", "MAX_BODY_BYTES", "request size limit", "N"),
    ("max_members_per_request", "--max-members-per-request", "MAX_MEMBERS_PER_REQUEST",
     "GUIDs one request may name", "N"),
    ("idempotency_ttl_s", "--idempotency-ttl", "IDEMPOTENCY_TTL", "keys kept this long", "S"),
    ("revision_ttl_s", "--revision-ttl", "REVISION_TTL", "revisions kept this long (0: all)", "S"),
    ("cache_refresh_s", "--cache-refresh", "CACHE_REFRESH", "other writers seen within", "S"),
    ("fabric_reader", "--fabric-reader", "FABRIC_READER", "verify PKey tables over SMPs"),
    ("verify_interval_s", "--verify-interval", "VERIFY_INTERVAL", "between passes", "S"),
    ("verify_settle_s", "--verify-settle", "VERIFY_SETTLE", "OpenSM's time to sweep", "S"),
    ("repair_max", "--repair-max", "REPAIR_MAX", "reloads tried per generation on drift", "N"),
    ("mad_timeout_s", "--mad-timeout", "MAD_TIMEOUT", "per SMP attempt", "S"),
    ("mad_retries", "--mad-retries", "MAD_RETRIES", "SMP retries after the first", "N"),
    ("auth", "--auth", "AUTH", "require API tokens (pkeyd token create)"),
    ("auth_open_reads", "--auth-open-reads", "AUTH_OPEN_READS", "API reads need no token"),
    ("auth_metrics", "--auth-metrics", "AUTH_METRICS", "/metrics needs a reader token"),
    ("auth_cache_s", "--auth-cache", "AUTH_CACHE", "revocations apply within", "S"),
    ("insecure_no_auth", "--insecure-no-auth", "INSECURE_NO_AUTH", "non-loopback, no auth"),
    ("tls_cert", "--tls-cert", "TLS_CERT", "PEM certificate chain: serve HTTPS", "PATH"),
    ("tls_key", "--tls-key", "TLS_KEY", "PEM private key of tls_cert", "PATH"),
)
# fmt: on
DAEMON_OPTIONS = (DB, ALLOW_BOTH, QOS, *(Option(*spec) for spec in _SPECS))
LISTEN_ENV = "LISTEN"


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "8080"
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen {text!r}: the port must be a number")
    return host, int(port)


def _default_text(name: str) -> str:
    if name == "log_level":
        return "info"
    if name == "log_format":
        return "auto"
    for f in dataclasses.fields(Settings):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return "unset" if f.default in (None, ()) else str(f.default)
            if f.default_factory is not dataclasses.MISSING:
                return str(f.default_factory())
    raise KeyError(name)


def _converter(opt: Option) -> Callable[[str], Any]:
    field = FIELDS[opt.field]

    def convert(text: str) -> Any:
        try:
            return configfile.from_text(field, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _add(parser: argparse._ActionsContainer, opt: Option) -> None:
    """One setting's flag; its default is None so that a given flag can be told apart."""
    field = FIELDS[opt.field]
    default = _default_text(opt.field)
    help_text = f"{opt.help} (key {opt.field}, env PKEYD_{opt.env}; default {default})".lstrip()
    help_text = help_text.replace("%", "%%")
    if field.kind == "bool":
        parser.add_argument(
            opt.flag, dest=opt.field, action=argparse.BooleanOptionalAction, help=help_text
        )
        return
    parser.add_argument(
        opt.flag,
        dest=opt.field,
        type=_converter(opt),
        metavar=opt.metavar or (None if field.choices else "VALUE"),
        choices=field.choices or None,
        help=help_text,
    )


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"TOML config file (env PKEYD_CONFIG; default {DEFAULT_CONFIG_PATH} if it exists)",
    )


def _add_daemon_options(parser: argparse.ArgumentParser) -> None:
    _add_config(parser)
    parser.add_argument(
        "--listen",
        type=parse_listen,
        metavar="HOST:PORT",
        help="address of the REST API (keys listen_host, listen_port, env PKEYD_LISTEN; "
        "default 127.0.0.1:8080)",
    )
    reload = parser.add_mutually_exclusive_group()
    _add(reload, PID_FILE)
    _add(reload, RELOAD_COMMAND)
    for opt in DAEMON_OPTIONS:
        _add(parser, opt)


# The settings each command reads (config show and serve: all of them).
COMMAND_OPTIONS: dict[str, tuple[Option, ...]] = {
    "serve": (PID_FILE, RELOAD_COMMAND, *DAEMON_OPTIONS),
    "config": (PID_FILE, RELOAD_COMMAND, *DAEMON_OPTIONS),
    "migrate": (DB,),
    "render": (DB,),
    "import": (DB, ALLOW_BOTH, QOS),
    "check": (ALLOW_BOTH, QOS),
    "demo": (),
    "token": (DB,),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pkeyd",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=PRECEDENCE,
    )
    parser.add_argument("--version", action="version", version=f"pkeyd {__version__}")
    for opt in LOG_OPTIONS:
        _add(parser, opt)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon", epilog=PRECEDENCE)
    _add_daemon_options(serve)

    config = sub.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser(
        "show",
        help="print the effective configuration as TOML (exit 2 if it is invalid)",
        epilog=PRECEDENCE,
    )
    _add_daemon_options(show)

    mig = sub.add_parser("migrate", help="bring the database schema to the newest revision")
    _add_config(mig)
    _add(mig, DB)

    check = sub.add_parser("check", help="lint a partitions.conf with OpenSM's exact parser")
    check.add_argument("file", type=Path)
    check.add_argument("--json", action="store_true", help="machine-readable output")
    _add_config(check)
    _add(check, ALLOW_BOTH)
    _add(check, QOS)

    imp = sub.add_parser("import", help="take over an existing partitions.conf into the store")
    imp.add_argument("file", type=Path)
    imp.add_argument("--dry-run", action="store_true", help="print what would be stored")
    imp.add_argument(
        "--replace", action="store_true", help="replace partitions already in the store"
    )
    _add_config(imp)
    for opt in (DB, ALLOW_BOTH, QOS):
        _add(imp, opt)

    rend = sub.add_parser("render", help="print or write the partitions.conf pkeyd would write")
    _add_config(rend)
    _add(rend, DB)
    rend.add_argument("--output", type=Path, help="write atomically to this file")

    for leaf in add_token_parser(sub):
        _add_config(leaf)
        _add(leaf, DB)

    demo = sub.add_parser(
        "demo", help="run pkeyd on SQLite against a generated simulated fabric (ibsim + OpenSM)"
    )
    demo.add_argument("--hcas", type=int, default=16, help="HCAs in the fat tree (default 16)")
    demo.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 8080))
    demo.add_argument("--keep", action="store_true", help="keep the temp dir afterwards")
    return parser


@dataclass(frozen=True)
class Resolved:
    """The merged values of one command, and the file they partly came from."""

    values: dict[str, Any]
    path: Path | None
    file_values: dict[str, Any]

    @property
    def log_level(self) -> str:
        return str(self.values.get("log_level", "info"))

    @property
    def log_format(self) -> str:
        return str(self.values.get("log_format", "auto"))

    @property
    def db_url(self) -> str:
        return str(self.values.get("db_url", DEFAULT_DB_URL))

    def flag(self, name: str) -> bool:
        default = next(f.default for f in dataclasses.fields(Settings) if f.name == name)
        return bool(self.values.get(name, default))

    def settings(self) -> Settings:
        try:
            return configfile.build_settings(self.values)
        except ValueError as exc:
            if self.path is not None and configfile.check_alone(self.file_values) == str(exc):
                raise ConfigError(f"{self.path}: {exc}") from None
            sources = "flags, PKEYD_* environment"
            if self.path is not None:
                sources += f", {self.path}"
            raise ConfigError(f"invalid configuration (from {sources}): {exc}") from None


def _config_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path | None:
    given = getattr(args, "config", None) or environ.get("PKEYD_CONFIG") or None
    if given is not None:
        return Path(given)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def _env_layer(
    options: Sequence[Option], environ: Mapping[str, str], listen: bool
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for opt in options:
        text = environ.get(f"PKEYD_{opt.env}")
        if text is None or text == "":
            continue
        try:
            values[opt.field] = configfile.from_text(FIELDS[opt.field], text)
        except ValueError as exc:
            raise ConfigError(f"PKEYD_{opt.env}={text!r}: {exc}") from None
    text = environ.get(f"PKEYD_{LISTEN_ENV}")
    if listen and text:
        try:
            values["listen_host"], values["listen_port"] = parse_listen(text)
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"PKEYD_{LISTEN_ENV}: {exc}") from None
    return values


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> Resolved:
    """Defaults < config file < PKEYD_* environment < flags, for the command in `args`."""
    options = (*LOG_OPTIONS, *COMMAND_OPTIONS[args.command])
    path = None if args.command == "demo" else _config_path(args, environ)
    file_values = configfile.load_file(path) if path is not None else {}
    layers = [file_values]
    with_listen = args.command in ("serve", "config")
    layers.append(_env_layer(options, environ, with_listen))
    flags = {
        o.field: getattr(args, o.field) for o in options if getattr(args, o.field, None) is not None
    }
    if with_listen and args.listen is not None:
        flags["listen_host"], flags["listen_port"] = args.listen
    layers.append(flags)
    return Resolved(configfile.merge(layers), path, file_values)


def _configure_logs(resolved: Resolved) -> None:
    fmt = {"auto": None, "json": True, "console": False}[resolved.log_format]
    logs.configure(resolved.log_level, json=fmt)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    try:
        resolved = resolve(args, environ)
        _configure_logs(resolved)
        if args.command == "config":
            return _show_config(resolved)
        if args.command == "serve":
            settings = resolved.settings()
            return serve(settings, resolved.path, _rereader(args, environ, resolved))
        if args.command == "migrate":
            asyncio.run(admin.migrate_store(resolved.db_url))
            log.info("database_migrated")
            return 0
        if args.command == "check":
            return run_check(
                args.file,
                json_output=args.json,
                allow_both_pkeys=resolved.flag("allow_both_pkeys"),
                qos=resolved.flag("qos"),
                out=sys.stdout,
            )
        if args.command == "render":
            return asyncio.run(admin.render_store(resolved.db_url, args.output))
        if args.command == "import":
            offline = Settings(
                db_url=resolved.db_url,
                reload_command=("true",),
                allow_both_pkeys=resolved.flag("allow_both_pkeys"),
                qos=resolved.flag("qos"),
            )
            return asyncio.run(
                admin.import_file(
                    resolved.db_url, args.file, offline, dry_run=args.dry_run, replace=args.replace
                )
            )
        if args.command == "token":
            return asyncio.run(run_token_command(args, resolved.db_url))
        from pkeyd.demo import run_demo  # imports the simulator only when asked

        return asyncio.run(run_demo(args.hcas, args.listen, keep=args.keep))
    except SchemaOutdatedError as exc:
        print(f"pkeyd: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"pkeyd: {exc}", file=sys.stderr)
        return 2


def _show_config(resolved: Resolved) -> int:
    settings = resolved.settings()
    source = str(resolved.path) if resolved.path is not None else "no config file"
    header = (
        "The effective pkeyd configuration.\n"
        f"Sources, highest first: flags, PKEYD_* environment, {source}, defaults."
    )
    text = configfile.dump(
        settings, log_level=resolved.log_level, log_format=resolved.log_format, header=header
    )
    sys.stdout.write(text)
    return 0


def _rereader(
    args: argparse.Namespace, environ: Mapping[str, str], started: Resolved
) -> Callable[[], Settings]:
    """What SIGHUP calls: the config file again, under the same flags and environment."""
    current = [started]

    def reread() -> Settings:
        resolved = resolve(args, environ)
        settings = resolved.settings()
        before = current[0]
        if (resolved.log_level, resolved.log_format) != (before.log_level, before.log_format):
            _configure_logs(resolved)
            log.info("log_settings_changed", level=resolved.log_level, format=resolved.log_format)
        current[0] = resolved
        return settings

    return reread
