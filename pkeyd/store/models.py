"""Tables of the desired state. Alembic migrations are the only way to create them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so migrations can address them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Comparisons, not an IN list: SQLite builds a temporary B-tree of an IN
# list in a CHECK for every row it writes (see migration 0005).
MEMBERSHIP_CHECK = "membership = 'full' OR membership = 'limited' OR membership = 'both'"


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that always reads back aware, in UTC.

    PostgreSQL keeps the zone; SQLite hands back naive values. pkeyd writes
    UTC only, so a naive value read back is UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class PartitionRow(Base):
    __tablename__ = "partitions"
    __table_args__ = (CheckConstraint("pkey >= 1 AND pkey <= 32767", name="pkey_range"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pkey: Mapped[int] = mapped_column(Integer, unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(31), unique=True, nullable=False)
    ipoib: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    mtu: Mapped[int | None] = mapped_column(Integer)
    rate: Mapped[int | None] = mapped_column(Integer)
    sl: Mapped[int | None] = mapped_column(Integer)
    scope_mask: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    q_key: Mapped[int | None] = mapped_column(BigInteger)
    tclass: Mapped[int | None] = mapped_column(Integer)
    flow_label: Mapped[int | None] = mapped_column(Integer)
    defmember: Mapped[str | None] = mapped_column(String(8))
    indx0: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    generation: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    members: Mapped[list[MemberRow]] = relationship(
        back_populates="partition",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="MemberRow.guid",
    )
    keywords: Mapped[list[KeywordMemberRow]] = relationship(
        back_populates="partition",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    mgroups: Mapped[list[McastGroupRow]] = relationship(
        back_populates="partition",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="McastGroupRow.mgid",
    )


class MemberRow(Base):
    __tablename__ = "members"
    __table_args__ = (CheckConstraint(MEMBERSHIP_CHECK, name="membership"),)

    partition_id: Mapped[int] = mapped_column(
        ForeignKey("partitions.id", ondelete="CASCADE"), primary_key=True
    )
    # GUIDs are unsigned 64-bit: too wide for a signed BIGINT, so they are kept
    # in their canonical text form, which also sorts like the number.
    guid: Mapped[str] = mapped_column(String(18), primary_key=True, index=True)
    membership: Mapped[str] = mapped_column(String(8), nullable=False)
    index0: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    partition: Mapped[PartitionRow] = relationship(back_populates="members")


class KeywordMemberRow(Base):
    __tablename__ = "keyword_members"
    __table_args__ = (CheckConstraint(MEMBERSHIP_CHECK, name="membership"),)

    partition_id: Mapped[int] = mapped_column(
        ForeignKey("partitions.id", ondelete="CASCADE"), primary_key=True
    )
    keyword: Mapped[str] = mapped_column(String(12), primary_key=True)
    membership: Mapped[str] = mapped_column(String(8), nullable=False)
    index0: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    partition: Mapped[PartitionRow] = relationship(back_populates="keywords")


class McastGroupRow(Base):
    __tablename__ = "mgroups"
    # A multicast group belongs to one partition in the whole subnet.
    __table_args__ = (UniqueConstraint("mgid", name="uq_mgroups_mgid"),)

    partition_id: Mapped[int] = mapped_column(
        ForeignKey("partitions.id", ondelete="CASCADE"), primary_key=True
    )
    mgid: Mapped[str] = mapped_column(String(39), primary_key=True)
    mtu: Mapped[int | None] = mapped_column(Integer)
    rate: Mapped[int | None] = mapped_column(Integer)
    sl: Mapped[int | None] = mapped_column(Integer)
    scope_mask: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    q_key: Mapped[int | None] = mapped_column(BigInteger)
    tclass: Mapped[int | None] = mapped_column(Integer)
    flow_label: Mapped[int | None] = mapped_column(Integer)
    partition: Mapped[PartitionRow] = relationship(back_populates="mgroups")


class StateRow(Base):
    """A single row holding the generation every committed change bumps."""

    __tablename__ = "state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    desired_generation: Mapped[int] = mapped_column(Integer, nullable=False)


class TokenRow(Base):
    """An API token: only its SHA-256 is kept; the secret is shown once, at creation."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint("role IN ('reader', 'operator', 'admin')", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    role: Mapped[str] = mapped_column(String(8), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class RevisionRow(Base):
    """One committed change, named by the generation it got: who, when, what."""

    __tablename__ = "revisions"

    generation: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    actor: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    # The revision this one restored, for a restore.
    restored: Mapped[int | None] = mapped_column(Integer)
    changes: Mapped[list[RevisionChangeRow]] = relationship(
        back_populates="revision",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="RevisionChangeRow.pkey",
    )


class RevisionChangeRow(Base):
    """What one revision did to one partition: a delta that can be undone (JSON)."""

    __tablename__ = "revision_changes"

    generation: Mapped[int] = mapped_column(
        ForeignKey("revisions.generation", ondelete="CASCADE"), primary_key=True
    )
    pkey: Mapped[int] = mapped_column(Integer, primary_key=True, index=True)
    delta: Mapped[str] = mapped_column(Text, nullable=False)
    revision: Mapped[RevisionRow] = relationship(back_populates="changes")


class IdempotencyRow(Base):
    """The answer to a POST sent with an Idempotency-Key, stored with its change."""

    __tablename__ = "idempotency_keys"

    actor: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    # {"body": ..., "headers": {...}} as JSON text.
    response: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, index=True)
