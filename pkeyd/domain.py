"""Pure domain types: PKey, PortGuid, Membership, partition names and partitions.

No I/O here. Every constructor validates, so a value of one of these types is
always something OpenSM's parser reads the way it was meant.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Self

from pkeyd.errors import ValidationError
from pkeyd.groups import GroupSettings, McastGroup

PKEY_MIN = 0x0001
PKEY_MAX = 0x7FFE
DEFAULT_PKEY = 0x7FFF
DEFAULT_NAME = "Default"
FULL_BIT = 0x8000

NAME_MAX = 31
# OpenSM splits the statement header on these; a name holding one is misread.
_NAME_FORBIDDEN = frozenset("=,:;#")
_HEX16 = re.compile(r"[0-9a-fA-F]{16}")
_PKEY_HEX = re.compile(r"0x[0-9a-f]{1,4}")
_COLON_GUID = re.compile(r"[0-9a-fA-F]{4}(:[0-9a-fA-F]{4}){3}")


@dataclass(frozen=True, order=True, slots=True)
class PKey:
    """A 15-bit partition key without the membership bit."""

    value: int

    def __post_init__(self) -> None:
        if not 0 < self.value <= DEFAULT_PKEY:
            raise ValidationError(f"pkey 0x{self.value:x} is outside 0x0001-0x7fff", "pkey")

    @classmethod
    def parse(cls, raw: object, field_name: str = "pkey") -> Self:
        """Parse `0x0a12` (hex string) or an integer; a user PKey or the Default."""
        if isinstance(raw, bool):
            raise ValidationError("must be a hex string like 0x0a12 or an integer", field_name)
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, str):
            text = raw.strip().lower()
            if not _PKEY_HEX.fullmatch(text):
                raise ValidationError(
                    f"{raw!r} is not a PKey; write it as hex like 0x0a12", field_name
                )
            value = int(text, 16)
        else:
            raise ValidationError("must be a hex string like 0x0a12 or an integer", field_name)
        if not 0 < value <= DEFAULT_PKEY:
            raise ValidationError(
                f"0x{value:04x} is outside the PKey range 0x0001-0x7fff "
                "(the membership bit 0x8000 is set per member, not in the PKey)",
                field_name,
            )
        return cls(value)

    @classmethod
    def user(cls, raw: object, field_name: str = "pkey") -> Self:
        """Parse a PKey a client may create: 0x0001-0x7ffe, never the Default."""
        pkey = cls.parse(raw, field_name)
        if pkey.is_default:
            raise ValidationError(
                "0x7fff is the Default partition, managed by pkeyd; it cannot be created",
                field_name,
            )
        return pkey

    @property
    def is_default(self) -> bool:
        return self.value == DEFAULT_PKEY

    def __str__(self) -> str:
        return f"0x{self.value:04x}"


@dataclass(frozen=True, order=True, slots=True)
class PortGuid:
    """A port's EUI-64 GUID, always shown as `0x` + 16 lowercase hex digits."""

    value: int

    def __post_init__(self) -> None:
        if not 0 < self.value < 1 << 64:
            raise ValidationError("a GUID is a non-zero 64-bit value", "guid")

    @classmethod
    def parse(cls, raw: object, field_name: str = "guid") -> Self:
        """Accept `0x0002c90300a1b2c3`, `0002c90300a1b2c3` and `0002:c903:00a1:b2c3`.

        Exactly 16 hex digits are required: a shorter form is too easy to get
        wrong and OpenSM would read an unprefixed one as decimal or octal.
        """
        if not isinstance(raw, str):
            raise ValidationError("must be a string of 16 hex digits", field_name)
        text = raw.strip()
        if text[:2].lower() == "0x":
            text = text[2:]
        elif _COLON_GUID.fullmatch(text):
            text = text.replace(":", "")
        if not _HEX16.fullmatch(text):
            raise ValidationError(
                f"{raw!r} is not a port GUID; use 0x0002c90300a1b2c3, 0002c90300a1b2c3 "
                "or 0002:c903:00a1:b2c3",
                field_name,
            )
        value = int(text, 16)
        if value == 0:
            raise ValidationError("GUID 0 is not a port", field_name)
        return cls(value)

    def __str__(self) -> str:
        return f"0x{self.value:016x}"


