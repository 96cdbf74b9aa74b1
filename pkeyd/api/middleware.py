"""Request ids, metrics and the one place where exceptions become HTTP answers."""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from pkeyd import logs
from pkeyd.api.keys import ACTOR, METRICS, SETTINGS
from pkeyd.errors import PkeydError

log = structlog.get_logger("pkeyd.api")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def _error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    body: dict[str, object] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return web.json_response({"error": body}, status=status)


# Scraped every few seconds: their lines would drown the API's at info.
_QUIET_ROUTES = frozenset({"/metrics", "/healthz"})


# Request ids: this process's random prefix and a counter. Unique across
# restarts, and far cheaper per request than a UUID from the OS's randomness.
_ID_PREFIX = secrets.token_hex(6)
_request_numbers = itertools.count(1)


def _new_request_id() -> str:
    return f"{_ID_PREFIX}-{next(_request_numbers):x}"


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id to every log line of the request, count it, echo the id back."""
    offered = request.headers.get("X-Request-Id", "")
    request_id = offered if offered and _REQUEST_ID.fullmatch(offered) else _new_request_id()
    resource = request.match_info.route.resource
    # The route's pattern, never the path: label values stay bounded.
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    status = 500
    bound = structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await _answer(request, handler, request_id)
        status = response.status
    except web.HTTPException as exc:  # a redirect, re-raised for aiohttp to send
        status = exc.status
        exc.headers["X-Request-Id"] = request_id
        raise
    finally:
        elapsed = time.perf_counter() - started
        request.app[METRICS].observe_request(route, request.method, status, elapsed)
        level = logging.DEBUG if route in _QUIET_ROUTES and status < 400 else logging.INFO
        if level >= logs.lowest_level():
            log.log(
                level,
                "http_request",
                method=request.method,
                route=route,
                status=status,
                duration_s=round(elapsed, 6),
                # Who, when auth identified the caller (the token's name).
                **({"actor": request[ACTOR]} if ACTOR in request else {}),
            )
        structlog.contextvars.reset_contextvars(**bound)
    response.headers["X-Request-Id"] = request_id
    return response


async def _answer(request: web.Request, handler: Handler, request_id: str) -> web.StreamResponse:
    try:
        return await handler(request)
    except PkeydError as exc:
        if exc.status >= 500:
            log.error("request_failed", code=exc.code, error=exc.message)
        return web.json_response(exc.to_json(), status=exc.status)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].max_body_bytes
        return _error(
            413,
            "too_large",
            f"the request body is over max_body_bytes ({limit} bytes); send less per request",
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return _error(exc.status, code, exc.reason)
    except Exception:
        # The traceback goes to the log, never to the client.
        log.exception("request_crashed", method=request.method, path=request.path)
        return _error(500, "internal", f"internal error; the daemon log has request {request_id}")
