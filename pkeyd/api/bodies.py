"""Partition documents as bytes: encoded fast, and kept per (PKey, generation) for reads.

A single-member write answers the whole partition, so encoding it was the
largest cost of a write to a partition of some hundreds of members. A write
keeps the unchanged members (the very same objects, in the same order), so
the member texts of a partition's last document are kept: the next document
of that partition encodes only the members between the common head and the
common tail of the two member lists, found by binary search with C-speed
tuple comparisons.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pkeyd.api.schemas import partition_json
from pkeyd.domain import Member, Membership, Partition

# Past this many documents the memo starts over: bounded memory, and the
# partitions read often are back in it after one read each.
MAX_DOCUMENTS = 4096
# Partitions whose last member texts are kept (about 70 bytes a member).
MAX_KEPT_PARTITIONS = 1024

_MEMBERSHIP = {m: m.value for m in Membership}
# PKey -> the members of its last document and their texts.
_kept: dict[int, tuple[tuple[Member, ...], list[str]]] = {}


def _member_text(member: Member) -> str:
    return (
        f'{{"guid": "0x{member.guid.value:016x}", "membership": '
        f'"{_MEMBERSHIP[member.membership]}", "index0": {"true" if member.index0 else "false"}}}'
    )


def _common_head(old: Sequence[Member], new: Sequence[Member]) -> int:
    """How many leading members the two lists share (equal tuples compare in C).

    Binary search; each probe compares only the part past the known common
    head, so the slices copied add up to about one list, not one per probe.
    """
    low, high = 0, min(len(old), len(new))
    while low < high:
        middle = (low + high + 1) // 2
        if old[low:middle] == new[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _common_tail(old: Sequence[Member], new: Sequence[Member], head: int) -> int:
    """How many trailing members they share, not counting the first `head`."""
    low, high = 0, min(len(old), len(new)) - head
    while low < high:
        middle = (low + high + 1) // 2
        if old[len(old) - middle : len(old) - low] == new[len(new) - middle : len(new) - low]:
            low = middle
        else:
            high = middle - 1
    return low


def _member_texts(partition: Partition) -> list[str]:
    members = partition.members
    kept = _kept.get(partition.pkey.value)
    # Only when the lists share objects: comparing equal values that are
    # different objects (a partition read back from the database) would
    # cost more than encoding them.
    if (
        kept is None
        or not members
        or not kept[0]
        or (kept[0][0] is not members[0] and kept[0][-1] is not members[-1])
    ):
        texts = [_member_text(m) for m in members]
    else:
        old, old_texts = kept
        head = _common_head(old, members)
        tail = _common_tail(old, members, head)
        middle = [_member_text(m) for m in members[head : len(members) - tail]]
        texts = old_texts[:head] + middle + old_texts[len(old) - tail :]
    if len(_kept) >= MAX_KEPT_PARTITIONS and partition.pkey.value not in _kept:
        _kept.clear()
    _kept[partition.pkey.value] = (members, texts)
    return texts


def encode_partition(partition: Partition) -> bytes:
    """json.dumps(partition_json(partition)), with the member texts reused."""
    encoded = json.dumps(partition_json(partition, members=False))
    members = ", ".join(_member_texts(partition))
    # The members go last: `{..., "mgroups": [...]` + `, "members": [...]}`.
    return f'{encoded[:-1]}, "members": [{members}]}}'.encode()


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
