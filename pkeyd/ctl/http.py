"""The HTTP side of pkeyctl: one JSON call at a time, standard library only.

Synchronous on purpose: a command makes one or a few calls and exits, and
the standard library starts faster than an event loop with aiohttp.
Environment proxies are ignored: pkeyd runs on the SM node or next to it.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


class ApiError(Exception):
    """pkeyd answered with an error: its status and the error document."""

    def __init__(self, status: int, code: str, message: str, field: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.status} {self.code}: {self.message}{where}"


class UnreachableError(Exception):
    """No HTTP answer at all: refused, timed out, TLS failed."""


def segment(value: str) -> str:
    """A value as one path segment: `/` or `?` in it cannot change the route."""
    return urllib.parse.quote(value, safe="")


@dataclass(frozen=True)
class Api:
    url: str
    token: str | None = None
    tls: ssl.SSLContext | None = None
    timeout_s: float = 30.0

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer (None for 204); ApiError for a 4xx/5xx, UnreachableError without one."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self.tls)
        )
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise _error(exc.code, exc.read(), exc.reason) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise UnreachableError(f"cannot reach pkeyd at {self.url}: {reason}") from None
        return json.loads(raw) if raw else None


def _error(status: int, raw: bytes, reason: str) -> ApiError:
    try:
        err = json.loads(raw)["error"]
        return ApiError(status, str(err["code"]), str(err["message"]), err.get("field"))
    except (ValueError, KeyError, TypeError):
        return ApiError(status, "http_error", str(reason or "no error document"), None)
