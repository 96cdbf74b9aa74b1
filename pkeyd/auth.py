"""API tokens: roles, secrets, the use-cases that manage them, and the cache the API reads.

A token is `pkeyd_` followed by 43 URL-safe characters (256 random bits).
Only its SHA-256 is stored: a slow password hash buys nothing for a random
256-bit secret, and a fast one keeps the per-request check cheap. The
secret is shown once, when it is created.

The API never goes to the database for a known token: TokenCache holds the
hashes of every valid token and reloads them every `auth_cache_s` seconds
(and at once after a change made through the API). A token revoked by
`pkeyd token revoke` from another process therefore stops working within
`auth_cache_s` (5 s by default). A token the cache does not know is looked
up once in the database, so one created by another process works at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import structlog
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pkeyd.errors import ConflictError, NotFoundError, ValidationError
from pkeyd.store.models import TokenRow
from pkeyd.store.tokens import TokenRepository

log = structlog.get_logger("pkeyd.auth")

TOKEN_PREFIX = "pkeyd_"
_SECRET_BYTES = 32
_TOKEN = re.compile(r"pkeyd_[A-Za-z0-9_-]{43}")
# What `token list` shows of a token: enough to tell tokens apart, far too
# little to guess the rest.
PREFIX_CHARS = 12
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# The audit trail's name for requests made without auth: no token may take it.
RESERVED_NAMES = frozenset({"anonymous"})
# Unknown well-formed tokens remembered between refreshes, so that replaying
# one does not reach the database each time; past this many the set restarts.
_MAX_UNKNOWN = 10_000


class Role(StrEnum):
    READER = "reader"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        """Roles are ordered reader < operator < admin; each may do what those below it may."""
        return self.rank >= needed.rank


_RANKS = {Role.READER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def looks_like_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


def parse_name(text: object, field: str = "name") -> str:
    if not isinstance(text, str) or _NAME.fullmatch(text) is None:
        raise ValidationError(
            "a token name is 1-64 characters of letters, digits and . _ @ -, "
            "starting with a letter or digit",
            field,
        )
    if text in RESERVED_NAMES:
        raise ValidationError(f"{text!r} is reserved for requests made without a token", field)
    return text


def parse_role(text: object, field: str = "role") -> Role:
    for role in Role:
        if text == role.value:
            return role
    choices = ", ".join(r.value for r in Role)
    raise ValidationError(f"role must be one of {choices}, not {text!r}", field)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid token speaks for."""

    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored token as listed: never the secret, never the hash."""

    name: str
    role: Role
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role.value,
            "prefix": self.prefix,
            "created_at": self.created_at.isoformat(),
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _info(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        name=row.name,
        role=Role(row.role),
        prefix=row.prefix,
        created_at=_utc(row.created_at),
        revoked_at=None if row.revoked_at is None else _utc(row.revoked_at),
    )


class TokenService:
    """Create, list and revoke tokens; each call owns its transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def create(self, name: str, role: Role) -> tuple[TokenInfo, str]:
        """A new token: its listing and the secret, which is not kept anywhere."""
        name = parse_name(name)
        secret = new_secret()
        try:
            async with self._sessions() as session, session.begin():
                repo = TokenRepository(session)
                existing = await repo.by_name(name)
                if existing is not None:
                    raise _name_taken(existing)
                row = await repo.add(
                    name=name,
                    role=role.value,
                    token_hash=hash_secret(secret),
                    prefix=secret[:PREFIX_CHARS],
                    now=datetime.now(UTC),
                )
                info = _info(row)
        except IntegrityError as exc:  # another process created the name meanwhile
            raise ConflictError(f"a token named {name!r} exists already", "name") from exc
        log.info("token_created", name=name, role=role.value)
        return info, secret

    async def list_tokens(self) -> list[TokenInfo]:
        async with self._sessions() as session, session.begin():
            return [_info(row) for row in await TokenRepository(session).all()]

    async def revoke(self, name: str) -> TokenInfo:
        """Revoke a token for good; revoking a revoked token changes nothing."""
        async with self._sessions() as session, session.begin():
            row = await TokenRepository(session).by_name(name)
            if row is None:
                raise NotFoundError(f"no token named {name!r}", "name")
            already = row.revoked_at is not None
            if not already:
                row.revoked_at = datetime.now(UTC)
            info = _info(row)
        if not already:
            log.info("token_revoked", name=name)
        return info

    async def find(self, token_hash: str) -> Identity | None:
        async with self._sessions() as session, session.begin():
            row = await TokenRepository(session).valid_by_hash(token_hash)
            return None if row is None else Identity(row.name, Role(row.role))

    async def valid_tokens(self) -> dict[str, Identity]:
        async with self._sessions() as session, session.begin():
            rows = await TokenRepository(session).valid()
        return {h: Identity(name, Role(role)) for h, name, role in rows}


def _name_taken(row: TokenRow) -> ConflictError:
    if row.revoked_at is not None:
        return ConflictError(
            f"the name {row.name!r} belonged to a revoked token; names are never reused "
            "so that the audit trail stays unambiguous",
            "name",
        )
    return ConflictError(f"a token named {row.name!r} exists already", "name")


class TokenCache:
    """The valid tokens by hash, for the API; see the module docstring for the timing."""

    def __init__(self, service: TokenService, refresh_s: float) -> None:
        self._service = service
        self._refresh_s = refresh_s
        self._valid: dict[str, Identity] = {}
        self._unknown: set[str] = set()

    @property
    def count(self) -> int:
        """Valid tokens known now."""
        return len(self._valid)

    async def refresh(self) -> None:
        valid = await self._service.valid_tokens()
        self._valid = valid
        self._unknown = set()

    async def run(self) -> None:
        """Reload every refresh_s; a failed reload keeps the last set (and is logged)."""
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("token_refresh_failed", error=str(exc))

    async def lookup(self, secret: str) -> Identity | None:
        """The identity of a valid token, else None.

        A dict lookup by hash is safe from timing attacks: what its timing
        could reveal is about the SHA-256 of the guess, which tells nothing
        about any stored token's secret.
        """
        token_hash = hash_secret(secret)
        identity = self._valid.get(token_hash)
        if identity is not None:
            return identity
        if not looks_like_token(secret) or token_hash in self._unknown:
            return None
        try:
            identity = await self._service.find(token_hash)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("token_lookup_failed", error=str(exc))
            return None
        if identity is None:
            if len(self._unknown) >= _MAX_UNKNOWN:
                self._unknown = set()
            self._unknown.add(token_hash)
            return None
        self._valid[token_hash] = identity
        return identity