class Membership(enum.StrEnum):
    FULL = "full"
    LIMITED = "limited"
    BOTH = "both"

    @classmethod
    def parse(cls, raw: object, field_name: str = "membership") -> Membership:
        try:
            return cls(raw) if isinstance(raw, str) else cls("")
        except ValueError:
            raise ValidationError(
                f"{raw!r} is not a membership; use full, limited or both", field_name
            ) from None


def validate_name(raw: object, field_name: str = "name") -> str:
    """A partition name OpenSM parses back unchanged."""
    if not isinstance(raw, str):
        raise ValidationError("must be a string", field_name)
    if not 1 <= len(raw) <= NAME_MAX:
        raise ValidationError(f"must be 1-{NAME_MAX} characters (OpenSM truncates)", field_name)
    if raw != raw.strip():
        raise ValidationError("must not start or end with white space", field_name)
    bad = sorted(set(raw) & _NAME_FORBIDDEN)
    if bad:
        raise ValidationError(f"must not contain {' '.join(bad)}", field_name)
    if any(not (0x20 <= ord(c) < 0x7F) for c in raw):
        raise ValidationError("must be printable ASCII", field_name)
    if raw[0].isdigit():
        raise ValidationError("must not start with a digit (OpenSM reads it as a PKey)", field_name)
    if raw == DEFAULT_NAME:
        raise ValidationError("'Default' is the name of 0x7fff, managed by pkeyd", field_name)
    return raw


# Keyword members, in the order pkeyd renders them: SELF after the ALL kinds,
# so that `ALL=limited, SELF=full` gives the SM port full membership.
KEYWORDS = ("ALL", "ALL_CAS", "ALL_SWITCHES", "ALL_ROUTERS", "SELF")


def parse_keyword(raw: object, field_name: str) -> str:
    if not isinstance(raw, str) or raw not in KEYWORDS:
        raise ValidationError(
            f"{raw!r} is not a keyword; use one of {', '.join(KEYWORDS)} (case-sensitive)",
            field_name,
        )
    return raw


@dataclass(frozen=True, slots=True)
class Member:
    guid: PortGuid
    membership: Membership
    index0: bool = False  # OpenSM puts this PKey at index 0 of the port's table


@dataclass(frozen=True, slots=True)
class KeywordMember:
    """ALL, ALL_CAS, ALL_SWITCHES, ALL_ROUTERS or SELF: expanded by OpenSM at each sweep."""

    keyword: str
    membership: Membership
    index0: bool = False


@dataclass(frozen=True, slots=True)
class Partition:
    """A partition as stored: members sorted by GUID, keywords in KEYWORDS order."""

    pkey: PKey
    name: str
    ipoib: bool
    members: tuple[Member, ...] = field(default=())
    keywords: tuple[KeywordMember, ...] = field(default=())
    settings: GroupSettings = field(default_factory=GroupSettings)
    defmember: Membership | None = None
    indx0: bool = False
    mgroups: tuple[McastGroup, ...] = field(default=())
    # The generation that last changed it (bookkeeping, not part of its meaning).
    generation: int = field(default=0, compare=False)

    @property
    def is_default(self) -> bool:
        return self.pkey.is_default


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Everything pkeyd wants on the fabric, as of one committed generation."""

    generation: int
    partitions: tuple[Partition, ...]


@dataclass(frozen=True, slots=True)
class PKeyRange:
    """The range the allocator picks PKeys from when a client sends none."""

    low: int = PKEY_MIN
    high: int = PKEY_MAX

    def __post_init__(self) -> None:
        if not PKEY_MIN <= self.low <= self.high <= PKEY_MAX:
            raise ValueError(
                f"PKey range 0x{self.low:04x}-0x{self.high:04x} must lie within 0x0001-0x7ffe"
            )

    @classmethod
    def parse(cls, text: str) -> PKeyRange:
        low, sep, high = text.partition("-")
        if not sep:
            raise ValueError(f"PKey range {text!r} must look like 0x0001-0x7ffe")
        return cls(int(low, 0), int(high, 0))

    def __str__(self) -> str:
        return f"0x{self.low:04x}-0x{self.high:04x}"
