"""The auth middleware on a running app: 401 vs 403 per role and route class, and friends."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pkeyd import logs
from pkeyd.admin import open_store
from pkeyd.api.app import create_app
from pkeyd.api.keys import actor_of
from pkeyd.auth import Role, TokenService, new_secret
from pkeyd.config import Settings
from tests.helpers import Daemon, running_daemon
from tests.unit.conftest import CountingReloader

ROLES = (Role.READER, Role.OPERATOR, Role.ADMIN)
PARTITION = {"name": "tenant-a", "pkey": "0x0a12"}


async def make_tokens(settings: Settings) -> dict[Role, str]:
    """One token per role, straight in the store, as `pkeyd token create` does."""
    async with open_store(settings.db_url) as sessions:
        service = TokenService(sessions)
        return {role: (await service.create(f"{role.value}-1", role))[1] for role in ROLES}


@pytest.fixture
def auth_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, auth=True)


@pytest.fixture
async def tokens(auth_settings: Settings) -> dict[Role, str]:
    return await make_tokens(auth_settings)


@pytest.fixture
async def guarded(
    auth_settings: Settings, reloader: CountingReloader, tokens: dict[Role, str]
) -> AsyncIterator[Daemon]:
    async with running_daemon(auth_settings, reloader) as d:
        yield d


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


# (method, path, body, least role). The partition 0x0a12 exists when they run.
CALLS: list[tuple[str, str, dict[str, Any] | None, Role]] = [
    ("GET", "/api/v1/partitions", None, Role.READER),
    ("GET", "/api/v1/partitions/0x0a12", None, Role.READER),
    ("GET", "/api/v1/status", None, Role.READER),
    ("POST", "/api/v1/partitions", {"name": "other"}, Role.OPERATOR),
    ("PATCH", "/api/v1/partitions/0x0a12", {"ipoib": True}, Role.OPERATOR),
    ("POST", "/api/v1/partitions/0x0a12/members", {"members": []}, Role.OPERATOR),
    ("POST", "/api/v1/reconcile/resume", None, Role.OPERATOR),
    ("GET", "/api/v1/tokens", None, Role.ADMIN),
    ("POST", "/api/v1/tokens", {"name": "new", "role": "reader"}, Role.ADMIN),
    ("DELETE", "/api/v1/partitions/0x0a12", None, Role.OPERATOR),
]


@pytest.mark.parametrize(("method", "path", "body", "needed"), CALLS)
async def test_401_without_token_403_below_the_role_else_served(
    auth_settings: Settings,
    reloader: CountingReloader,
    tokens: dict[Role, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    needed: Role,
) -> None:
    async with running_daemon(auth_settings, reloader) as d:
        setup = bearer(tokens[Role.OPERATOR])
        await d.json("POST", "/api/v1/partitions", 201, json=PARTITION, headers=setup)
        resp = await d.client.request(method, path, json=body)
        assert resp.status == 401
        assert resp.headers.getall("WWW-Authenticate") == ['Bearer realm="pkeyd"']
        assert (await resp.json())["error"]["code"] == "unauthorized"
        for role in ROLES:
            resp = await d.client.request(method, path, json=body, headers=bearer(tokens[role]))
            answer = await resp.json() if resp.content_type == "application/json" else None
            if role.allows(needed):
                # Past auth; a 404 or 409 is the call itself (done by a lower role already).
                assert resp.status not in (401, 403), (role, resp.status, answer)
            else:
                assert resp.status == 403, (role, resp.status, answer)
                assert answer is not None
                assert answer["error"]["code"] == "forbidden"
                assert f"needs role {needed.value}" in answer["error"]["message"]


async def test_healthz_is_always_open(guarded: Daemon) -> None:
    await guarded.json("GET", "/healthz", 200)
    await guarded.json("GET", "/healthz", 200, headers=bearer("pkeyd_not-a-real-one"))


async def test_unknown_or_malformed_tokens_are_401_invalid_token(guarded: Daemon) -> None:
    for header in (f"Bearer {new_secret()}", "Bearer ", "Bearer junk", "Digest x=1"):
        resp = await guarded.client.get("/api/v1/partitions", headers={"Authorization": header})
        assert resp.status == 401, header
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="pkeyd", error="invalid_token"'


async def test_metrics_open_by_default_reader_with_auth_metrics(
    auth_settings: Settings, reloader: CountingReloader, tokens: dict[Role, str]
) -> None:
    async with running_daemon(auth_settings, reloader) as d:
        assert (await d.client.get("/metrics")).status == 200
    closed = dataclasses.replace(auth_settings, auth_metrics=True)
    async with running_daemon(closed, reloader) as d:
        assert (await d.client.get("/metrics")).status == 401
        assert (await d.client.get("/metrics", headers=bearer(tokens[Role.READER]))).status == 200


async def test_open_reads(
    auth_settings: Settings, reloader: CountingReloader, tokens: dict[Role, str]
) -> None:
    open_reads = dataclasses.replace(auth_settings, auth_open_reads=True)
    async with running_daemon(open_reads, reloader) as d:
        await d.json("GET", "/api/v1/partitions", 200)
        await d.json("GET", "/api/v1/status", 200)
        await d.json("POST", "/api/v1/partitions", 401, json=PARTITION)
        await d.json("GET", "/api/v1/tokens", 401)
        # A token sent anyway is still checked.
        await d.json("GET", "/api/v1/partitions", 401, headers=bearer(new_secret()))
        await d.json(
            "POST", "/api/v1/partitions", 201, json=PARTITION, headers=bearer(tokens[Role.OPERATOR])
        )


async def test_basic_auth_with_the_token_as_password(
    guarded: Daemon, tokens: dict[Role, str]
) -> None:
    auth = basic("whoever", tokens[Role.OPERATOR])
    await guarded.json("POST", "/api/v1/partitions", 201, json=PARTITION, headers=auth)
    reader = basic("ufm-client", tokens[Role.READER])
    await guarded.json("DELETE", "/api/v1/partitions/0x0a12", 403, headers=reader)
    wrong = basic("admin", "123456")
    await guarded.json("GET", "/api/v1/partitions", 401, headers=wrong)
    # The token alone after Basic, as UFM's token clients send it.
    bare = {"Authorization": f"Basic {tokens[Role.READER]}"}
    await guarded.json("GET", "/api/v1/partitions/0x0a12", 200, headers=bare)


async def test_ufm_paths_challenge_for_basic_too(guarded: Daemon, tokens: dict[Role, str]) -> None:
    for path in ("/ufmRest/resources/pkeys", "/ufmRestV3/resources/pkeys"):
        resp = await guarded.client.get(path)
        assert resp.status == 401
        assert resp.headers.getall("WWW-Authenticate") == [
            'Bearer realm="pkeyd"',
            'Basic realm="pkeyd"',
        ]
        ufm = basic("admin", tokens[Role.READER])
        # Past auth (the UFM routes themselves live elsewhere: 404 here).
        assert (await guarded.client.get(path, headers=ufm)).status not in (401, 403)
        post = await guarded.client.post(path, json={}, headers=ufm)
        assert post.status == 403


async def test_revoked_through_the_api_fails_at_once(
    guarded: Daemon, tokens: dict[Role, str]
) -> None:
    admin = bearer(tokens[Role.ADMIN])
    made = await guarded.json(
        "POST", "/api/v1/tokens", 201, json={"name": "ci", "role": "operator"}, headers=admin
    )
    assert made["role"] == "operator"
    assert made["token"].startswith("pkeyd_")
    await guarded.json("GET", "/api/v1/partitions", 200, headers=bearer(made["token"]))
    revoked = await guarded.json("DELETE", "/api/v1/tokens/ci", 200, headers=admin)
    assert revoked["revoked_at"] is not None
    await guarded.json("GET", "/api/v1/partitions", 401, headers=bearer(made["token"]))
    listed = await guarded.json("GET", "/api/v1/tokens", 200, headers=admin)
    assert "token" not in listed["tokens"][0]
    assert "token_hash" not in listed["tokens"][0]


async def test_revoked_by_another_process_fails_within_the_cache_period(
    auth_settings: Settings, reloader: CountingReloader, tokens: dict[Role, str]
) -> None:
    fast = dataclasses.replace(auth_settings, auth_cache_s=0.2)
    async with running_daemon(fast, reloader) as d:
        headers = bearer(tokens[Role.READER])
        await d.json("GET", "/api/v1/partitions", 200, headers=headers)
        async with open_store(fast.db_url) as sessions:  # as `pkeyd token revoke` does
            await TokenService(sessions).revoke("reader-1")
        for _ in range(200):  # bounded wait: well past 0.2 s
            if (await d.client.get("/api/v1/partitions", headers=headers)).status == 401:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("revoked token still accepted")


async def test_token_created_by_another_process_works_at_once(guarded: Daemon) -> None:
    async with open_store(guarded.settings.db_url) as sessions:
        _, secret = await TokenService(sessions).create("late", Role.READER)
    await guarded.json("GET", "/api/v1/partitions", 200, headers=bearer(secret))


async def test_token_routes_validate_and_store_only_the_hash(
    guarded: Daemon, tokens: dict[Role, str], auth_settings: Settings
) -> None:
    admin = bearer(tokens[Role.ADMIN])
    bad_role = await guarded.json(
        "POST", "/api/v1/tokens", 422, json={"name": "x", "role": "root"}, headers=admin
    )
    assert bad_role["error"]["field"] == "role"
    bad_name = await guarded.json(
        "POST", "/api/v1/tokens", 422, json={"name": "anonymous", "role": "reader"}, headers=admin
    )
    assert bad_name["error"]["field"] == "name"
    extra = await guarded.json(
        "POST", "/api/v1/tokens", 422, json={"name": "y", "role": "reader", "x": 1}, headers=admin
    )
    assert extra["error"]["field"] == "x"
    dup = await guarded.json(
        "POST", "/api/v1/tokens", 409, json={"name": "admin-1", "role": "reader"}, headers=admin
    )
    assert dup["error"]["field"] == "name"
    await guarded.json("DELETE", "/api/v1/tokens/nobody", 404, headers=admin)
    made = await guarded.json(
        "POST", "/api/v1/tokens", 201, json={"name": "z", "role": "reader"}, headers=admin
    )
    db = Path(auth_settings.db_url.removeprefix("sqlite+aiosqlite:///"))
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT * FROM api_tokens WHERE name = 'z'").fetchone()
    assert hashlib.sha256(made["token"].encode()).hexdigest() in row
    assert made["token"] not in row


async def test_token_routes_refuse_when_auth_is_off(daemon: Daemon) -> None:
    err = await daemon.json("POST", "/api/v1/tokens", 403, json={"name": "a", "role": "admin"})
    assert "needs auth on" in err["error"]["message"]


async def _actor_app(settings: Settings, reloader: CountingReloader) -> web.Application:
    app = create_app(settings, reloader=reloader)
    seen: list[str] = []

    async def whoami(request: web.Request) -> web.Response:
        seen.append(actor_of(request))
        return web.json_response({"actor": actor_of(request)})

    app.router.add_post("/api/v1/whoami", whoami)
    return app


async def test_the_token_name_reaches_the_actor_key(
    auth_settings: Settings, reloader: CountingReloader, tokens: dict[Role, str]
) -> None:
    app = await _actor_app(auth_settings, reloader)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/api/v1/whoami", headers=bearer(tokens[Role.OPERATOR]))
        assert (await resp.json()) == {"actor": "operator-1"}
        as_admin = basic("someone", tokens[Role.ADMIN])
        assert (await (await client.post("/api/v1/whoami", headers=as_admin)).json()) == {
            "actor": "admin-1"
        }


async def test_actor_is_anonymous_without_auth(
    settings: Settings, reloader: CountingReloader
) -> None:
    app = await _actor_app(settings, reloader)
    async with TestClient(TestServer(app)) as client:
        assert (await (await client.post("/api/v1/whoami")).json()) == {"actor": "anonymous"}


async def test_body_over_the_limit_names_max_body_bytes_and_stores_nothing(
    settings: Settings, reloader: CountingReloader
) -> None:
    small = dataclasses.replace(settings, max_body_bytes=2048)
    async with running_daemon(small, reloader) as d:
        members = [{"guid": f"0x{i:016x}"} for i in range(1, 200)]
        body = {"name": "big", "pkey": "0x0b00", "members": members}
        err = await d.json("POST", "/api/v1/partitions", 413, json=body)
        assert err["error"]["code"] == "too_large"
        assert "max_body_bytes (2048 bytes)" in err["error"]["message"]
        await d.json("GET", "/api/v1/partitions/0x0b00", 404)


async def test_request_log_lines_carry_the_actor(guarded: Daemon, tokens: dict[Role, str]) -> None:
    reader = bearer(tokens[Role.READER])
    stream = io.StringIO()
    logs.configure("info", json=True, stream=stream)
    try:
        await guarded.json("GET", "/api/v1/partitions", 200, headers=reader)
        await guarded.json("DELETE", "/api/v1/partitions/0x0a12", 403, headers=reader)
    finally:
        logs.reset()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    served = [x for x in lines if x["event"] == "http_request"]
    assert [(x["status"], x.get("actor")) for x in served] == [(200, "reader-1"), (403, None)]
    (forbidden,) = [x for x in lines if x["event"] == "auth_forbidden"]
    assert (forbidden["actor"], forbidden["role"], forbidden["needs"]) == (
        "reader-1", "reader", "operator",
    )  # fmt: skip
    assert tokens[Role.READER] not in stream.getvalue()
