"""Tokens: roles, secrets, the store keeps only hashes, the cache and its refresh."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pkeyd.admin import open_store
from pkeyd.api.auth import credential, required_role
from pkeyd.auth import (
    Identity,
    Role,
    TokenCache,
    TokenService,
    hash_secret,
    looks_like_token,
    new_secret,
    parse_name,
)
from pkeyd.config import Settings, is_loopback
from pkeyd.errors import ConflictError, NotFoundError, ValidationError


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.db"


@pytest.fixture
async def sessions(db_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with open_store(f"sqlite+aiosqlite:///{db_path}") as made:
        yield made


class CountingService(TokenService):
    """The real service; counts the per-token database look-ups the cache makes."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        super().__init__(sessions)
        self.finds = 0

    async def find(self, token_hash: str) -> Identity | None:
        self.finds += 1
        return await super().find(token_hash)


def test_roles_are_ordered_reader_operator_admin() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR)
    assert Role.ADMIN.allows(Role.READER)
    assert Role.OPERATOR.allows(Role.READER)
    assert Role.OPERATOR.allows(Role.OPERATOR)
    assert not Role.OPERATOR.allows(Role.ADMIN)
    assert not Role.READER.allows(Role.OPERATOR)


def test_secrets_are_prefixed_random_and_recognisable() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(s.startswith("pkeyd_") and looks_like_token(s) for s in secrets)
    assert not looks_like_token("pkeyd_short")
    assert not looks_like_token("x" + next(iter(secrets))[1:])
    secret = next(iter(secrets))
    assert hash_secret(secret) == hashlib.sha256(secret.encode()).hexdigest()


@pytest.mark.parametrize("name", ["", "anonymous", "-x", "a b", "x" * 65, "a/b", 7])
def test_bad_token_names_are_refused_naming_the_field(name: object) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_name(name)
    assert caught.value.field == "name"


def test_credentials_from_bearer_basic_and_bare_basic() -> None:
    token = new_secret()
    assert credential(f"Bearer {token}") == token
    assert credential(f"bearer   {token} ") == token
    basic = base64.b64encode(f"any-user:{token}".encode()).decode()
    assert credential(f"Basic {basic}") == token
    # UFM's token clients send the token itself after Basic.
    assert credential(f"Basic {token}") == token
    assert credential("Digest username=x") is None


def test_required_roles_per_route_class() -> None:
    base = Settings(reload_command=("true",), auth=True)
    open_reads = dataclasses.replace(base, auth_open_reads=True)
    metrics = dataclasses.replace(base, auth_metrics=True)
    table = [
        ("GET", "/healthz", base, None),
        ("GET", "/metrics", base, None),
        ("GET", "/metrics", metrics, Role.READER),
        ("GET", "/api/v1/partitions", base, Role.READER),
        ("HEAD", "/api/v1/status", base, Role.READER),
        ("GET", "/api/v1/partitions", open_reads, None),
        ("GET", "/ufmRest/resources/pkeys", open_reads, None),
        ("GET", "/ufmRestV3/resources/pkeys", base, Role.READER),
        ("POST", "/ufmRestV2/resources/pkeys", base, Role.OPERATOR),
        ("POST", "/api/v1/partitions", open_reads, Role.OPERATOR),
        ("DELETE", "/api/v1/partitions/{pkey}", base, Role.OPERATOR),
        ("PATCH", "/api/v1/partitions/{pkey}", base, Role.OPERATOR),
        ("GET", "/api/v1/tokens", open_reads, Role.ADMIN),
        ("DELETE", "/api/v1/tokens/{name}", base, Role.ADMIN),
        ("GET", "/elsewhere", open_reads, Role.READER),
        ("GET", "/ufmRestX", open_reads, Role.READER),
    ]
    for method, path, settings, needed in table:
        assert required_role(settings, method, path) == needed, (method, path)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("sm1.example", False)],
)  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_listen_needs_auth_or_an_explicit_override() -> None:
    with pytest.raises(ValueError, match=r"listen_host 0\.0\.0\.0 .*auth = true"):
        Settings(reload_command=("true",), listen_host="0.0.0.0")
    Settings(reload_command=("true",), listen_host="0.0.0.0", auth=True)
    Settings(reload_command=("true",), listen_host="0.0.0.0", insecure_no_auth=True)


