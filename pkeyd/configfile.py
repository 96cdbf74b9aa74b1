"""pkeyd's TOML config file: every Settings field as a top-level key, validated.

The keys are the names of pkeyd.config.Settings' fields, plus `log_level`
and `log_format`; the value types follow the field types (a path or a PKey
range is a string, `reload_command` an array of strings). Nothing here reads
the environment or argv: pkeyd.cli layers flags over PKEYD_* variables over
this file over the defaults, with the text converters below.

Errors name the file and the key. `dump()` writes the effective settings back
as a file this module reads again (`pkeyd config show`).
"""

from __future__ import annotations

import dataclasses
import difflib
import shlex
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pkeyd.config import Settings
from pkeyd.domain import PKeyRange

DEFAULT_CONFIG_PATH = Path("/etc/pkeyd/pkeyd.toml")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "json", "console")
# Either of these two decides how OpenSM is reloaded; a layer setting one
# replaces the other from the layers below it.
RELOAD_FIELDS = ("opensm_pid_file", "reload_command")
# What a SIGHUP applies to a running daemon: values the loops read on every
# use. Everything else is built into long-lived objects (the listening socket,
# the database engine, the reloader, the SMP reader) and needs a restart.
RUNTIME_FIELDS = frozenset(
    {
        "on_external_edit",
        "coalesce_delay_s",
        "coalesce_max_s",
        "min_reload_interval_s",
        "resync_interval_s",
        "retry_min_s",
        "retry_max_s",
        "verify_interval_s",
        "verify_settle_s",
        "repair_max",
    }
)

Kind = Literal["bool", "int", "float", "str", "path", "argv", "pkey_range", "pkey_ranges", "choice"]


class ConfigError(ValueError):
    """A setting pkeyd cannot use; the message says where it came from."""


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    optional: bool = False
    choices: tuple[str, ...] = ()


def _field_for(name: str, hint: Any) -> Field:
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"Settings.{name}: unsupported type {hint!r}")
        hint, optional = args[0], True
    if typing.get_origin(hint) is Literal:
        return Field(name, "choice", optional, tuple(str(a) for a in typing.get_args(hint)))
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, ...):
        return Field(name, "argv", optional)
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (PKeyRange, ...):
        return Field(name, "pkey_ranges", optional)
    simple: dict[Any, Kind] = {
        bool: "bool",
        int: "int",
        float: "float",
        str: "str",
        Path: "path",
        PKeyRange: "pkey_range",
    }
    if hint not in simple:
        raise TypeError(f"Settings.{name}: no config file type for {hint!r}")
    return Field(name, simple[hint], optional)


def _settings_fields() -> dict[str, Field]:
    hints = typing.get_type_hints(Settings)
    return {f.name: _field_for(f.name, hints[f.name]) for f in dataclasses.fields(Settings)}


SETTINGS_FIELDS = _settings_fields()
FIELDS: dict[str, Field] = {
    **SETTINGS_FIELDS,
    "log_level": Field("log_level", "choice", choices=LOG_LEVELS),
    "log_format": Field("log_format", "choice", choices=LOG_FORMATS),
}


def from_toml(field: Field, value: Any) -> Any:
    """A TOML value as the field's Python value; ValueError says what is wrong."""
    kind = field.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, not {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number (seconds), not {value!r}")
        return float(value)
    if kind == "argv":
        if isinstance(value, str):
            return from_text(field, value)
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise ValueError(f"must be an array of strings (the argv), not {value!r}")
        if not value or not value[0]:
            raise ValueError("must name a program")
        return tuple(value)
    if kind == "pkey_ranges":
        if isinstance(value, str):
            return from_text(field, value)
        if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
            raise ValueError(f'must be an array of ranges like "0x0100-0x01ff", not {value!r}')
        return tuple(_pkey_range(r) for r in value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    return from_text(field, value)


def from_text(field: Field, text: str) -> Any:
    """A flag's or an environment variable's text as the field's Python value."""
    kind = field.kind
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"must be true or false, not {text!r}")
    if kind in ("int", "float"):
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            what = "an integer" if kind == "int" else "a number (seconds)"
            raise ValueError(f"must be {what}, not {text!r}") from None
    if kind == "path":
        if not text:
            raise ValueError("must not be empty")
        return Path(text)
    if kind == "argv":
        argv = tuple(shlex.split(text))
        if not argv or not argv[0]:
            raise ValueError("must name a program")
        return argv
    if kind == "pkey_range":
        return _pkey_range(text)
    if kind == "pkey_ranges":
        return tuple(_pkey_range(part.strip()) for part in text.split(",") if part.strip())
    if kind == "choice" and text not in field.choices:
        raise ValueError(f"must be one of {', '.join(field.choices)}, not {text!r}")
    return text


def _pkey_range(text: str) -> PKeyRange:
    try:
        return PKeyRange.parse(text)
    except ValueError as exc:
        if "invalid literal" in str(exc):
            raise ValueError(f"must look like 0x0001-0x7ffe, not {text!r}") from None
        raise


def load_file(path: Path) -> dict[str, Any]:
    """Read and check a config file: the values it sets, converted. ConfigError names path:key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            raise ConfigError(
                f"{path}: [{key}] is a table; pkeyd has none: every setting is a "
                "top-level key = value (above any [table] header)"
            )
        field = FIELDS.get(key)
        if field is None:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        try:
            values[key] = from_toml(field, value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {key}: {exc}") from None
    return values


def check_alone(values: Mapping[str, Any]) -> str | None:
    """What Settings says of these values over the defaults (None: nothing).

    Tells whether a file is wrong by itself or only with what overrides it.
    """
    fields = {k: v for k, v in values.items() if k in SETTINGS_FIELDS}
    if not any(k in fields for k in RELOAD_FIELDS):
        fields["reload_command"] = ("true",)  # the reload method may come from elsewhere
    try:
        Settings(**fields)
    except ValueError as exc:
        return str(exc)
    return None


def merge(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Values from the lowest layer (a file) to the highest (flags); later wins."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if any(k in layer for k in RELOAD_FIELDS):
            for k in RELOAD_FIELDS:
                merged.pop(k, None)
        merged.update(layer)
    return merged


def build_settings(values: Mapping[str, Any]) -> Settings:
    """Settings from merged values (defaults for the rest); ValueError if they don't fit."""
    return Settings(**{k: v for k, v in values.items() if k in SETTINGS_FIELDS})


def runtime_update(current: Settings, new: Settings) -> tuple[Settings, list[str], list[str]]:
    """What a re-read may change in a running daemon.

    Returns the settings to run with (the new values of RUNTIME_FIELDS, the
    current ones for the rest), the fields changed now, and the changed fields
    that only a restart applies.
    """
    changed = [
        f.name
        for f in dataclasses.fields(Settings)
        if getattr(current, f.name) != getattr(new, f.name)
    ]
    applied = [name for name in changed if name in RUNTIME_FIELDS]
    restart = [name for name in changed if name not in RUNTIME_FIELDS]
    merged = dataclasses.replace(current, **{name: getattr(new, name) for name in applied})
    return merged, applied, restart


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_string(str(a)) for a in value) + "]"
    return _toml_string(str(value))


def dump(settings: Settings, *, log_level: str, log_format: str, header: str = "") -> str:
    """The settings as a pkeyd.toml; a key whose value is unset is a comment."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines.append(f"log_level = {_toml_value(log_level)}")
    lines.append(f"log_format = {_toml_value(log_format)}")
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if value is None:
            lines.append(f"# {f.name} is not set")
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
