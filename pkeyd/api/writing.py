"""The HTTP side of writes: If-Match, Idempotency-Key, ?dry_run, ETags, size limits."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from aiohttp import web

from pkeyd.api.bodies import encode_partition
from pkeyd.api.keys import SERVICE, SETTINGS, actor_of
from pkeyd.api.schemas import partition_json
from pkeyd.domain import Partition
from pkeyd.errors import PayloadTooLargeError, ValidationError
from pkeyd.groupcommit import Op
from pkeyd.writes import Answer, Encoded, IdempotencyRequest, Outcome, WriteOptions, partition_etag

_KEY_MAX = 255


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValidationError(f"{raw!r} is not true or false", name)


def check_count(body: Mapping[str, Any], fields: tuple[str, ...], limit: int) -> None:
    """413 naming the field when a request names more members than allowed."""
    total = 0
    for name in fields:
        value = body.get(name)
        if isinstance(value, list):
            total += len(value)
            if total > limit:
                raise PayloadTooLargeError(
                    f"at most {limit} members per request (max_members_per_request); "
                    "split the change",
                    name,
                )


def member_limit(request: web.Request) -> int:
    return request.app[SETTINGS].max_members_per_request


def _if_match(request: web.Request) -> tuple[str, ...] | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    tags = tuple(t.strip() for t in raw.split(",") if t.strip())
    if not tags:
        raise ValidationError("must be * or one or more ETags", "If-Match")
    return tags


def _idempotency(
    request: web.Request, body: Mapping[str, Any] | None, answer: Callable[[Any], Answer]
) -> IdempotencyRequest | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= _KEY_MAX or not key.isprintable() or not key.isascii():
        raise ValidationError(f"must be 1-{_KEY_MAX} printable ASCII characters", "Idempotency-Key")
    # The same key must mean the same request: method, path and body (as JSON
    # values, so white space and key order do not matter).
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(
        f"{request.method} {request.rel_url.path}\n{canonical}".encode()
    ).hexdigest()
    return IdempotencyRequest(key, digest, answer)


def options(
    request: web.Request,
    *,
    body: Mapping[str, Any] | None = None,
    answer: Callable[[Any], Answer] | None = None,
) -> WriteOptions:
    """A write's options from its request; `answer` makes Idempotency-Key count."""
    return WriteOptions(
        actor=actor_of(request),
        if_match=_if_match(request),
        dry_run=query_bool(request, "dry_run"),
        idempotency=None if answer is None else _idempotency(request, body, answer),
    )


def partition_answer(partition: Partition, status: int = 200, **headers: str) -> Answer:
    document = Encoded(partial(encode_partition, partition))
    return Answer(status, document, {"ETag": partition_etag(partition), **headers})


def no_content(_: object) -> Answer:
    return Answer(204, None)


def respond(answer: Answer) -> web.Response:
    if answer.body is None:
        return web.Response(status=answer.status, headers=answer.headers)
    if isinstance(answer.body, Encoded):
        return web.Response(
            body=answer.body.encode(),
            status=answer.status,
            headers=answer.headers,
            content_type="application/json",
        )
    return web.json_response(answer.body, status=answer.status, headers=answer.headers)


def _preferred(request: web.Request, answer: Answer) -> Answer:
    """`Prefer: return=minimal` (RFC 7240): the status and headers (ETag), no document.

    A client that only needs the acknowledgement saves the serialising of a
    partition that may hold many thousands of members.
    """
    if answer.status not in (200, 201) or "return=minimal" not in request.headers.get("Prefer", ""):
        return answer
    status = 204 if answer.status == 200 else answer.status
    return Answer(status, None, {**answer.headers, "Preference-Applied": "return=minimal"})


async def write(
    request: web.Request, op: Op[Any], opts: WriteOptions, answer: Callable[[Any], Answer]
) -> web.Response:
    """Run the write and answer it: its result, a replay, or a dry run's report."""
    outcome: Outcome[Any] = await request.app[SERVICE].execute(op, opts)
    if outcome.kind == "replay":
        assert outcome.replay is not None
        return respond(_preferred(request, outcome.replay))
    if outcome.kind == "dry_run":
        report = outcome.report
        assert report is not None
        result = report.result
        return web.json_response(
            {
                "dry_run": True,
                "generation": report.generation,
                "changes": [d.to_json() for d in report.changes],
                "diff": report.diff,
                "result": partition_json(result) if isinstance(result, Partition) else result,
            }
        )
    return respond(_preferred(request, answer(outcome.value())))
