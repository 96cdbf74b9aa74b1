"""What each token of partitions.conf does to OpenSM's partition table.

``pkeyd.opensm.parse`` walks OpenSM's line buffer (opensm/osm_prtn_config.c)
and hands the tokens it cuts to this module, which emulates the functions
acting on them: partition_add_flag / parse_group_flag, partition_create with
osm_prtn_make_new and friends (osm_prtn.c), partition_add_port, and the
subnet side of mgroup_create. OpenSM's comparisons are kept: ``strncmp(token,
word, strlen(token))`` accepts any prefix of ``word``, the empty one
included; numbers go through base-0 strtoul; C integer truncations apply.
Where OpenSM accepts what it probably should not, a warning is recorded.
"""

from __future__ import annotations

import functools

from pkeyd.opensm.cnum import C_SPACE, HEX_DIGITS, U32, prefixes, strtoul
from pkeyd.opensm.mgroups import (
    MTU_RANGE,
    RATE_RANGE,
    GroupFlagState,
    GroupTable,
)
from pkeyd.opensm.parsed import (
    DEFAULT_PARTITION_NAME,
    DEFAULT_PKEY,
    ENTRY_SEP,
    FATAL_CODES,
    WARNING_CODES,
    Diagnostic,
    GroupFlags,
    McastGroup,
    MemberEntry,
    MemberRun,
    Membership,
    ParsedPartition,
    run_entries,
)

__all__ = ["FatalParseError", "PartitionBuilder", "StatementConf", "strtoul"]

NAME_MAX = 31  # osm_prtn_t.name is char[32]
# Checked in this order, so "s" is scope and "" is mtu (parse_group_flag).
_GROUP_FLAGS = (b"mtu", b"rate", b"scope", b"Q_Key", b"TClass", b"sl", b"FlowLabel")
_FLAG_FIELD = {
    b"mtu": "mtu",
    b"rate": "rate",
    b"Q_Key": "q_key",
    b"TClass": "tclass",
    b"sl": "sl",
    b"FlowLabel": "flow_label",
}
_KEYWORDS = (b"ALL", b"ALL_CAS", b"ALL_SWITCHES", b"ALL_ROUTERS", b"SELF")
_KEYWORD_TARGET = {k.decode().lower(): k.decode() for k in _KEYWORDS}
_CASE_TRAPS = {k.lower() for k in (*_KEYWORDS, b"NONE")}


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _show(raw: bytes) -> str:
    return repr(_name(raw))


_GROUP_FLAG_OF = prefixes(*_GROUP_FLAGS)
_KEYWORD_OF = prefixes(*_KEYWORDS)
_MEMBERSHIP_OF = prefixes(b"full", b"both", b"limited")  # partition_add_port's order
_DEFMEMBER_OF = prefixes(b"limited", b"both", b"full")  # defmember's validity test


class FatalParseError(Exception):
    """OpenSM stops parsing here and falls back to its default config."""

    def __init__(self, code: str, detail: str = "") -> None:
        self.code = code
        self.message = f"{detail}: {FATAL_CODES[code]}" if detail else FATAL_CODES[code]
        super().__init__(self.message)


class PartitionState:
    """One partition of OpenSM's table while the file is parsed.

    Its members are either ``runs`` (canonically written lines, see
    MemberRun) or ``entries``, never both: the first entry that is not part
    of a run turns the runs into entries, so file order is kept.
    """

    __slots__ = (
        "broadcast",
        "entries",
        "in_file",
        "ipoib",
        "lines",
        "mgroups",
        "name",
        "pkey",
        "runs",
        "sl",
    )

    def __init__(self, pkey: int, name: bytes) -> None:
        self.pkey = pkey
        self.name = name
        self.in_file = False
        self.ipoib = False
        self.broadcast: GroupFlags | None = None
        self.sl = 0
        self.entries: list[MemberEntry] = []
        self.runs: list[MemberRun] = []
        self.mgroups: list[McastGroup] = []
        self.lines: list[int] = []

    def member_list(self) -> list[MemberEntry]:
        """``entries``, once the runs so far are turned into entries."""
        if self.runs:
            self.entries = run_entries(self.runs)
            self.runs = []
        return self.entries


