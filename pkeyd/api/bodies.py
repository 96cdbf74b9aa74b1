"""Partition documents as bytes: encoded fast, and kept per (PKey, generation) for reads.

A single-member write answers the whole partition, so encoding it is the
largest cost of a write to a partition of some hundreds of members. Members
are immutable and a write keeps the unchanged ones (the same objects), so
each member's JSON is encoded once and reused by the next answer while that
member stays as it is.
"""

from __future__ import annotations

import json

from pkeyd.api.schemas import partition_json
from pkeyd.domain import Member, Membership, Partition

# Past this many documents the memo starts over: bounded memory, and the
# partitions read often are back in it after one read each.
MAX_DOCUMENTS = 4096
# Member texts kept (about 250 bytes each): the members of the partitions
# being written; past it the memo starts over.
MAX_MEMBER_TEXTS = 65_536

_MEMBERSHIP = {m: m.value for m in Membership}
# A member's text, by GUID value, with the member it was made from: reused
# only for that very (immutable) object.
_member_texts: dict[int, tuple[Member, str]] = {}


def _member_text(member: Member) -> str:
    text = (
        f'{{"guid": "0x{member.guid.value:016x}", "membership": '
        f'"{_MEMBERSHIP[member.membership]}", "index0": {"true" if member.index0 else "false"}}}'
    )
    if len(_member_texts) >= MAX_MEMBER_TEXTS:
        _member_texts.clear()
    _member_texts[member.guid.value] = (member, text)
    return text


def encode_partition(partition: Partition) -> bytes:
    """json.dumps(partition_json(partition)), with the members' texts reused."""
    head = partition_json(partition, members=False)
    texts = _member_texts
    parts = []
    for member in partition.members:
        known = texts.get(member.guid.value)
        parts.append(known[1] if known is not None and known[0] is member else _member_text(member))
    encoded = json.dumps(head)
    # The members go last: `{..., "mgroups": [...]` + `, "members": [...]}`.
    return f'{encoded[:-1]}, "members": [{", ".join(parts)}]}}'.encode()


class PartitionBodies:
    def __init__(self) -> None:
        self._memo: dict[tuple[int, int], bytes] = {}

    def partition(self, partition: Partition) -> bytes:
        key = (partition.pkey.value, partition.generation)
        body = self._memo.get(key)
        if body is None:
            if len(self._memo) >= MAX_DOCUMENTS:
                self._memo.clear()
            body = encode_partition(partition)
            self._memo[key] = body
        return body
