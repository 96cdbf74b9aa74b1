"""What OpenSM makes of a partitions.conf: the result types of ``pkeyd.opensm.parse``.

Pure data, no I/O. Every value here is what OpenSM *acts on*, after its own
quirks were applied (prefix-matched keywords resolved, ``both`` folded into
``full`` without allow_both_pkeys, PKeys cast to 15 bits, names truncated),
so a caller never has to re-derive OpenSM's reading of the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Literal, cast

Severity = Literal["fatal", "warning"]
Membership = Literal["full", "limited", "both"]

# Keyword member targets, spelled out in full whatever prefix the file used.
KEYWORD_TARGETS = ("ALL", "ALL_CAS", "ALL_SWITCHES", "ALL_ROUTERS", "SELF")
DEFAULT_PKEY = 0x7FFF
DEFAULT_PARTITION_NAME = "Default"


# Every diagnostic code, with what OpenSM does in that case. Stable: tools
# may match on codes; messages add the specifics in front of this text.
FATAL_CODES: dict[str, str] = {
    "no_statements": "OpenSM treats a file without any statement (empty, comments only) "
    "as an error",
    "no_partition_definition": "no ':' here: a statement header (Name[=PKey][,flags] :) "
    "needs its ':' on the same line",
    "bad_partition_definition": "OpenSM cannot create the partition",
    "bad_guid": "OpenSM rejects the member (PARSE ERROR: bad PortGUID)",
    "mgid_without_value": "'mgid' without '=GID' crashes OpenSM (NULL passed to inet_pton)",
    "undefined_buffer_read": "OpenSM's parser runs past this line into bytes of its buffer "
    "that the file never wrote, so the outcome depends on uninitialized memory",
    "unreadable": "the file cannot be read",
}
WARNING_CODES: dict[str, str] = {
    "carriage_return": "OpenSM does not trim CR: it becomes part of tokens (CRLF file?)",
    "nul_byte": "a NUL byte ends the line for OpenSM, the rest is ignored",
    "line_split": "OpenSM reads lines in 4094-byte pieces, each parsed as a line of its own "
    "(a token cut in two is misread)",
    "long_line": "the line is close to OpenSM's 4094-byte line limit",
    "stale_buffer_read": "OpenSM's parser runs past the end of this line and parses "
    "leftovers of an earlier line from its buffer",
    "prefix_matched": "OpenSM accepts any prefix of a keyword, flag or membership",
    "empty_flag": "a flag without a name is read as mtu",
    "missing_value": "the flag needs a value, OpenSM ignores it",
    "invalid_flag_value": "the value is not usable",
    "suspicious_value": "OpenSM ignores the text after the number",
    "flag_value_out_of_range": "the value is outside the range IB defines",
    "tclass_truncated": "TClass is stored in 8 bits",
    "octal_number": "a leading 0 makes the number octal",
    "negative_number": "a negative number wraps around to a huge unsigned one",
    "unknown_flag": "an unknown partition flag is ignored",
    "invalid_defmember": "defmember takes full, limited or both; OpenSM ignores it",
    "empty_membership": "an empty membership value means full",
    "unknown_membership": "an unknown membership means limited",
    "missing_semicolon": "this looks like a statement header read as a member: is a ';' "
    "missing before it? (the member is read as limited)",
    "both_not_allowed": "'both' means full unless allow_both_pkeys is set in opensm.conf",
    "pkey_truncated": "a PKey is cut to 16 bits",
    "pkey_full_bit": "the 0x8000 bit of a PKey is dropped",
    "pkey_omitted": "without a PKey, OpenSM looks the name up among the partitions it holds, "
    "those of its previous load included, or generates a PKey",
    "duplicate_pkey_name": "a repeated PKey merges into its first definition and keeps that name",
    "name_truncated": "partition names are cut to 31 bytes",
    "sl_without_qos": "sl is forced to 0 unless QoS is enabled",
    "scope_ignored_for_broadcast": "scope= does not reach the IPoIB broadcast group (always "
    "link-local), only the statement's mgid= groups",
    "octal_guid": "a GUID with a leading 0 and no x is octal",
    "decimal_guid": "a GUID without 0x is decimal",
    "mgid_flags_overrun": "without a ',' after the GID, OpenSM reads what follows on the line "
    "(comment text, or the next statement after ';') as the group's flags",
    "mgid_flags_uninitialized": "the mgid entry is last on its line: OpenSM parses "
    "uninitialized memory as its flags; end it with ',' or flags",
    "unknown_mgroup_flag": "an mgid entry takes the rest of its segment as group flags; "
    "unknown ones, members included, are ignored",
    "bad_mgid": "not a multicast GID: OpenSM logs a PARSE ERROR, skips it and parses the rest "
    "of the statement as a new statement",
    "ip_mgroup_rejected": "an IP group needs the partition's PKey (or 0), rate and mtu; "
    "OpenSM does not create it",
    "duplicate_mgid": "the group exists already; this entry is ignored",
    "mgroup_not_created": "OpenSM fails to create the group: it needs a valid MTU (1..5) and "
    "rate (2..24), and an IPoIB group needs the broadcast group of its scope and PKey (ipoib)",
    "empty_partition": "a partition without members is deleted",
    "missing_final_semicolon": "the last statement has no ';': anything appended to the file "
    "becomes its members",
}


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding. ``line`` is the physical line of the file (1-based).

    ``fatal``: OpenSM rejects the whole file and falls back to its no-config
    default. ``warning``: OpenSM accepts it but silently reads something other
    than what was probably meant. ``code`` is a stable snake_case identifier.
    """

    line: int
    severity: Severity
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class GroupFlags:
    """Multicast group parameters (OpenSM's ``struct group_flags``).

    Values are stored as OpenSM stores them: ``mtu``/``rate`` are IB enums,
    ``scope_mask`` has bit N set for each ``scope=N`` (0 = link-local default).
    """

    mtu: int = 4
    rate: int = 3
    sl: int = 0
    scope_mask: int = 0
    q_key: int = 0
    tclass: int = 0
    flow_label: int = 0


