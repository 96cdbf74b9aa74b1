"""What OpenSM reads from a file of pkeyd-rendered statements, as self-check keys, in one pass.

The self-check of a 32,767-partition render spends most of its time in
per-statement bookkeeping that only a general file needs: the fgets line
machinery, PartitionState and ParsedPartition objects, the MemberEntry
model. A file made only of the lines render writes for GUID and keyword
members needs none of it. Each such line is one complete statement
(`NAME=0xPKEY[, flags] : ITEM, ITEM ;`, ITEM = `0x<16 hex>=full|limited|both`
or a keyword), so what OpenSM does with it reduces to: the statement's flags
(read by the real flag parser, pkeyd.opensm.partition_builder), the IPoIB
broadcast group of the first statement with ipoib (the real GroupTable), the
last statement's SL, and the member items appended in file order.

read_render_keys gives, per PKey, exactly the key selfcheck computes from a
full parse (tests/opensm/test_fastpath.py checks that on random and edited
renders). Anything else - a line of another shape (mgid entries, NONE,
comments after a statement), a long line, CR or NUL bytes, a non-ASCII byte,
a second name for one PKey, a name OpenSM would truncate, or any warning the
real flag and group code emits - makes it answer None, and the caller parses
the file in full.
"""

from __future__ import annotations

from pkeyd.opensm.fastpath import Steps, run_steps
from pkeyd.opensm.mgroups import GroupFlagState
from pkeyd.opensm.parse import LONG_LINE, STATEMENT, ZERO_GUID, FlagReader
from pkeyd.opensm.parsed import DEFAULT_PARTITION_NAME, DEFAULT_PKEY, ENTRY_SEP, GroupFlags
from pkeyd.opensm.partition_builder import NAME_MAX, PartitionBuilder

# (name, ipoib, sl, broadcast flags, multicast groups, member items, indx0 runs):
# the shape of selfcheck's per-partition key.
Key = tuple[object, ...]


class _Partition:
    __slots__ = ("broadcast", "ipoib", "items", "name", "runs", "sl")

    def __init__(self, name: str) -> None:
        self.name = name
        self.ipoib = False
        self.broadcast: tuple[int, ...] | None = None
        self.sl = 0
        self.items: list[str] = []
        self.runs: list[tuple[bool, int]] = []

    def key(self) -> Key:
        items = self.items[0] if len(self.items) == 1 else ENTRY_SEP.join(self.items)
        # Neighbouring runs of one flag are merged as they come (see below).
        return (self.name, self.ipoib, self.sl, self.broadcast, None, items, tuple(self.runs))


def _flags_key(f: GroupFlags) -> tuple[int, ...]:
    return (f.mtu, f.rate, f.sl, f.scope_mask, f.q_key, f.tclass, f.flow_label)


def read_render_keys(text: str, *, allow_both_pkeys: bool, qos: bool) -> dict[int, Key] | None:
    """Per PKey, selfcheck's key of what OpenSM reads; None if the file is not render-shaped."""
    return run_steps(render_keys_steps(text, allow_both_pkeys=allow_both_pkeys, qos=qos))


def render_keys_steps(
    text: str, *, allow_both_pkeys: bool, qos: bool
) -> Steps[dict[int, Key] | None]:
    """read_render_keys in steps (see fastpath): a line at a time."""
    if not text.isascii() or "\r" in text or "\0" in text:
        return None
    builder = PartitionBuilder(allow_both_pkeys=allow_both_pkeys, qos=qos)
    flag_reader = FlagReader(builder)
    no_flags = GroupFlagState()
    partitions: dict[int, _Partition] = {}
    for number, row in enumerate(text.split("\n"), 1):
        yield
        if len(row) >= LONG_LINE:  # OpenSM's reader would warn (or split it)
            return None
        match = STATEMENT.fullmatch(row)
        if match is None:
            if row.partition("#")[0].strip(" \t"):
                return None  # a statement of another shape
            continue  # blank, or a comment line
        name, pkey_text, flags, items = match.groups()
        if pkey_text is None or pkey_text[:2] != "0x" or ZERO_GUID in items:
            return None
        if "=both" in items and not allow_both_pkeys:
            return None
        pkey = int(pkey_text, 16)
        if not 0 < pkey < 0x8000 or len(name) > NAME_MAX:
            return None
        if flags:
            conf = flag_reader.conf(flags[1:], number)
            group_flags, ipoib, indx0 = conf.flags, conf.is_ipoib, conf.indx0
        else:
            group_flags, ipoib, indx0 = no_flags, False, False
        if group_flags.sl and not qos:
            return None  # OpenSM forces it to 0, with a warning
        part = partitions.get(pkey)
        if part is None:
            if pkey == DEFAULT_PKEY and name != DEFAULT_PARTITION_NAME:
                return None  # OpenSM keeps "Default" and warns
            part = partitions[pkey] = _Partition(name)
        elif name != part.name:
            return None  # a second name for the PKey: OpenSM warns
        part.sl = group_flags.sl & 0xFF  # the last statement of a PKey sets it
        if ipoib:
            if group_flags.scope_mask:
                return None  # OpenSM ignores it for the broadcast group, with a warning
            part.ipoib = True
            group = builder.groups.broadcast(pkey, group_flags, number)
            if group is not None:
                part.broadcast = _flags_key(group)
        part.items.append(items)
        count = items.count(ENTRY_SEP) + 1
        if part.runs and part.runs[-1][0] == indx0:
            part.runs[-1] = (indx0, part.runs[-1][1] + count)
        else:
            part.runs.append((indx0, count))
    if not partitions or builder.diagnostics:
        return None
    return {pkey: part.key() for pkey, part in partitions.items()}
