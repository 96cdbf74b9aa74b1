"""Render the desired state as OpenSM's partitions.conf.

Deterministic: the same desired state gives the same bytes. What it writes
stays inside the part of the language whose meaning does not depend on parser
accidents:
- every line far below the 4 KiB fgets buffer: long member lists continue in a
  repeat of the whole statement header (OpenSM merges statements of one PKey,
  and repeating the flags keeps the partition's SL and groups identical);
- numbers without leading zeros, GUIDs as `0x` + 16 hex digits, full flag and
  keyword names, an explicit membership on every member;
- keywords before GUIDs, so an explicit GUID always overrides a keyword
  (OpenSM applies members in file order, last one wins per port);
- one `mgid=` entry per statement, always followed by flags (an mgid entry
  swallows the rest of its statement).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

from pkeyd.domain import DEFAULT_NAME, DEFAULT_PKEY, DesiredState, Partition
from pkeyd.groups import GroupSettings, McastGroup
from pkeyd.opensm.fastpath import Steps, gc_paused, run_steps

MEMBERS_PER_LINE = 48  # 48 x 29 bytes: about 1.4 KiB per line
HEADER_PREFIX = "# partitions.conf for OpenSM, written by pkeyd"
_GENERATION_RE = re.compile(r"^# generation: (\d+)$", re.MULTILINE)
_SHA_RE = re.compile(r"^# sha256: ([0-9a-f]{64})$", re.MULTILINE)


def _group_flags(settings: GroupSettings) -> list[str]:
    flags = []
    if settings.mtu is not None:
        flags.append(f"mtu={settings.mtu}")
    if settings.rate is not None:
        flags.append(f"rate={settings.rate}")
    if settings.sl is not None:
        flags.append(f"sl={settings.sl}")
    flags.extend(f"scope={s}" for s in settings.scope)
    if settings.q_key is not None:
        flags.append(f"Q_Key=0x{settings.q_key:x}")
    if settings.tclass is not None:
        flags.append(f"TClass={settings.tclass}")
    if settings.flow_label is not None:
        flags.append(f"FlowLabel=0x{settings.flow_label:x}")
    return flags


_NO_SETTINGS = GroupSettings()
# A GUID entry: str(PortGuid)=membership. A StrEnum formats as its value, and
# %-formatting is the cheapest way to write 200,000 of them.
_GUID_ITEM = "0x%016x=%s"


def statement_header(partition: Partition, *, indx0: bool) -> str:
    flags = ["ipoib"] if partition.ipoib else []
    if partition.settings != _NO_SETTINGS:
        # OpenSM never gives the IPoIB broadcast group a scope (partition_create
        # starts it from zero); a partition's scope only reaches its mgid
        # groups, so it is written there, and only there.
        flags.extend(f for f in _group_flags(partition.settings) if not f.startswith("scope="))
    if partition.defmember is not None:
        flags.append(f"defmember={partition.defmember.value}")
    if indx0:
        flags.append("indx0")
    name = DEFAULT_NAME if partition.pkey.value == DEFAULT_PKEY else partition.name
    return ", ".join([f"{name}={partition.pkey}", *flags]) + " :"


def _member_runs(partition: Partition) -> Iterator[tuple[bool, list[str]]]:
    """Entries in render order, grouped in runs that share the indx0 flag.

    Keywords first, in KEYWORDS order; then GUIDs, which never overlap each
    other, so they are free to go without indx0 first, then with it (each
    group in GUID order). selfcheck relies on exactly this order.
    """
    base = partition.indx0
    entries = [(k.index0 or base, f"{k.keyword}={k.membership.value}") for k in partition.keywords]
    for flagged in (False, True):
        entries += [
            (flagged, _GUID_ITEM % (m.guid.value, m.membership))
            for m in partition.members
            if (m.index0 or base) is flagged
        ]
    run: list[str] = []
    run_flag = False
    for flag, entry in entries:
        if run and (flag != run_flag or len(run) == MEMBERS_PER_LINE):
            yield run_flag, run
            run = []
        run_flag = flag
        run.append(entry)
    if run:
        yield run_flag, run


def _guid_lines(partition: Partition) -> list[str] | None:
    """The statements of a partition of GUIDs that share one indx0 flag (the usual
    kind), in the order _member_runs gives; None for any other partition."""
    members = partition.members
    if partition.keywords or not members:
        return None
    if partition.indx0:
        flagged = True
    else:
        marked = sum(1 for m in members if m.index0)
        if marked not in (0, len(members)):
            return None
        flagged = marked > 0
    header = statement_header(partition, indx0=flagged)
    items = [_GUID_ITEM % (m.guid.value, m.membership) for m in members]
    step = MEMBERS_PER_LINE
    return [f"{header} {', '.join(items[i : i + step])} ;" for i in range(0, len(items), step)]


def _mgroup_entry(group: McastGroup, partition: Partition) -> str:
    # mtu and rate always written: an mgid entry without flags would make
    # OpenSM read whatever follows in its buffer as flags.
    own = group.settings
    scope = tuple(sorted(set(partition.settings.scope) | set(own.scope)))
    flags = [
        f"mtu={own.mtu if own.mtu is not None else partition.settings.effective_mtu}",
        f"rate={own.rate if own.rate is not None else partition.settings.effective_rate}",
        *(f for f in _group_flags(own) if not f.startswith(("mtu=", "rate=", "scope="))),
        *(f"scope={s}" for s in scope),
    ]
    return f"mgid={group.mgid},{','.join(flags)}"


def states_members(partition: Partition) -> bool:
    """Whether the partition is written as statements (else OpenSM would drop it)."""
    return bool(partition.members or partition.keywords) or partition.pkey.value == DEFAULT_PKEY


def render_partition(partition: Partition) -> list[str]:
    if not states_members(partition):
        # OpenSM deletes member-less partitions (and their groups) anyway; a
        # comment keeps the file honest about what is stored.
        return [f"# {statement_header(partition, indx0=False)} no members yet"]
    lines = _guid_lines(partition)
    if lines is None:
        headers = {flag: statement_header(partition, indx0=flag) for flag in (False, True)}
        lines = [f"{headers[flag]} {', '.join(run)} ;" for flag, run in _member_runs(partition)]
    if partition.mgroups:
        lines += [
            f"{statement_header(partition, indx0=False)} {_mgroup_entry(g, partition)} ;"
            for g in partition.mgroups
        ]
    # NONE is OpenSM's no-op member: the Default statement must exist so the
    # file is never comment-only (which OpenSM treats as an error).
    return lines or [f"{statement_header(partition, indx0=False)} NONE ;"]


def _file_order(partition: Partition) -> int:
    value = partition.pkey.value
    return -1 if value == DEFAULT_PKEY else value


def render(state: DesiredState) -> str:
    """The whole file: a header naming pkeyd, the generation and a content hash.

    The Default partition comes first; the others follow by PKey.
    """
    with gc_paused():  # a list per partition, no cycles: see gc_paused
        return run_steps(render_steps(state))


# Bytes hashed per step: about a millisecond of SHA-256.
_HASH_STEP = 1 << 20


def render_steps(state: DesiredState) -> Steps[str]:
    """render() in steps (see fastpath): a partition, or a MiB of the hash, at a time."""
    ordered = sorted(state.partitions, key=_file_order)
    if not ordered or not ordered[0].is_default:
        raise ValueError("the desired state lacks the Default partition 0x7fff")
    body_lines: list[str] = []
    for partition in ordered:
        body_lines += render_partition(partition)
        yield
    body = "\n".join(body_lines) + "\n"
    data = memoryview(body.encode("ascii"))
    sha = hashlib.sha256()
    for start in range(0, len(data), _HASH_STEP):
        yield
        sha.update(data[start : start + _HASH_STEP])
    header = (
        f"{HEADER_PREFIX}. Do not edit: pkeyd rewrites it.\n"
        f"# generation: {state.generation}\n"
        f"# sha256: {sha.hexdigest()}\n"
    )
    return header + body


def rendered_generation(text: str) -> int | None:
    """The generation in a file pkeyd wrote, or None for any other file."""
    if not text.startswith(HEADER_PREFIX):
        return None
    match = _GENERATION_RE.search(text)
    return int(match.group(1)) if match else None


def is_intact_render(data: bytes) -> bool:
    """Whether these bytes are a pkeyd render whose body still matches its hash."""
    text = data.decode("ascii", errors="replace")
    match = _SHA_RE.search(text)
    if not text.startswith(HEADER_PREFIX) or match is None:
        return False
    body = text[match.end() + 1 :]
    return hashlib.sha256(body.encode("ascii", errors="replace")).hexdigest() == match.group(1)
