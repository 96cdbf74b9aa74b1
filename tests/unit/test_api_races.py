"""Safe retries and races: ETags and If-Match, Idempotency-Key, concurrent writers."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from pkeyd.config import Settings
from pkeyd.store import lane_sql
from tests.helpers import Daemon, running_daemon
from tests.unit.conftest import CountingReloader

PART = "/api/v1/partitions/0x0a12"


def guid(i: int) -> str:
    return f"0x0002c903{i:08x}"


async def _create(daemon: Daemon) -> str:
    resp = await daemon.client.post("/api/v1/partitions", json={"name": "tenant", "pkey": "0x0a12"})
    assert resp.status == 201
    return resp.headers["ETag"]


async def _etag(daemon: Daemon) -> str:
    resp = await daemon.client.get(PART)
    assert resp.status == 200
    return resp.headers["ETag"]


async def test_every_partition_answer_carries_its_etag(daemon: Daemon) -> None:
    created = await _create(daemon)
    assert created == await _etag(daemon)
    resp = await daemon.client.get(PART, headers={"If-None-Match": created})
    assert resp.status == 304
    answers = [
        await daemon.client.patch(PART, json={"ipoib": True}),
        await daemon.client.post(f"{PART}/members", json={"members": [{"guid": guid(1)}]}),
        await daemon.client.put(f"{PART}/members", json={"members": [{"guid": guid(2)}]}),
        await daemon.client.post(f"{PART}/members/remove", json={"guids": [guid(2)]}),
    ]
    tags = [r.headers["ETag"] for r in answers]
    assert all(r.status == 200 for r in answers)
    assert len({created, *tags}) == 5  # each change gives a new tag
    assert tags[-1] == await _etag(daemon)


async def test_stale_if_match_is_412_and_changes_nothing(daemon: Daemon) -> None:
    old = await _create(daemon)
    await daemon.json("PATCH", PART, 200, json={"ipoib": True}, headers={"If-Match": old})
    current = await _etag(daemon)
    before = await daemon.json("GET", PART, 200)
    writes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("PATCH", PART, {"ipoib": False}),
        ("POST", f"{PART}/members", {"members": [{"guid": guid(1)}]}),
        ("PUT", f"{PART}/members", {"members": []}),
        ("POST", f"{PART}/members/remove", {"guids": [guid(1)], "missing_ok": True}),
        ("DELETE", f"{PART}/members/{guid(1)}", None),
        ("DELETE", PART, None),
    ]
    for method, path, body in writes:
        error = await daemon.json(method, path, 412, json=body, headers={"If-Match": old})
        assert error["error"]["code"] == "precondition_failed", (method, path)
        assert error["error"]["field"] == "If-Match"
    assert await daemon.json("GET", PART, 200) == before
    assert await _etag(daemon) == current
    # A list holding the current tag, or *, passes.
    await daemon.json(
        "POST",
        f"{PART}/members",
        200,
        json={"members": [{"guid": guid(1)}]},
        headers={"If-Match": f"{old}, {current}"},
    )
    await daemon.json("DELETE", PART, 204, headers={"If-Match": "*"})


async def test_repeated_delete_is_404(daemon: Daemon) -> None:
    await _create(daemon)
    await daemon.json("DELETE", PART, 204)
    again = await daemon.json("DELETE", PART, 404)
    assert again["error"]["code"] == "not_found"


async def test_concurrent_patches_with_one_if_match_exactly_one_wins(daemon: Daemon) -> None:
    tag = await _create(daemon)

    async def patch(i: int) -> int:
        resp = await daemon.client.patch(
            PART, json={"name": f"tenant-{i}"}, headers={"If-Match": tag}
        )
        return resp.status

    statuses = await asyncio.gather(*(patch(i) for i in range(20)))
    assert sorted(statuses) == [200] + [412] * 19
    generation = (await daemon.json("GET", "/api/v1/status", 200))["desired_generation"]
    assert generation == 2  # the create and the one PATCH


async def test_fifty_concurrent_single_guid_adds_lose_nothing(daemon: Daemon) -> None:
    await _create(daemon)

    async def add(i: int) -> int:
        resp = await daemon.client.post(f"{PART}/members", json={"members": [{"guid": guid(i)}]})
        return resp.status

    statuses = await asyncio.gather(*(add(i) for i in range(50)))
    assert statuses == [200] * 50
    got = await daemon.json("GET", PART, 200)
    assert [m["guid"] for m in got["members"]] == [guid(i) for i in range(50)]
    status = await daemon.wait_applied()
    assert status["desired_generation"] == 51  # one generation per change
    text = daemon.settings.partitions_conf.read_text()
    assert all(guid(i) in text for i in range(50))


async def test_a_failing_write_does_not_fail_its_batch(daemon: Daemon) -> None:
    await _create(daemon)
    writes = [
        daemon.client.post(f"{PART}/members", json={"members": [{"guid": guid(i)}]})
        for i in range(10)
    ] + [
        daemon.client.post("/api/v1/partitions/0x0bbb/members", json={"members": []}),
        daemon.client.post("/api/v1/partitions", json={"name": "tenant", "pkey": "0x0a13"}),
    ]
    answers = await asyncio.gather(*writes)
    assert [r.status for r in answers] == [200] * 10 + [404, 409]
    got = await daemon.json("GET", PART, 200)
    assert len(got["members"]) == 10


async def test_idempotent_create_retried_gives_one_partition_and_the_same_answer(
    daemon: Daemon,
) -> None:
    key = {"Idempotency-Key": "create-tenant-1"}
    body = {"name": "tenant", "ipoib": True}
    first = await daemon.client.post("/api/v1/partitions", json=body, headers=key)
    assert first.status == 201
    first_body = await first.json()
    generation = (await daemon.json("GET", "/api/v1/status", 200))["desired_generation"]
    again = await daemon.client.post("/api/v1/partitions", json=body, headers=key)
    assert again.status == 201
    assert await again.json() == first_body
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await daemon.json("GET", "/api/v1/status", 200))["desired_generation"] == generation
    listed = await daemon.json("GET", "/api/v1/partitions", 200, params={"name": "tenant"})
    assert len(listed["partitions"]) == 1
    other = await daemon.json(
        "POST", "/api/v1/partitions", 422, json={"name": "other"}, headers=key
    )
    assert other["error"]["field"] == "Idempotency-Key"


async def test_racing_retries_of_one_key_make_one_partition(daemon: Daemon) -> None:
    key = {"Idempotency-Key": "race-1"}
    body = {"name": "raced"}  # no PKey: each try would allocate a new one

    async def post() -> tuple[int, Any]:
        resp = await daemon.client.post("/api/v1/partitions", json=body, headers=key)
        return resp.status, await resp.json()

    answers = await asyncio.gather(*(post() for _ in range(20)))
    assert {status for status, _ in answers} == {201}
    assert len({str(b) for _, b in answers}) == 1
    listed = await daemon.json("GET", "/api/v1/partitions", 200, params={"name": "raced"})
    assert len(listed["partitions"]) == 1


async def test_idempotent_member_posts(daemon: Daemon) -> None:
    await _create(daemon)
    key = {"Idempotency-Key": "add-1"}
    add = {"members": [{"guid": guid(1)}]}
    first = await daemon.json("POST", f"{PART}/members", 200, json=add, headers=key)
    # Someone else changes the partition; the retry still answers the first answer.
    await daemon.json("POST", f"{PART}/members", 200, json={"members": [{"guid": guid(2)}]})
    again = await daemon.json("POST", f"{PART}/members", 200, json=add, headers=key)
    assert again == first
    remove = {"guids": [guid(1)]}
    key = {"Idempotency-Key": "remove-1"}
    first = await daemon.json("POST", f"{PART}/members/remove", 200, json=remove, headers=key)
    # Without the key the same removal would be a 404 now; with it, the same answer.
    again = await daemon.json("POST", f"{PART}/members/remove", 200, json=remove, headers=key)
    assert again == first
    await daemon.json("POST", f"{PART}/members/remove", 404, json=remove)
    bad = await daemon.json(
        "POST", f"{PART}/members", 422, json=add, headers={"Idempotency-Key": ""}
    )
    assert bad["error"]["field"] == "Idempotency-Key"


async def test_idempotency_keys_expire(settings: Settings, reloader: CountingReloader) -> None:
    brief = dataclasses.replace(settings, idempotency_ttl_s=0.2)
    async with running_daemon(brief, reloader) as d:
        key = {"Idempotency-Key": "short-lived"}
        first = await d.json("POST", "/api/v1/partitions", 201, json={"name": "a"}, headers=key)
        await asyncio.sleep(0.3)
        # Expired: the key is free again and means a new request.
        second = await d.json("POST", "/api/v1/partitions", 201, json={"name": "b"}, headers=key)
        assert second["pkey"] != first["pkey"]


async def test_failed_request_stores_no_answer(daemon: Daemon) -> None:
    key = {"Idempotency-Key": "fails-first"}
    await daemon.json("POST", "/api/v1/partitions/0x0a12/members", 404, json={"members": []},
                      headers=key)  # fmt: skip
    await _create(daemon)
    await daemon.json("POST", f"{PART}/members", 200, json={"members": []}, headers=key)


async def test_capacity_refusal_fails_only_its_write(
    settings: Settings, reloader: CountingReloader
) -> None:
    # Two PKeys per port: the Default and one more.
    tight = dataclasses.replace(settings, default_partition_cap=2)
    async with running_daemon(tight, reloader) as d:
        for pkey in ("0x0a12", "0x0a13"):
            await d.json("POST", "/api/v1/partitions", 201, json={"name": f"p{pkey}", "pkey": pkey})
        await d.json("POST", f"{PART}/members", 200, json={"members": [{"guid": guid(0)}]})

        async def add(pkey: str, i: int) -> int:
            body = {"members": [{"guid": guid(i)}]}
            resp = await d.client.post(f"/api/v1/partitions/{pkey}/members", json=body)
            return resp.status

        statuses = await asyncio.gather(
            *(add("0x0a13", i) for i in range(1, 6)), add("0x0a13", 0), add("0x0a12", 7)
        )
        assert statuses == [200] * 5 + [409, 200]
        other = await d.json("GET", "/api/v1/partitions/0x0a13", 200)
        assert [m["guid"] for m in other["members"]] == [guid(i) for i in range(1, 6)]


async def test_when_the_grouped_statements_fail_each_write_runs_alone(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _create(daemon)
    calls = []

    def broken(*args: Any) -> None:
        calls.append(args)
        raise RuntimeError("disk said no")

    # Only grouped writes record several revisions at a time.
    monkeypatch.setattr(lane_sql, "add_revisions", broken)

    async def add(i: int) -> int:
        resp = await daemon.client.post(f"{PART}/members", json={"members": [{"guid": guid(i)}]})
        return resp.status

    assert await asyncio.gather(*(add(i) for i in range(10))) == [200] * 10
    assert calls  # the grouped path was tried
    got = await daemon.json("GET", PART, 200)
    assert [m["guid"] for m in got["members"]] == [guid(i) for i in range(10)]
    revisions = await daemon.json("GET", "/api/v1/revisions", 200)
    assert len(revisions["revisions"]) == 11
