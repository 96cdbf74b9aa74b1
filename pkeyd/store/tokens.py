"""Queries on the API tokens. Runs inside a session the caller owns; never commits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from pkeyd.store.models import TokenRow


class TokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(
        self, *, name: str, role: str, token_hash: str, prefix: str, now: datetime
    ) -> TokenRow:
        row = TokenRow(name=name, role=role, token_hash=token_hash, prefix=prefix, created_at=now)
        self._session.add(row)
        await self._session.flush()
        return row

    async def by_name(self, name: str) -> TokenRow | None:
        result = await self._session.execute(select(TokenRow).where(TokenRow.name == name))
        return result.scalar_one_or_none()

    async def valid_by_hash(self, token_hash: str) -> TokenRow | None:
        result = await self._session.execute(
            select(TokenRow).where(TokenRow.token_hash == token_hash, TokenRow.revoked_at.is_(None))
        )
        return result.scalar_one_or_none()

    async def all(self) -> Sequence[TokenRow]:
        result = await self._session.execute(select(TokenRow).order_by(TokenRow.name))
        return result.scalars().all()

    async def valid(self) -> Sequence[tuple[str, str, str]]:
        """(hash, name, role) of every token not revoked: what the API's cache holds."""
        result = await self._session.execute(
            select(TokenRow.token_hash, TokenRow.name, TokenRow.role).where(
                TokenRow.revoked_at.is_(None)
            )
        )
        return [(h, n, r) for h, n, r in result.all()]
