"""Request ids, metrics and the one place where exceptions become HTTP answers."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from pkeyd.api.keys import METRICS
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


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id to every log line of the request and echo it back."""
    offered = request.headers.get("X-Request-Id", "")
    request_id = offered if _REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    try:
        response = await _answer(request, handler, request_id)
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    metrics = request.app[METRICS]
    elapsed = time.perf_counter() - started
    metrics.http_requests.labels(route_name, request.method, str(response.status)).inc()
    metrics.http_seconds.labels(route_name, request.method).observe(elapsed)
    response.headers["X-Request-Id"] = request_id
    return response


async def _answer(request: web.Request, handler: Handler, request_id: str) -> web.StreamResponse:
    try:
        return await handler(request)
    except PkeydError as exc:
        if exc.status >= 500:
            log.error("request_failed", code=exc.code, error=exc.message)
        return web.json_response(exc.to_json(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return _error(exc.status, code, exc.reason)
    except Exception:
        # The traceback goes to the log, never to the client.
        log.exception("request_crashed", method=request.method, path=request.path)
        return _error(500, "internal", f"internal error; the daemon log has request {request_id}")
