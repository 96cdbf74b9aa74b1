"""Where pkeyctl finds pkeyd and its token: flags, then PKEYCTL_*, then a config file.

The config file is TOML: `--config PATH`, else `$PKEYCTL_CONFIG`, else
`$XDG_CONFIG_HOME/pkeyctl/config.toml` (`~/.config/pkeyctl/config.toml`)
when it exists, with the keys `url`, `token`, `token_file` and `cacert`.
"""

from __future__ import annotations

import os
import ssl
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

DEFAULT_URL = "http://127.0.0.1:8080"
FILE_KEYS = ("url", "token", "token_file", "cacert")


class CtlConfigError(ValueError):
    """A setting pkeyctl cannot use; the message names where it came from."""


@dataclass(frozen=True)
class CtlSettings:
    url: str = DEFAULT_URL
    token: str | None = None
    cacert: Path | None = None

    def tls(self) -> ssl.SSLContext | None:
        """Trust `cacert` (a self-signed pkeyd certificate, say) instead of the system's CAs."""
        if self.cacert is None:
            return None
        try:
            return ssl.create_default_context(cafile=str(self.cacert))
        except (OSError, ssl.SSLError) as exc:
            raise CtlConfigError(f"cacert {self.cacert}: cannot load it: {exc}") from None


def config_path(flag: Path | None, environ: Mapping[str, str]) -> Path | None:
    if flag is not None:
        return flag
    if environ.get("PKEYCTL_CONFIG"):
        return Path(environ["PKEYCTL_CONFIG"])
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    default = Path(base).expanduser() / "pkeyctl" / "config.toml"
    return default if default.is_file() else None


def load_file(path: Path, warn: TextIO = sys.stderr) -> dict[str, str]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CtlConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CtlConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, str] = {}
    for key, value in raw.items():
        if key not in FILE_KEYS:
            raise CtlConfigError(f"{path}: unknown key {key!r} (known: {', '.join(FILE_KEYS)})")
        if not isinstance(value, str):
            raise CtlConfigError(f"{path}: {key}: must be a string, not {value!r}")
        values[key] = value
    if "token" in values and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn.write(f"pkeyctl: warning: {path} holds a token and others may read it (chmod 600)\n")
    return values


def _read_token_file(path: Path, source: str) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CtlConfigError(f"{source} {path}: cannot read it: {exc.strerror or exc}") from None
    if not token:
        raise CtlConfigError(f"{source} {path}: the file is empty")
    return token


def resolve(
    *,
    url: str | None,
    token: str | None,
    token_file: Path | None,
    cacert: Path | None,
    config: Path | None,
    environ: Mapping[str, str],
    warn: TextIO = sys.stderr,
) -> CtlSettings:
    """Flags over PKEYCTL_URL / PKEYCTL_TOKEN / PKEYCTL_CACERT over the file over defaults."""
    path = config_path(config, environ)
    file = load_file(path, warn) if path is not None else {}
    chosen_url = url or environ.get("PKEYCTL_URL") or file.get("url") or DEFAULT_URL
    if not chosen_url.startswith(("http://", "https://")):
        raise CtlConfigError(f"url {chosen_url!r} must start with http:// or https://")
    if token_file is not None:
        chosen_token: str | None = _read_token_file(token_file, "--token-file")
    else:
        chosen_token = token or environ.get("PKEYCTL_TOKEN") or None
        if chosen_token is None and "token_file" in file:
            chosen_token = _read_token_file(Path(file["token_file"]), f"{path}: token_file")
        elif chosen_token is None:
            chosen_token = file.get("token")
    ca = cacert or (Path(environ["PKEYCTL_CACERT"]) if environ.get("PKEYCTL_CACERT") else None)
    if ca is None and "cacert" in file:
        ca = Path(file["cacert"])
    return CtlSettings(url=chosen_url, token=chosen_token, cacert=ca)


def environment() -> dict[str, str]:
    return dict(os.environ)