@dataclass(frozen=True, slots=True)
class MemberEntry:
    """One member specifier as OpenSM acts on it.

    ``target`` is ``"0x%016x"`` for a GUID or one of ``KEYWORD_TARGETS``.
    ``seq`` orders entries across all partitions (OpenSM applies them in file
    order, which matters for index 0 of a port's table, see ``indx0``).
    """

    target: str
    membership: Membership
    indx0: bool
    line: int
    seq: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class McastGroup:
    """A multicast group from an ``mgid=`` entry that OpenSM creates."""

    mgid: str
    flags: GroupFlags
    line: int


# Consecutive entries of one statement written canonically, kept as text:
# (items, count, indx0, line, first seq). ``items`` is ``TARGET=MEMBERSHIP``
# entries joined by ENTRY_SEP, each target as MemberEntry.target spells it and
# each membership the one OpenSM applies, so the text means exactly the
# MemberEntry objects it stands for. The parser stores rendered files this
# way; the objects are only made when a caller reads ParsedPartition.entries.
MemberRun = tuple[str, int, bool, int, int]
ENTRY_SEP = ", "
# (indx0, number of consecutive entries with that flag), adjacent runs merged.
Indx0Runs = tuple[tuple[bool, int], ...]


def run_entries(runs: Iterable[MemberRun]) -> list[MemberEntry]:
    """The MemberEntry objects that member runs stand for, in order."""
    out: list[MemberEntry] = []
    for items, _, indx0, line, first in runs:
        for seq, item in enumerate(items.split(ENTRY_SEP), first):
            target, _, membership = item.partition("=")
            out.append(MemberEntry(target, cast(Membership, membership), indx0, line, seq))
    return out


def indx0_runs(flags: Iterable[tuple[bool, int]]) -> Indx0Runs:
    """(indx0, count) pairs as Indx0Runs: empty ones dropped, neighbours merged."""
    merged: list[tuple[bool, int]] = []
    for flag, count in flags:
        if merged and merged[-1][0] == flag:
            merged[-1] = (flag, merged[-1][1] + count)
        elif count:
            merged.append((flag, count))
    return tuple(merged)


