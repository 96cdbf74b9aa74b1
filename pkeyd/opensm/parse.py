"""Parse partitions.conf exactly as OpenSM 3.3.23 does (opensm/osm_prtn_config.c).

OpenSM's parser is a char-pointer walk over one ``char line[4096]`` buffer
that it edits in place, and several of its quirks only make sense at that
level: where a statement ends is computed from token lengths, not found, so
a stray ``;`` or an ``mgid=`` entry without a following ``,`` moves the read
position past the end of the current line, into bytes left in the buffer by
an earlier, longer line. To read a file the way OpenSM does, this module
keeps the same buffer, writes the same NUL bytes into it and moves the same
offsets, function by function:

* ``osm_prtn_config_parse_file`` -> ``_Reader.run`` / ``_Reader._chunk``
* ``parse_part_conf`` -> ``_Reader._statement``
* ``parse_name_token`` -> ``_Reader._token``
* ``mgroup_create`` / ``parse_mgroup_flags`` -> ``_Reader._mgroup``

What each token *does* (flags, PKeys, members) is in
``pkeyd.opensm.partition_builder``. Bytes of the buffer that no line of the
file wrote hold whatever the stack held: OpenSM then depends on
uninitialized memory, which is reported instead of guessed (fatal when it
decides where the next statement starts, a warning when it only feeds one
multicast group's flags).

Speed: lines made of plain statements (what pkeyd renders) take a shortcut
that cuts tokens with str.split instead of walking the buffer; see
``_Reader._fast_line`` for why that is the same, and when it restarts.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from pkeyd.opensm.fastpath import gc_paused
from pkeyd.opensm.mgroups import BROADCAST_TEMPLATE, IPOIB_QKEY, GroupFlagState, is_ip_mgid
from pkeyd.opensm.parsed import ParseResult
from pkeyd.opensm.partition_builder import FatalParseError, PartitionBuilder, StatementConf

__all__ = ["FGETS_MAX", "LONG_LINE", "STATEMENT", "ZERO_GUID", "FlagReader", "parse"]

BUF_SIZE = 4096  # char line[4096]
FGETS_MAX = BUF_SIZE - 2  # fgets(line, sizeof(line) - 1, f) stores at most 4094 bytes
LONG_LINE = 3584  # warn well before a line reaches the fgets limit
_SKIP = re.compile(rb"[ \t\n]*")  # the only blanks OpenSM skips: no CR
# The shape of a plain line: statements whose every token is plain, so that
# splitting at ';' ':' ',' '=' and trimming blanks is what the C walk does.
_B = r"[ \t\n]*"
_NUM = r"(?:0[xX][0-9a-fA-F]+|[1-9][0-9]*|0[0-7]*)"
_FLAG = (
    rf"(?:ipoib|indx0|defmember{_B}={_B}(?:full|limited|both)"
    rf"|(?:mtu|rate|sl|scope|Q_Key|TClass|FlowLabel){_B}={_B}{_NUM})"
)
_HEADER = re.compile(rf"{_B}[A-Za-z_][A-Za-z0-9_.+-]*{_B}(?:={_B}{_NUM}{_B})?(?:,{_B}{_FLAG}{_B})*")
_ENTRY = r"(0[xX][0-9a-fA-F]{16}|ALL_CAS|ALL_SWITCHES|ALL_ROUTERS|ALL|SELF)"  # longest first
_SUFFIX = rf"(?:={_B}(full|limited|both))?"
_MEMBERS = re.compile(rf"(?:{_B}(?:{_ENTRY}{_B}{_SUFFIX}{_B})?(?:,|\Z))+")
_MEMBER = re.compile(rf"{_ENTRY.lower()}{_B}{_SUFFIX}")
# Members as pkeyd renders them: canonical TARGET=MEMBERSHIP items joined by
# ", " (ENTRY_SEP), which PartitionBuilder.add_run keeps as text.
_ITEM = r"(?:0x[0-9a-f]{16}|ALL_CAS|ALL_SWITCHES|ALL_ROUTERS|ALL|SELF)=(?:full|limited|both)"
_CANONICAL = re.compile(rf"{_B}({_ITEM}(?:, {_ITEM})*){_B}")
# A whole line of one such statement: _HEADER (name, PKey, flags captured),
# ':', _CANONICAL, ';'. What _fast_line makes of it, in one match.
STATEMENT = re.compile(
    rf"{_B}([A-Za-z_][A-Za-z0-9_.+-]*){_B}(?:={_B}({_NUM}){_B})?((?:,{_B}{_FLAG}{_B})*)"
    rf":{_CANONICAL.pattern};{_B}"
)
ZERO_GUID = "0x0000000000000000"
_BLANKS = b" \t\n"
_SBLANKS = " \t\n"


class _UndefinedReadError(Exception):
    """The C code would read a buffer byte that no line of this file wrote."""


class _RestartError(Exception):
    """Stale buffer bytes are needed, but fast lines did not maintain the buffer."""


class FlagReader:
    """The header flags of plain statements, read by the builder's flag parser.

    What a flags text does without a warning is the same on every line, so it
    is read once and copied after.
    """

    def __init__(self, builder: PartitionBuilder) -> None:
        self._builder = builder
        self._cache: dict[str, StatementConf] = {}

    def conf(self, flags: str, line: int) -> StatementConf:
        """A fresh statement state with these flags (``ipoib, mtu=4``...) applied."""
        known = self._cache.get(flags)
        if known is not None:
            return known.copy()
        conf = StatementConf()
        diagnostics = len(self._builder.diagnostics)
        for flag in flags.encode("latin-1").split(b","):
            key, has_value, value = flag.partition(b"=")
            val = value.strip(_BLANKS) if has_value else None
            self._builder.add_flag(conf, key.strip(_BLANKS), val, line)
        if len(self._builder.diagnostics) == diagnostics:
            self._cache[flags] = conf.copy()
        return conf


class _Reader:
    def __init__(self, builder: PartitionBuilder, *, fast: bool) -> None:
        self.b = builder
        self.fast = fast  # take _fast_line where it applies
        self.fast_used = False
        self.buf = bytearray(BUF_SIZE)
        self.written = 0  # bytes [0, written) hold data of this parse
        self.conf: StatementConf | None = None
        self.parsed_any = False  # is_parse_success == 1
        self.failed = False
        self.line = 0
        self.line_end = 0  # offset of the NUL fgets put after this line
        self.stale_noted = 0
        self._flags = FlagReader(builder)
        self._no_flags = GroupFlagState()  # read only

    # -- osm_prtn_config_parse_file -----------------------------------------

    def run(self, data: bytes) -> bool:
        """Feed every fgets chunk; False once a fatal error stopped the parse."""
        # latin-1 maps each byte to one char: offsets and lengths stay in bytes.
        rows = data.decode("latin-1").split("\n")
        last = len(rows) - 1
        odd = b"\r" in data or b"\0" in data  # else no line needs these two checks
        cr_noted = False
        for index, row in enumerate(rows):
            size = len(row) + (index < last)  # with the "\n" fgets keeps
            if not size:
                continue
            self.line = index + 1
            if odd:
                code = row.partition("#")[0]
                if not cr_noted and "\r" in code:
                    cr_noted = True
                    self.b.warn(self.line, "carriage_return")
                if "\0" in code:
                    self.b.warn(self.line, "nul_byte")
            if size > FGETS_MAX:
                self.b.warn(self.line, "line_split", f"{size} bytes")
            elif size > LONG_LINE:
                self.b.warn(self.line, "long_line", f"{size} bytes")
            if size <= FGETS_MAX:
                self._feed(row, size, newline=index < last)
            else:
                text = row + "\n" if index < last else row
                for start in range(0, size, FGETS_MAX):
                    chunk = text[start : start + FGETS_MAX]
                    self._feed(chunk, len(chunk), newline=False)
                    if self.failed:
                        return False
            if self.failed:
                return False
        return True

    def _feed(self, chunk: str, size: int, *, newline: bool) -> None:
        """One fgets chunk: ``chunk``, and a "\n" after it when ``newline``.

        The fast path does not need the "\n": it only ends the last piece
        of the line, where blanks are trimmed anyway.
        """
        if self.fast and (self._statement_line(chunk) or self._fast_line(chunk)):
            self.fast_used = True
            self.line_end = size
            if size >= self.written:
                self.written = size + 1
        else:
            self._chunk((chunk + "\n" if newline else chunk).encode("latin-1"))

    def _chunk(self, chunk: bytes) -> None:
        buf, n = self.buf, len(chunk)
        buf[0:n] = chunk
        buf[n] = 0
        self.line_end = n
        self.written = max(self.written, n + 1)
        hash_at = buf.find(b"#", 0, buf.index(0))
        if hash_at >= 0:
            buf[hash_at] = 0
        p = 0
        try:
            while True:
                p = self._skip(p)
                if buf[p] == 0:
                    return
                if self.conf is None:
                    self.conf = StatementConf()
                semi = buf.find(b";", p, buf.index(0, p))
                if semi >= 0:
                    buf[semi] = 0
                length = self._statement(self.conf, p)
                self.parsed_any = True
                if semi < 0:
                    return
                if length is None:
                    raise _UndefinedReadError("after an mgid entry")
                p += length
                self.conf = None  # flush_part_conf
        except FatalParseError as exc:
            self.b.fatal(self.line, exc)
        except _UndefinedReadError as exc:
            self.b.fatal(self.line, FatalParseError("undefined_buffer_read", str(exc)))
        self.failed = True

    def _skip(self, p: int) -> int:
        """Skip blanks where the main loop jumped to, checking the bytes exist."""
        if p > self.line_end and self.fast_used:
            raise _RestartError
        if p >= self.written:
            raise _UndefinedReadError("looking for the next statement")
        if p > self.line_end and self.stale_noted != self.line:
            self.stale_noted = self.line
            self.b.warn(self.line, "stale_buffer_read")
        match = _SKIP.match(self.buf, p)
        assert match is not None  # the pattern matches the empty string
        return match.end()

    def _fast_line(self, chunk: str) -> bool:
        """Handle a line of plain statements without the buffer walk; False if not plain.

        A plain line splits at ';' into complete statements (or the members
        of the open one), then blanks or one unterminated statement; every
        token is plain (_HEADER, _MEMBERS). OpenSM's walk then ends each
        statement right after its ';', so splitting yields the same tokens
        and the same builder calls follow. The NUL bytes the walk would write
        are skipped: only a stale read could see them, and one restarts the
        whole parse without this shortcut. Members written the way pkeyd
        renders them (_CANONICAL) are kept as text (PartitionBuilder.add_run).
        """
        if "\0" in chunk or "\r" in chunk:
            return False
        pieces = chunk.partition("#")[0].split(";")
        plan: list[tuple[str | None, str, bool, bool]] = []
        allow_both = self.b.allow_both
        for index, piece in enumerate(pieces):
            closed = index < len(pieces) - 1
            if not piece.strip(_SBLANKS):
                if closed:  # ';' first on a line or ';;': the C walk overruns
                    return False
                continue
            header, members = None, piece
            if index > 0 or self.conf is None:
                header, colon, members = piece.partition(":")
                if not colon or _HEADER.fullmatch(header) is None:
                    return False
            canonical = _CANONICAL.fullmatch(members)
            if (
                canonical is not None
                and ZERO_GUID not in members
                and (allow_both or "=both" not in members)
            ):
                plan.append((header, canonical.group(1), closed, True))
                continue
            lowered = members.lower()  # a GUID is then canonical: "0x" + lowercase
            if _MEMBERS.fullmatch(members) is None or "x0000000000000000" in lowered:
                return False
            plan.append((header, lowered, closed, False))
        try:
            for header, members, closed, as_run in plan:
                if header is not None:
                    self.conf = self._fast_header(header)
                assert self.conf is not None
                self.parsed_any = True
                if as_run:
                    assert self.conf.prtn is not None
                    self.b.add_run(self.conf.prtn, self.conf.indx0, members, self.line)
                else:
                    entries = _MEMBER.findall(members)
                    self.b.add_simple_ports(self.conf, entries, self.line, "both" in members)
                if closed:
                    self.conf = None
        except FatalParseError as exc:
            self.b.fatal(self.line, exc)
            self.failed = True
        return True

    def _statement_line(self, chunk: str) -> bool:
        """_fast_line for the line pkeyd renders (STATEMENT), in fewer steps."""
        match = STATEMENT.fullmatch(chunk) if self.conf is None else None
        if match is None:
            return False
        name, pkey, flags, items = match.groups()
        if ZERO_GUID in items or ("=both" in items and not self.b.allow_both):
            return False
        if flags:
            conf = self._flags.conf(flags[1:], self.line)
            group_flags, ipoib, indx0 = conf.flags, conf.is_ipoib, conf.indx0
        else:  # a statement without flags never changes them (sl stays 0)
            group_flags, ipoib, indx0 = self._no_flags, False, False
        raw_name = name.encode("latin-1")
        value = int(pkey, 16) if pkey is not None and pkey[:2] in ("0x", "0X") else 0
        try:
            if 0 < value < 0x8000:  # what create() makes of this PKey, warnings none
                part = self.b.place(group_flags, ipoib, raw_name, value, self.line)
            else:
                conf = StatementConf(group_flags)
                conf.is_ipoib = ipoib
                self.b.create(conf, raw_name, None if pkey is None else pkey.encode(), self.line)
                assert conf.prtn is not None
                part = conf.prtn
        except FatalParseError as exc:
            self.b.fatal(self.line, exc)
            self.failed = True
            return True
        self.parsed_any = True
        self.b.add_run(part, indx0, items, self.line)
        return True

    def _fast_header(self, header: str) -> StatementConf:
        first, comma, flags = header.partition(",")
        conf = self._flags.conf(flags, self.line) if comma else StatementConf()
        name, eq, pkey = first.partition("=")
        raw_pkey = pkey.strip(_SBLANKS).encode("latin-1") if eq else None
        self.b.create(conf, name.strip(_SBLANKS).encode("latin-1"), raw_pkey, self.line)
        return conf

    # -- parse_part_conf ----------------------------------------------------

    def _statement(self, conf: StatementConf, start: int) -> int | None:
        """Header (unless continuing) and members; the bytes consumed, as C counts them."""
        buf, b, line = self.buf, self.b, self.line
        p = start
        if buf[p] in (0x09, 0x00, 0x0A):  # a ';' just turned into NUL lands here
            p += 1
        length = p - start
        if p >= self.written:
            raise _UndefinedReadError("after a ';'")
        if conf.prtn is None:
            colon = buf.find(b":", p, buf.index(0, p))
            if colon < 0:
                raise FatalParseError("no_partition_definition")
            buf[colon] = 0
            header_end = colon + 1
            comma = buf.find(b",", p, colon)
            if comma >= 0:
                buf[comma] = 0
            name, pkey_text, used = self._token(p)
            p += used
            length += used
            while comma >= 0:
                comma = buf.find(b",", p, buf.index(0, p))
                if comma >= 0:
                    buf[comma] = 0
                flag, value, used = self._token(p)
                p += used
                length += used
                b.add_flag(conf, flag, value, line)
            if p != header_end:
                raise FatalParseError("bad_partition_definition", "malformed header")
            b.create(conf, name, pkey_text, line)
        while True:
            comma = buf.find(b",", p, buf.index(0, p))
            if comma >= 0:
                buf[comma] = 0
            name, suffix, used = self._token(p)
            length += used
            if name == b"mgid":
                consumed = self._mgroup(conf, p + used, suffix, comma >= 0)
                return None if consumed is None else length + consumed
            b.add_port(conf, name, suffix, line)
            p += used
            if comma < 0:
                return length

    # -- parse_name_token ---------------------------------------------------

    def _token(self, p: int) -> tuple[bytes, bytes | None, int]:
        """``name[=value]`` up to the next NUL, blanks trimmed: (name, value, length).

        The length covers the whole token and its NUL, however it is trimmed.
        Like the C code, this overwrites the '=' and the blanks that end a
        non-empty name or value with NUL, which a later stale read can see.
        """
        buf = self.buf
        end = buf.index(0, p)
        token = bytes(buf[p:end])
        eq = token.find(b"=")
        name_end = end if eq < 0 else p + eq
        name = token[: name_end - p].lstrip(_BLANKS)
        stripped = name.rstrip(_BLANKS)
        buf[name_end - len(name) + len(stripped) : name_end + (eq >= 0)] = bytes(
            len(name) - len(stripped) + (eq >= 0)
        )
        if eq < 0:
            return stripped, None, end - p + 1
        value = token[eq + 1 :].lstrip(_BLANKS)
        trimmed = value.rstrip(_BLANKS)
        buf[end - len(value) + len(trimmed) : end] = bytes(len(value) - len(trimmed))
        return stripped, trimmed, end - p + 1

    # -- mgroup_create / parse_mgroup_flags ----------------------------------

    def _mgroup(self, conf: StatementConf, p: int, mgid: bytes | None, comma: bool) -> int | None:
        """One ``mgid=`` entry; it consumes the rest of its segment as group flags.

        Returns the bytes consumed, or None when the flags ran into bytes no
        line wrote (then nobody knows where OpenSM continues).
        """
        b, line = self.b, self.line
        if mgid is None:
            raise FatalParseError("mgid_without_value")
        raw = self._mgid(mgid)
        if raw is None:
            return 0  # the rest of the segment is parsed again as a new statement
        if p > self.line_end and self.fast_used:
            raise _RestartError
        if not comma and p < self.written:
            # The flags start after the entry's NUL: in a comment, after the
            # ';' (the next statement!), or past the line in stale bytes.
            b.warn(line, "stale_buffer_read" if p > self.line_end else "mgid_flags_overrun")
        group, f = GroupFlagState(), conf.flags
        # inherit the statement's flags, except TClass (mgroup_create skips it)
        group.mtu, group.rate, group.sl, group.q_key = f.mtu, f.rate, f.sl, f.q_key
        group.flow_label, group.scope_mask = f.flow_label, f.scope_mask
        consumed = 0
        while True:
            if p >= self.written:
                b.warn(line, "mgid_flags_uninitialized")
                self._finish_group(conf, raw, group)
                return None
            comma_at = self.buf.find(b",", p, self.buf.index(0, p))
            if comma_at >= 0:
                self.buf[comma_at] = 0
            flag, value, used = self._token(p)
            if not b.group_flag(group, flag, value, line):
                b.warn(line, "unknown_mgroup_flag", repr(flag.decode("latin-1")))
            p += used
            consumed += used
            if comma_at < 0:
                break
        self._finish_group(conf, raw, group)
        return consumed

    def _mgid(self, mgid: bytes) -> bytearray | None:
        try:
            raw = socket.inet_pton(socket.AF_INET6, mgid.decode("latin-1"))
        except (OSError, ValueError):
            raw = b""
        if not raw or raw[0] != 0xFF:
            self.b.warn(self.line, "bad_mgid", repr(mgid.decode("latin-1")))
            return None
        return bytearray(raw)

    def _finish_group(self, conf: StatementConf, raw: bytearray, f: GroupFlagState) -> None:
        """The IP-group checks and PKey fix-up of mgroup_create, then creation."""
        part = conf.prtn
        assert part is not None
        if is_ip_mgid(raw):
            pkey = part.pkey | 0x8000
            mpkey = int.from_bytes(raw[4:6], "big")
            problem = None
            if not (bytes(raw) == BROADCAST_TEMPLATE or mpkey in (0, pkey)):
                problem = f"PKey bits {mpkey:#06x}, not {pkey:#06x} or 0"
            elif f.rate != conf.flags.rate:
                problem = f"rate {f.rate}, not {conf.flags.rate}"
            elif f.mtu != conf.flags.mtu:
                problem = f"mtu {f.mtu}, not {conf.flags.mtu}"
            if problem is not None:
                shown = ipaddress.IPv6Address(bytes(raw))
                self.b.warn(self.line, "ip_mgroup_rejected", f"{shown} has {problem}")
                return
            raw[4:6] = pkey.to_bytes(2, "big")
            if f.q_key == 0:
                f.q_key = IPOIB_QKEY
        self.b.add_mgroup(part, bytes(raw), f, self.line)


def _run(data: bytes, allow_both_pkeys: bool, qos: bool, *, fast: bool) -> ParseResult:
    builder = PartitionBuilder(allow_both_pkeys=allow_both_pkeys, qos=qos)
    reader = _Reader(builder, fast=fast)
    complete = reader.run(data)
    if complete and not reader.parsed_any:
        builder.fatal(0, FatalParseError("no_statements"))
        complete = False
    if complete and reader.conf is not None and reader.conf.prtn is not None:
        builder.warn(reader.line, "missing_final_semicolon")
    partitions = builder.finish(complete=complete)
    diagnostics = sorted(builder.diagnostics, key=lambda d: d.line)
    return ParseResult(partitions, tuple(diagnostics))


def parse(text: bytes | str, *, allow_both_pkeys: bool = False, qos: bool = False) -> ParseResult:
    """What OpenSM 3.3.23 reads from ``text`` as its partitions.conf.

    ``allow_both_pkeys`` and ``qos`` are the opensm.conf options of the same
    names (``both`` means ``full`` without the first; SLs are forced to 0
    without the second). A file without any statement is fatal, as OpenSM
    then falls back to its no-config default.
    """
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
    with gc_paused():
        try:
            return _run(data, allow_both_pkeys, qos, fast=True)
        except _RestartError:
            return _run(data, allow_both_pkeys, qos, fast=False)
