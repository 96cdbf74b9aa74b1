"""An in-memory copy of partitions, so that a read costs no database round trip.

Entries are exact copies of stored partitions, each carrying the generation
that last changed it. This process's own commits update it before their
writers are answered (read-your-writes). Writes of other processes sharing the
database are noticed by a poll of the global generation every
`cache_refresh_s`: when it moved, one scan of (pkey, generation) drops every
entry that differs. So a read is at most `cache_refresh_s` (plus one scan)
behind another process's commit, and never behind this process's own.
"""

from __future__ import annotations

from collections.abc import Iterable

from pkeyd.domain import Partition


class PartitionCache:
    def __init__(self) -> None:
        self._entries: dict[int, Partition] = {}
        # Bumped by every change of the entries: a load that started before a
        # change may not store what it read (it may be older).
        self._epoch = 0
        # The global generation every entry is known to be consistent with.
        self.synced_generation: int | None = None

    @property
    def epoch(self) -> int:
        return self._epoch

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, pkey: int) -> Partition | None:
        return self._entries.get(pkey)

    def at(self, pkey: int, generation: int) -> Partition | None:
        """The entry, only if it is the version of this generation."""
        entry = self._entries.get(pkey)
        return entry if entry is not None and entry.generation == generation else None

    def loaded(self, partition: Partition, epoch: int) -> None:
        """Keep what a read loaded, unless the cache changed since the load began."""
        if epoch == self._epoch:
            self._entries[partition.pkey.value] = partition

    def committed(
        self, first_base: int, last_generation: int, updates: dict[int, Partition | None]
    ) -> None:
        """Own commit: generations first_base+1..last_generation and what they left."""
        self._epoch += 1
        for pkey, partition in updates.items():
            if partition is None:
                self._entries.pop(pkey, None)
            else:
                self._entries[pkey] = partition
        # Nothing else can have committed between first_base and the commit
        # (the transaction held the write lock), so the cache stays in sync
        # if it was in sync with first_base.
        if self.synced_generation == first_base:
            self.synced_generation = last_generation

    def resync(self, generation: int, stored: Iterable[tuple[int, int]]) -> int:
        """After a scan of (pkey, generation) made at global `generation`: drop what differs.

        An entry newer than the scan is this process's own commit, made
        while the scan ran: it is kept. Returns how many entries were dropped.
        """
        current = dict(stored)
        stale = [
            pkey
            for pkey, entry in self._entries.items()
            if entry.generation <= generation and current.get(pkey) != entry.generation
        ]
        for pkey in stale:
            del self._entries[pkey]
        self._epoch += 1
        if self.synced_generation is None or self.synced_generation < generation:
            self.synced_generation = generation
        return len(stale)

    def clear(self) -> None:
        self._entries.clear()
        self._epoch += 1
        self.synced_generation = None
