"""Who may call what: the auth middleware and the admin routes of /api/v1/tokens.

With `auth` on, every request but /healthz (and /metrics unless
`auth_metrics`) carries a token, as `Authorization: Bearer TOKEN` or as
HTTP Basic auth whose password is the token (any user name; UFM clients
send it so). A token sent bare after `Basic` is accepted too: UFM's
token-based /ufmRestV3 clients send exactly that. What a call needs:

- /healthz: nothing, ever (systemd and load balancers probe it);
- /metrics: nothing, or reader with `auth_metrics`;
- /api/v1/tokens...: admin;
- GET and HEAD: reader (nothing under /api/v1 and the UFM paths with `auth_open_reads`);
- every other method: operator.

No credentials, or a token unknown or revoked: 401 with a WWW-Authenticate
challenge. A valid token whose role is too low: 403. The token's name goes to
request[ACTOR] for the audit trail and to the request's log lines.
"""

from __future__ import annotations

import base64
import binascii
import re

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from pkeyd.api.keys import ACTOR, SETTINGS, TOKEN_CACHE, TOKEN_SERVICE
from pkeyd.api.schemas import read_json_object
from pkeyd.auth import Identity, Role, TokenCache, parse_name, parse_role
from pkeyd.config import Settings
from pkeyd.drafts import reject_unknown
from pkeyd.errors import ForbiddenError, PkeydError, UnauthorizedError

log = structlog.get_logger("pkeyd.auth")

_UFM = re.compile(r"/ufmRest(V2|V3)?(/.*)?")
_READS = frozenset({"GET", "HEAD"})
TOKENS_PATH = "/api/v1/tokens"


def is_ufm_path(path: str) -> bool:
    return _UFM.fullmatch(path) is not None


def required_role(settings: Settings, method: str, path: str) -> Role | None:
    """The least role a call needs; None: open to anyone."""
    if path == "/healthz":
        return None
    if path == "/metrics":
        return Role.READER if settings.auth_metrics else None
    if path == TOKENS_PATH or path.startswith(TOKENS_PATH + "/"):
        return Role.ADMIN
    if method in _READS:
        api = path == "/api/v1" or path.startswith("/api/v1/") or is_ufm_path(path)
        return None if api and settings.auth_open_reads else Role.READER
    return Role.OPERATOR


def credential(header: str) -> str | None:
    """The token in an Authorization header; None when the scheme is not one pkeyd reads."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        # Not user:password in base64: the token itself (a pkeyd token holds
        # `_`, so it never reads as base64).
        return value
    _user, sep, password = decoded.partition(":")
    return password if sep else value


def _challenge(path: str, error: str | None) -> list[tuple[str, str]]:
    bearer = 'Bearer realm="pkeyd"' + (f', error="{error}"' if error else "")
    headers = [("WWW-Authenticate", bearer)]
    if is_ufm_path(path):
        headers.append(("WWW-Authenticate", 'Basic realm="pkeyd"'))
    return headers


def _refusal(exc: PkeydError, headers: list[tuple[str, str]]) -> web.Response:
    response = web.json_response(exc.to_json(), status=exc.status)
    for name, value in headers:
        response.headers.add(name, value)
    return response


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    if not settings.auth:
        return await handler(request)
    resource = request.match_info.route.resource
    # Classify by the matched route's pattern: a path spelled oddly cannot
    # slip into a weaker class than the handler it reaches.
    path = resource.canonical if resource is not None else request.path
    needed = required_role(settings, request.method, path)
    if path == "/healthz":
        return await handler(request)
    header = request.headers.get("Authorization")
    if header is None:
        if needed is None:
            return await handler(request)
        refusal = UnauthorizedError(
            "this call needs a token: send Authorization: Bearer TOKEN "
            "(create one with `pkeyd token create`)"
        )
        return _refusal(refusal, _challenge(path, None))
    identity = await _identify(request.app[TOKEN_CACHE], header)
    if identity is None:
        log.info("auth_refused", method=request.method, route=path, reason="invalid_token")
        refusal = UnauthorizedError("the token is unknown or revoked")
        return _refusal(refusal, _challenge(path, "invalid_token"))
    if needed is not None and not identity.role.allows(needed):
        log.info(
            "auth_forbidden", actor=identity.name, role=identity.role.value, needs=needed.value
        )
        forbidden = ForbiddenError(
            f"this call needs role {needed.value}; token {identity.name!r} has "
            f"{identity.role.value}"
        )
        return _refusal(forbidden, [("WWW-Authenticate", 'Bearer error="insufficient_scope"')])
    request[ACTOR] = identity.name
    with structlog.contextvars.bound_contextvars(actor=identity.name):
        return await handler(request)


async def _identify(cache: TokenCache, header: str) -> Identity | None:
    secret = credential(header)
    if not secret:
        return None
    return await cache.lookup(secret)


# -- /api/v1/tokens: token management for admins ------------------------------

token_routes = web.RouteTableDef()


def _require_auth(request: web.Request) -> None:
    # Without auth nobody is an admin: the API must not hand out tokens to
    # whoever reaches it. `pkeyd token create` works either way.
    if not request.app[SETTINGS].auth:
        raise ForbiddenError(
            "token management over the API needs auth on; use `pkeyd token` on the SM node"
        )


@token_routes.get(TOKENS_PATH)
async def list_tokens(request: web.Request) -> web.Response:
    _require_auth(request)
    tokens = await request.app[TOKEN_SERVICE].list_tokens()
    return web.json_response({"tokens": [t.to_json() for t in tokens]})


@token_routes.post(TOKENS_PATH)
async def create_token(request: web.Request) -> web.Response:
    _require_auth(request)
    body = await read_json_object(request)
    reject_unknown(body, {"name", "role"})
    name = parse_name(body.get("name"))
    role = parse_role(body.get("role"))
    info, secret = await request.app[TOKEN_SERVICE].create(name, role)
    await request.app[TOKEN_CACHE].refresh()
    return web.json_response(
        {**info.to_json(), "token": secret},
        status=201,
        headers={"Location": f"{TOKENS_PATH}/{name}"},
    )


@token_routes.delete(TOKENS_PATH + "/{name}")
async def revoke_token(request: web.Request) -> web.Response:
    _require_auth(request)
    info = await request.app[TOKEN_SERVICE].revoke(request.match_info["name"])
    # Before answering: once the revoke is acknowledged, this daemon refuses the token.
    await request.app[TOKEN_CACHE].refresh()
    return web.json_response(info.to_json())