class StatementConf:
    """``struct part_conf``: state of one statement, from its header to its ``;``."""

    __slots__ = ("flags", "indx0", "is_ipoib", "membership", "prtn")

    def __init__(self, flags: GroupFlagState | None = None) -> None:
        self.prtn: PartitionState | None = None
        self.is_ipoib = False
        self.flags = GroupFlagState() if flags is None else flags
        self.membership: Membership = "limited"
        self.indx0 = False

    def copy(self) -> StatementConf:
        """A statement with this one's flags, before its partition is created."""
        other = StatementConf(self.flags.copy())
        other.is_ipoib, other.membership, other.indx0 = self.is_ipoib, self.membership, self.indx0
        return other


def _add_warning(diagnostics: list[Diagnostic], line: int, code: str, detail: str = "") -> None:
    text = f"{detail}: {WARNING_CODES[code]}" if detail else WARNING_CODES[code]
    diagnostics.append(Diagnostic(line, "warning", code, text))


class PartitionBuilder:
    """Partition table and diagnostics of one parse, as a fresh OpenSM sees them.

    OpenSM keeps the partitions of its previous load in the table while it
    parses (members cleared), which matters only to statements without a
    PKey (see pkey_omitted); this model starts like a fresh OpenSM.
    """

    def __init__(self, *, allow_both_pkeys: bool, qos: bool) -> None:
        self.allow_both = allow_both_pkeys
        self.qos = qos
        self.diagnostics: list[Diagnostic] = []
        default = PartitionState(DEFAULT_PKEY, DEFAULT_PARTITION_NAME.encode())
        self._table: dict[int, PartitionState] = {DEFAULT_PKEY: default}
        self._by_name: dict[bytes, list[int]] = {default.name: [DEFAULT_PKEY]}
        self._order: list[PartitionState] = []
        # Not self.warn: a bound method would tie the builder into a cycle,
        # and every object of a parse would wait for the cyclic collector.
        self.groups = GroupTable(functools.partial(_add_warning, self.diagnostics))
        self._pkey_counter = 0  # global_pkey_counter, reset for every load
        self._seq = 0

    def warn(self, line: int, code: str, detail: str = "") -> None:
        _add_warning(self.diagnostics, line, code, detail)

    def fatal(self, line: int, error: FatalParseError) -> None:
        self.diagnostics.append(Diagnostic(line, "fatal", error.code, error.message))

    def _prefix(self, line: int, what: str, given: bytes, meant: bytes) -> None:
        if given and given != meant:
            self.warn(line, "prefix_matched", f"{what} {_show(given)} is read as {_show(meant)}")

    def _number(self, line: int, what: str, raw: bytes, end: int, base: int) -> None:
        if base == 16 and raw[:1] == b"0":
            return  # plain hex reads as it looks
        text = raw[:end].lstrip(C_SPACE)
        digits = text.lstrip(b"+-")
        if base == 8 and len(digits) > 1 and int(digits, 8) != int(digits, 10):
            self.warn(line, "octal_number", f"{what} {_show(raw)} is {int(digits, 8)}")
        elif text.startswith(b"-"):
            self.warn(line, "negative_number", f"{what} {_show(raw)}")

    # -- partition_add_flag / parse_group_flag ----------------------------

    def group_flag(self, f: GroupFlagState, flag: bytes, val: bytes | None, line: int) -> bool:
        """parse_group_flag: False when ``flag`` is not a group flag."""
        word = _GROUP_FLAG_OF.get(flag)
        if word is None:
            return False
        self._prefix(line, "flag", flag, word)
        if val is None:  # OpenSM: "requires valid value - skipped"
            if flag:  # an empty flag is what a stray ',' gives: harmless
                self.warn(line, "missing_value", f"flag {_show(word)}")
            return True
        if not flag:
            self.warn(line, "empty_flag", f"'={_name(val)}'")
        v, end, base = strtoul(val)
        label = f"{word.decode()}={_name(val)}"
        if word in (b"sl", b"FlowLabel"):
            # These two reject trailing junk (blanks allowed) and keep the old value.
            limit = 15 if word == b"sl" else 0xFFFFF
            if not val or v & U32 > limit or (end < len(val) and val[end] not in C_SPACE):
                self.warn(line, "invalid_flag_value", f"{label} (0..{limit}) is ignored")
                return True
        elif end == 0:  # verify_val: stores whatever strtoul gave, 0 here
            self.warn(line, "invalid_flag_value", f"{label} is not a number, OpenSM stores 0")
        elif end < len(val):
            self.warn(line, "suspicious_value", label)
        self._number(line, word.decode(), val, end, base)
        if word == b"scope":
            if not 1 <= v & U32 <= 0xF:
                self.warn(line, "flag_value_out_of_range", f"{label} (1..15) is ignored")
            else:
                f.scope_mask |= 1 << (v & U32)
            return True
        stored = v & (0xFF if word == b"TClass" else U32)  # TClass is a uint8_t
        setattr(f, _FLAG_FIELD[word], stored)
        valid = MTU_RANGE if word == b"mtu" else RATE_RANGE if word == b"rate" else None
        if valid is not None and stored not in valid:
            self.warn(line, "flag_value_out_of_range", f"{label} ({valid.start}..{valid[-1]})")
        if v > 0xFF and word == b"TClass":
            self.warn(line, "tclass_truncated", f"{label} is stored as {stored}")
        return True

    def add_flag(self, conf: StatementConf, flag: bytes, val: bytes | None, line: int) -> None:
        """partition_add_flag: group flags first, then ipoib, defmember, indx0."""
        if self.group_flag(conf.flags, flag, val, line):
            return
        if b"ipoib".startswith(flag):
            self._prefix(line, "flag", flag, b"ipoib")
            conf.is_ipoib = True
        elif b"defmember".startswith(flag):
            self._prefix(line, "flag", flag, b"defmember")
            if val is None or val not in _DEFMEMBER_OF:
                self.warn(line, "invalid_defmember", f"defmember={_name(val or b'')}")
            else:  # assigned testing full first: an empty value means full
                conf.membership = self._membership(val, line, "defmember")
        elif flag == b"indx0":  # the only flag compared with strcmp
            conf.indx0 = True
        else:
            self.warn(line, "unknown_flag", _show(flag))

    def _membership(self, word: bytes, line: int, what: str) -> Membership:
        """full / both / limited from (a prefix of) a word; anything else is limited."""
        meant = _MEMBERSHIP_OF.get(word)
        if not word:
            self.warn(line, "empty_membership", f"{what}=")
        elif meant is None:
            code = "missing_semicolon" if b":" in word else "unknown_membership"
            self.warn(line, code, f"{what}={_name(word)}")
            return "limited"
        else:
            self._prefix(line, what, word, meant)
        if meant == b"both" and not self.allow_both:
            self.warn(line, "both_not_allowed")
            return "full"
        return "limited" if meant == b"limited" else "both" if meant == b"both" else "full"

    # -- partition_create / osm_prtn_make_new -----------------------------

    def create(self, conf: StatementConf, name: bytes, pkey_text: bytes | None, line: int) -> None:
        """partition_create; raises FatalParseError for an unusable PKey."""
        given: bytes | None = name
        if pkey_text is None and name[:1].isdigit():
            pkey_text, given = name, None  # "0x12 : ..." names the PKey
        pkey = 0
        if pkey_text is not None:
            v, end, base = strtoul(pkey_text)
            if end == 0 or end != len(pkey_text):
                raise FatalParseError("bad_partition_definition", f"PKey {_show(pkey_text)}")
            self._number(line, "PKey", pkey_text, end, base)
            pkey = v & 0xFFFF
            if v > 0xFFFF:
                self.warn(line, "pkey_truncated", f"{_name(pkey_text)} is {pkey:#06x}")
            if pkey & 0x8000:
                self.warn(line, "pkey_full_bit", f"{pkey:#06x} is {pkey & 0x7FFF:#06x}")
        conf.prtn = self.place(conf.flags, conf.is_ipoib, given, pkey, line)

    def place(
        self, flags: GroupFlagState, ipoib: bool, name: bytes | None, pkey: int, line: int
    ) -> PartitionState:
        """The rest of partition_create, once the PKey is read (``name`` None: unnamed).

        ``flags`` and ``ipoib`` are the statement's; its sl is forced to 0
        without QoS (later mgid groups of the statement inherit that).
        """
        part = self._make_new(name, pkey, line)
        if flags.sl != 0 and not self.qos:
            self.warn(line, "sl_without_qos", f"sl={flags.sl}")
            flags.sl = 0
        part.sl = flags.sl & 0xFF  # the last statement of a PKey sets it
        part.lines.append(line)
        if not part.in_file:
            part.in_file = True
            self._order.append(part)
        if ipoib:
            self._broadcast(flags, part, line)
        return part

    def _make_new(self, name: bytes | None, pkey: int, line: int) -> PartitionState:
        pkey &= 0x7FFF
        if pkey == 0:
            found = self._find_by_name(name) if name is not None else None
            if found is not None:
                self.warn(line, "pkey_omitted", f"found as {found.pkey:#06x} here")
                return found
            pkey = self._generate_pkey()
            if not pkey:
                raise FatalParseError("bad_partition_definition", "no PKey left to generate")
            self.warn(line, "pkey_omitted", f"{pkey:#06x} on a fresh OpenSM")
        stored = name[:NAME_MAX] if name else b"%04x" % pkey
        existing = self._table.get(pkey)
        if existing is not None:
            if name and stored != existing.name:
                self.warn(
                    line, "duplicate_pkey_name", f"{_show(name)} joins {_show(existing.name)}"
                )
            return existing
        if name and len(name) > NAME_MAX:
            self.warn(line, "name_truncated", _show(name))
        part = PartitionState(pkey, stored)
        self._table[pkey] = part
        self._by_name.setdefault(stored, []).append(pkey)
        return part

    def _find_by_name(self, name: bytes) -> PartitionState | None:
        # osm_prtn_find_by_name walks a qmap keyed by the network-order PKey
        # read as a host integer (byte-swapped on x86) and compares with
        # strncmp(p->name, name, 32): a name over 31 bytes never matches.
        pkeys = self._by_name.get(name)
        if not pkeys:
            return None
        return self._table[min(pkeys, key=lambda k: ((k & 0xFF) << 8) | (k >> 8))]

    def _generate_pkey(self) -> int:
        while self._pkey_counter < DEFAULT_PKEY - 1:
            self._pkey_counter += 1
            if self._pkey_counter not in self._table:
                return self._pkey_counter
        return 0

    def _broadcast(self, flags: GroupFlagState, part: PartitionState, line: int) -> None:
        part.ipoib = True
        if flags.scope_mask:
            self.warn(line, "scope_ignored_for_broadcast")
        group = self.groups.broadcast(part.pkey, flags, line)
        if group is not None:
            part.broadcast = group

    # -- partition_add_port -----------------------------------------------

    def add_port(self, conf: StatementConf, name: bytes, flag: bytes | None, line: int) -> None:
        """partition_add_port; raises FatalParseError for a bad PortGUID."""
        if not name:
            return
        if b"NONE".startswith(name):
            self._prefix(line, "member", name, b"NONE")
            return
        membership = conf.membership if flag is None else self._membership(flag, line, "member")
        target = self._target(name, line)
        if target is None:
            raise FatalParseError("bad_guid", _bad_guid(name, flag))
        part = conf.prtn
        assert part is not None  # members only follow a created partition
        self._seq += 1
        part.member_list().append(MemberEntry(target, membership, conf.indx0, line, self._seq))

    def add_simple_ports(
        self, conf: StatementConf, entries: list[tuple[str, str]], line: int, both: bool
    ) -> None:
        """add_port for the reader's vetted (target, suffix) pairs: the target is
        ``0x`` + 16 lowercase hex digits (not 0) or a lowercased exact keyword,
        the suffix an exact membership or empty (none given); ``both`` tells
        whether any suffix may be "both"."""
        part = conf.prtn
        assert part is not None
        of: dict[str, Membership] = {"": conf.membership, "full": "full", "limited": "limited"}
        of["both"] = "both" if self.allow_both else "full"
        if both and not self.allow_both:
            for _ in range(sum(1 for _, suffix in entries if suffix == "both")):
                self.warn(line, "both_not_allowed")
        indx0, first = conf.indx0, self._seq + 1
        part.member_list().extend(
            MemberEntry(
                target if target[0] == "0" else _KEYWORD_TARGET[target],
                of[suffix],
                indx0,
                line,
                seq,
            )
            for seq, (target, suffix) in enumerate(entries, first)
        )
        self._seq += len(entries)

    def add_run(self, part: PartitionState, indx0: bool, items: str, line: int) -> None:
        """add_port for canonically written entries, kept as one MemberRun.

        ``items`` must be ``TARGET=MEMBERSHIP`` entries joined by ENTRY_SEP,
        each target ``0x`` + 16 lowercase hex digits (not 0) or an exact
        keyword, each membership exact and, without allow_both_pkeys, not
        "both": then every entry means what it says and add_port would
        record exactly these targets and memberships without a warning.
        """
        count = items.count(ENTRY_SEP) + 1
        run = (items, count, indx0, line, self._seq + 1)
        self._seq += count
        if part.entries:
            part.entries += run_entries((run,))
        else:
            part.runs.append(run)

    def _target(self, name: bytes, line: int) -> str | None:
        if len(name) == 18 and name[:2] in (b"0x", b"0X") and HEX_DIGITS.issuperset(name[2:]):
            guid = int(name[2:], 16)  # the usual 0x + 16 digits, without strtoull
            return f"0x{guid:016x}" if guid else None
        if name[0] in b"AS":
            word = _KEYWORD_OF.get(name)
            if word is not None:
                self._prefix(line, "member", name, word)
                return word.decode()
        guid, end, base = strtoul(name)  # strtoull is the same on LP64
        if guid == 0 or end != len(name):
            return None
        target = f"0x{guid:016x}"
        if base == 8:
            self.warn(line, "octal_guid", f"{_show(name)} is {target}")
        elif base == 10:
            self.warn(line, "decimal_guid", f"{_show(name)} is {target}")
        elif name[:1] in C_SPACE + b"+-":
            self.warn(line, "suspicious_value", f"GUID {_show(name)} is {target}")
        return target

    # -- multicast groups (the subnet's side of mgroup_create) ------------

    def add_mgroup(self, part: PartitionState, mgid: bytes, f: GroupFlagState, line: int) -> None:
        """The creation step of mgroup_create: the group, if OpenSM creates it."""
        group = self.groups.add(mgid, f, line)
        if group is not None:
            part.mgroups.append(group)

    def finish(self, *, complete: bool) -> tuple[ParsedPartition, ...]:
        """Freeze the partitions; ``complete`` adds the end-of-file warnings."""
        out = []
        for part in self._order:
            if complete and not part.entries and not part.runs and part.pkey != DEFAULT_PKEY:
                self.warn(part.lines[0], "empty_partition", f"{part.pkey:#06x}")
            entries, groups, lines = tuple(part.entries), tuple(part.mgroups), tuple(part.lines)
            name = _name(part.name)
            out.append(
                ParsedPartition(
                    part.pkey,
                    name,
                    part.ipoib,
                    part.broadcast,
                    part.sl,
                    entries,
                    groups,
                    lines,
                    runs=tuple(part.runs),
                )
            )
        return tuple(out)


def _bad_guid(name: bytes, flag: bytes | None) -> str:
    if name in _CASE_TRAPS:
        hint = "keywords are case-sensitive"
    elif flag is not None and b":" in flag:
        hint = "a statement header, missing ';' before it?"
    elif strtoul(name)[:2] == (0, len(name)):
        hint = "GUID 0"
    elif HEX_DIGITS.issuperset(name):
        hint = "hexadecimal needs 0x"
    else:
        return _show(name)
    return f"{_show(name)} ({hint})"
