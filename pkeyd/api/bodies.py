"""Serialised partition documents, kept per (PKey, generation) so a read only copies bytes."""

from __future__ import annotations

import json

from pkeyd.api.schemas import partition_json
from pkeyd.domain import Partition

# Past this many documents the memo starts over: bounded memory, and the
# partitions read often are back in it after one read each.
MAX_DOCUMENTS = 4096


class PartitionBodies:
    def __init__(self) -> None:
        self._memo: dict[tuple[int, int], bytes] = {}

    def partition(self, partition: Partition) -> bytes:
        key = (partition.pkey.value, partition.generation)
        body = self._memo.get(key)
        if body is None:
            if len(self._memo) >= MAX_DOCUMENTS:
                self._memo.clear()
            body = json.dumps(partition_json(partition)).encode()
            self._memo[key] = body
        return body
