"""HTTPS for the API: the server's TLS context from `tls_cert` and `tls_key`.

Built before the daemon starts, so that a missing file, a key that does not
match its certificate or a file that is not PEM stops `pkeyd serve` with
exit 2 and a message naming the setting, instead of a running daemon that
fails every handshake.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from pkeyd.config import Settings


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """None when TLS is not configured (Settings enforces both paths or neither)."""
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None or key is None:
        return None
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        _check_readable(name, path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ValueError(
            f"tls_cert {cert} and tls_key {key} do not load as a PEM certificate chain and "
            f"its private key: {exc.reason or exc}"
        ) from None
    return context


def _check_readable(name: str, path: Path) -> None:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise ValueError(f"{name} {path}: cannot read it: {exc.strerror or exc}") from None