def test_tls_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        Settings(reload_command=("true",), tls_cert=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        Settings(reload_command=("true",), tls_key=tmp_path / "k.pem")


async def test_only_the_hash_is_stored(
    sessions: async_sessionmaker[AsyncSession], db_path: Path
) -> None:
    info, secret = await TokenService(sessions).create("ci", Role.OPERATOR)
    assert info.prefix == secret[:12]
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT * FROM api_tokens").fetchall()
        (stored_hash,) = db.execute("SELECT token_hash FROM api_tokens").fetchone()
    assert stored_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert not any(secret in str(cell) for row in rows for cell in row)


async def test_create_list_revoke(sessions: async_sessionmaker[AsyncSession]) -> None:
    service = TokenService(sessions)
    await service.create("ops", Role.ADMIN)
    with pytest.raises(ConflictError) as dup:
        await service.create("ops", Role.READER)
    assert dup.value.field == "name"
    revoked = await service.revoke("ops")
    assert revoked.revoked_at is not None
    again = await service.revoke("ops")  # idempotent: the first date stays
    assert again.revoked_at == revoked.revoked_at
    with pytest.raises(ConflictError, match="never reused"):
        await service.create("ops", Role.READER)
    with pytest.raises(NotFoundError):
        await service.revoke("nobody")
    listed = await service.list_tokens()
    assert [(t.name, t.role, t.revoked_at is not None) for t in listed] == [
        ("ops", Role.ADMIN, True)
    ]


async def test_cache_serves_known_tokens_without_the_database(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    service = CountingService(sessions)
    _, secret = await service.create("reader-1", Role.READER)
    cache = TokenCache(service, refresh_s=5.0)
    await cache.refresh()
    for _ in range(3):
        assert await cache.lookup(secret) == Identity("reader-1", Role.READER)
    assert service.finds == 0


async def test_cache_miss_checks_the_database_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    service = CountingService(sessions)
    cache = TokenCache(service, refresh_s=5.0)
    await cache.refresh()
    # Created by another process after the cache loaded: found on first use.
    _, secret = await TokenService(sessions).create("late", Role.OPERATOR)
    assert await cache.lookup(secret) == Identity("late", Role.OPERATOR)
    assert await cache.lookup(secret) == Identity("late", Role.OPERATOR)
    assert service.finds == 1
    # An unknown token costs one look-up until the next refresh; junk costs none.
    unknown = new_secret()
    assert await cache.lookup(unknown) is None
    assert await cache.lookup(unknown) is None
    assert await cache.lookup("not-a-pkeyd-token") is None
    assert service.finds == 2


async def test_revoke_elsewhere_applies_at_the_next_refresh(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    cache = TokenCache(TokenService(sessions), refresh_s=5.0)
    other_process = TokenService(sessions)
    _, secret = await other_process.create("ci", Role.OPERATOR)
    await cache.refresh()
    await other_process.revoke("ci")
    assert await cache.lookup(secret) is not None  # cached until the refresh
    await cache.refresh()
    assert await cache.lookup(secret) is None


class FailingAfterFirst(TokenService):
    """Loads once, then the store is gone: every later reload fails."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        super().__init__(sessions)
        self.loads = 0
        self.failed = asyncio.Event()

    async def valid_tokens(self) -> dict[str, Identity]:
        self.loads += 1
        if self.loads > 1:
            self.failed.set()
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        return await super().valid_tokens()


async def test_a_failed_reload_keeps_the_last_known_tokens(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    service = FailingAfterFirst(sessions)
    _, secret = await service.create("ci", Role.READER)
    cache = TokenCache(service, refresh_s=0.01)
    await cache.refresh()
    loop = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(service.failed.wait(), 10)
        assert not loop.done()  # the loop lives on
        assert await cache.lookup(secret) == Identity("ci", Role.READER)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
