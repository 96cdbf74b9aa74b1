"""The live partitions.conf: atomic writes, and edits made behind pkeyd's back.

pkeyd remembers the bytes it last wrote. A live file that differs from them
was edited (or deleted) by someone else: a copy is kept before anything
replaces it, so neither version is ever lost silently. At start there is no
memory yet: a file pkeyd rendered whose body still matches its hash is taken
as pkeyd's own, a file with pkeyd's header and a broken hash is an edit, and
any other file is the hand-written one pkeyd takes over (kept as well).

Blocking file I/O: the reconciler calls these methods in a worker thread.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pkeyd.opensm.render import HEADER_PREFIX, is_intact_render
from pkeyd.opensm.writer import atomic_write, read_live, remove_stale_temps

EditKind = Literal["edited", "deleted", "taken_over"]


@dataclass(frozen=True)
class ExternalEdit:
    kind: EditKind
    at: datetime
    saved_to: Path | None  # None when the file was deleted
    digest: str  # sha256 of what was found ("" when deleted)


class LiveFile:
    def __init__(self, path: Path, backup_dir: Path) -> None:
        self.path = path
        self._backup_dir = backup_dir
        self._last_written: bytes | None = None
        self._started = False

    def remove_stale_temps(self) -> list[Path]:
        return remove_stale_temps(self.path)

    def read(self) -> bytes | None:
        return read_live(self.path)

    def inspect(self, live: bytes | None) -> ExternalEdit | None:
        """Compare the live bytes with what pkeyd last wrote; keep a copy of any edit."""
        first = not self._started
        self._started = True
        if first:
            if live is None or is_intact_render(live):
                self._last_written = live
                return None
            kind: EditKind = "edited" if live.startswith(HEADER_PREFIX.encode()) else "taken_over"
            return self._record(kind, live)
        if live == self._last_written:
            return None
        if live is None:
            return ExternalEdit("deleted", datetime.now(UTC), None, "")
        return self._record("edited", live)

    def accept(self, live: bytes | None) -> None:
        """Treat the live bytes as the baseline (an operator chose to hold them)."""
        self._last_written = live

    def write(self, data: bytes) -> None:
        atomic_write(self.path, data)
        self._last_written = data

    def _record(self, kind: EditKind, data: bytes) -> ExternalEdit:
        now = datetime.now(UTC)
        digest = hashlib.sha256(data).hexdigest()
        self._backup_dir.mkdir(parents=True, exist_ok=True)
        name = f"{self.path.name}.{kind}.{now:%Y%m%dT%H%M%S.%fZ}.{digest[:12]}"
        target = self._backup_dir / name
        if not any(self._backup_dir.glob(f"{self.path.name}.*.{digest[:12]}")):
            atomic_write(target, data)
        else:
            target = next(self._backup_dir.glob(f"{self.path.name}.*.{digest[:12]}"))
        return ExternalEdit(kind, now, target, digest)
