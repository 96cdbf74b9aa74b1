"""How a write is asked for and what it answers: preconditions, idempotency, dry runs.

Pure types and rules shared by the service and the API; no I/O.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pkeyd.domain import DesiredState, Partition, PKey
from pkeyd.errors import PreconditionFailedError
from pkeyd.history import PartitionDelta, diff
from pkeyd.opensm.render import render

T = TypeVar("T")


def etag(pkey: PKey, generation: int) -> str:
    """A strong entity tag: a partition's PKey and the generation that last changed it."""
    return f'"{pkey.value:04x}-{generation}"'


def partition_etag(partition: Partition) -> str:
    return etag(partition.pkey, partition.generation)


def check_match(if_match: tuple[str, ...] | None, pkey: PKey, generation: int) -> None:
    """412 unless the partition is still the version the client holds."""
    if if_match is None or "*" in if_match or etag(pkey, generation) in if_match:
        return
    raise PreconditionFailedError(
        f"partition {pkey} changed since (its ETag is now {etag(pkey, generation)}); "
        "read it again and retry",
        "If-Match",
    )


@dataclass(frozen=True, slots=True)
class Encoded:
    """A JSON document (a partition) encoded only if it is sent or stored.

    An answer to `Prefer: return=minimal` never encodes it.
    """

    encode: Callable[[], bytes]


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as stored with an Idempotency-Key: status, JSON body, headers."""

    status: int
    body: Any  # a JSON value, Encoded, or None for no body
    headers: dict[str, str] = field(default_factory=dict)

    def json_body(self) -> Any:
        """The body as a JSON value (what an Idempotency-Key stores)."""
        return json.loads(self.body.encode()) if isinstance(self.body, Encoded) else self.body


@dataclass(frozen=True)
class IdempotencyRequest:
    key: str
    request_hash: str  # of method, path and body: the same key must mean the same request
    answer: Callable[[Any], Answer]  # how the result is answered, stored with the change


@dataclass(frozen=True)
class WriteOptions:
    actor: str = "system"
    if_match: tuple[str, ...] | None = None
    dry_run: bool = False
    idempotency: IdempotencyRequest | None = None


NO_OPTIONS = WriteOptions()


@dataclass(frozen=True)
class DryRun(Generic[T]):
    """What a write would change: per partition, and in partitions.conf."""

    result: T
    generation: int  # the current one; a commit would make it generation + 1
    changes: tuple[PartitionDelta, ...]
    diff: str


def dry_run(result: T, before: DesiredState, after: DesiredState) -> DryRun[T]:
    old = {p.pkey.value: p for p in before.partitions}
    new = {p.pkey.value: p for p in after.partitions}
    changes = tuple(
        d for k in sorted(old.keys() | new.keys()) if (d := diff(old.get(k), new.get(k)))
    )
    text = ""
    if changes:
        text = "".join(
            difflib.unified_diff(
                render(before).splitlines(keepends=True),
                render(after).splitlines(keepends=True),
                "partitions.conf",
                "partitions.conf",
            )
        )
    return DryRun(result, before.generation, changes, text)


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """A write's result; or the stored answer of an earlier try; or a dry run."""

    kind: Literal["done", "replay", "dry_run"]
    result: T | None = None
    replay: Answer | None = None
    report: DryRun[T] | None = None

    def value(self) -> T:
        if self.kind != "done":
            raise ValueError(f"a {self.kind} has no result")
        return self.result  # type: ignore[return-value]