class ParsedPartition:
    """All statements of one PKey, merged the way OpenSM merges them.

    ``name`` is the first definition's (truncated to 31 bytes, or ``%04x`` of
    the PKey when unnamed); ``sl`` is the last statement's (OpenSM overwrites
    it per statement); ``broadcast`` is the IPoIB broadcast group of the first
    statement with ``ipoib`` (later ones find it already created).

    Immutable, compared and hashed on its fields like a frozen dataclass.
    ``entries`` may be given as member ``runs`` instead (see MemberRun): the
    MemberEntry objects are then made on first access, so a caller that only
    needs ``member_key`` (the self-check of a large render) never pays for
    one object per member.
    """

    pkey: int
    name: str
    ipoib: bool
    broadcast: GroupFlags | None
    sl: int
    mgroups: tuple[McastGroup, ...]
    lines: tuple[int, ...]
    _entries: tuple[MemberEntry, ...] | None
    _runs: tuple[MemberRun, ...]

    def __init__(
        self,
        pkey: int,
        name: str,
        ipoib: bool,
        broadcast: GroupFlags | None,
        sl: int,
        entries: tuple[MemberEntry, ...],
        mgroups: tuple[McastGroup, ...],
        lines: tuple[int, ...],
        *,
        runs: tuple[MemberRun, ...] = (),
    ) -> None:
        if entries and runs:
            raise ValueError("give the entries either as objects or as runs")
        # Straight into the instance dict: the frozen __setattr__ stays out
        # of the way, at half the cost of object.__setattr__ per field (a
        # parse of a large file makes 32,767 of these).
        fields = self.__dict__
        fields["pkey"] = pkey
        fields["name"] = name
        fields["ipoib"] = ipoib
        fields["broadcast"] = broadcast
        fields["sl"] = sl
        fields["_entries"] = None if runs else entries
        fields["_runs"] = runs
        fields["mgroups"] = mgroups
        fields["lines"] = lines

    @property
    def entries(self) -> tuple[MemberEntry, ...]:
        """Every member entry, in file order."""
        entries = self._entries
        if entries is None:
            entries = self.__dict__["_entries"] = tuple(run_entries(self._runs))
        return entries

    def member_key(self) -> tuple[str, Indx0Runs]:
        """The entries as (items, indx0 runs), cheap to compare.

        ``items`` is ``TARGET=MEMBERSHIP`` of every entry in file order joined
        by ENTRY_SEP, and the indx0 runs give each entry's flag in that order:
        two keys are equal exactly when the (target, membership, indx0)
        sequences are.
        """
        if self._entries is None:
            runs = self._runs
            if len(runs) == 1:
                return runs[0][0], ((runs[0][2], runs[0][1]),)
            items = ENTRY_SEP.join([r[0] for r in runs])
            return items, indx0_runs((r[2], r[1]) for r in runs)
        entries = self._entries
        items = ENTRY_SEP.join([f"{e.target}={e.membership}" for e in entries])
        return items, indx0_runs((e.indx0, 1) for e in entries)

    def _fields(self) -> tuple[object, ...]:
        return (
            self.pkey,
            self.name,
            self.ipoib,
            self.broadcast,
            self.sl,
            self.entries,
            self.mgroups,
            self.lines,
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, ParsedPartition)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        names = ("pkey", "name", "ipoib", "broadcast", "sl", "entries", "mgroups", "lines")
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(names, self._fields(), strict=True))
        return f"ParsedPartition({shown})"

    def __reduce__(self) -> tuple[type[ParsedPartition], tuple[object, ...]]:
        return self.__class__, self._fields()

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


@dataclass(frozen=True, slots=True)
class ParseResult:
    """Partitions in order of first definition, and every diagnostic in file order.

    When ``fatal`` is set, ``partitions`` holds what was parsed before the
    fatal line; OpenSM itself discards all of it.
    """

    partitions: tuple[ParsedPartition, ...]
    diagnostics: tuple[Diagnostic, ...]

    @property
    def fatal(self) -> Diagnostic | None:
        return next((d for d in self.diagnostics if d.severity == "fatal"), None)

    @property
    def ok(self) -> bool:
        return self.fatal is None

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "warning")

    def partition(self, pkey: int) -> ParsedPartition | None:
        """The partition with this PKey (full-member bit ignored), if defined."""
        base = pkey & 0x7FFF
        return next((p for p in self.partitions if p.pkey == base), None)
