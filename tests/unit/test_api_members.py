"""Member routes: whole-list replacement, bulk removal, the per-request limit, 100,000 GUIDs."""

from __future__ import annotations

import dataclasses
from typing import Any

from pkeyd.api.keys import SERVICE
from pkeyd.config import Settings
from tests.helpers import Daemon, running_daemon
from tests.unit.conftest import CountingReloader

URL = "/api/v1/partitions/0x0a12/members"


def guid(i: int) -> str:
    return f"0x0002c903{i:08x}"


async def _create(daemon: Daemon, members: list[dict[str, Any]] | None = None) -> None:
    body = {"name": "tenant", "pkey": "0x0a12", "members": members or []}
    await daemon.json("POST", "/api/v1/partitions", 201, json=body)


async def test_put_replaces_the_whole_list_and_is_idempotent(daemon: Daemon) -> None:
    await _create(daemon, [{"guid": guid(1)}, {"guid": guid(2), "membership": "limited"}])
    body = {
        "members": [{"guid": guid(2)}, {"guid": guid(3), "membership": "limited"}],
        "keywords": [{"keyword": "SELF"}],
    }
    after = await daemon.json("PUT", URL, 200, json=body)
    assert [(m["guid"], m["membership"]) for m in after["members"]] == [
        (guid(2), "full"),
        (guid(3), "limited"),
    ]
    assert [k["keyword"] for k in after["keywords"]] == ["SELF"]
    generation = (await daemon.wait_applied())["desired_generation"]
    again = await daemon.json("PUT", URL, 200, json=body)
    assert again == after
    assert (await daemon.wait_applied())["desired_generation"] == generation
    assert await daemon.json("GET", "/api/v1/partitions/0x0a12", 200) == after
    text = daemon.settings.partitions_conf.read_text()
    assert guid(1) not in text
    assert f"{guid(3)}=limited" in text


async def test_put_on_a_missing_partition_is_404(daemon: Daemon) -> None:
    error = await daemon.json("PUT", "/api/v1/partitions/0x0bbb/members", 404, json={"members": []})
    assert error["error"]["field"] == "pkey"


async def test_bulk_removal_all_or_nothing_or_missing_ok(daemon: Daemon) -> None:
    await _create(daemon, [{"guid": guid(i)} for i in range(1, 5)])
    missing = await daemon.json("POST", f"{URL}/remove", 404, json={"guids": [guid(1), guid(9)]})
    assert missing["error"]["field"] == "guids"
    assert guid(9) in missing["error"]["message"]
    still = await daemon.json("GET", "/api/v1/partitions/0x0a12", 200)
    assert len(still["members"]) == 4  # nothing removed
    after = await daemon.json(
        "POST", f"{URL}/remove", 200, json={"guids": [guid(1), guid(9)], "missing_ok": True}
    )
    assert [m["guid"] for m in after["members"]] == [guid(2), guid(3), guid(4)]
    after = await daemon.json("POST", f"{URL}/remove", 200, json={"guids": [guid(2), guid(3)]})
    assert [m["guid"] for m in after["members"]] == [guid(4)]


async def test_bulk_removal_rejects_bad_bodies(daemon: Daemon) -> None:
    await _create(daemon, [{"guid": guid(1)}])
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "guids"),
        ({"guids": ["nope"]}, "guids[0]"),
        ({"guids": [guid(1), guid(1)]}, "guids[1]"),
        ({"keywords": ["EVERYONE"]}, "keywords[0]"),
        ({"guids": [], "extra": 1}, "extra"),
        ({"guids": [], "missing_ok": "yes"}, "missing_ok"),
    ]
    for body, field in cases:
        error = await daemon.json("POST", f"{URL}/remove", 422, json=body)
        assert error["error"]["field"] == field, body
    assert len((await daemon.json("GET", "/api/v1/partitions/0x0a12", 200))["members"]) == 1


async def test_member_limit_is_413_naming_the_field(
    settings: Settings, reloader: CountingReloader
) -> None:
    small = dataclasses.replace(settings, max_members_per_request=3)
    async with running_daemon(small, reloader) as d:
        await _create(d)
        four = [{"guid": guid(i)} for i in range(1, 5)]
        error = await d.json("POST", URL, 413, json={"members": four})
        assert error["error"]["field"] == "members"
        assert "max_members_per_request" in error["error"]["message"]
        both = {"members": four[:2], "keywords": [{"keyword": "ALL"}, {"keyword": "SELF"}]}
        error = await d.json("PUT", URL, 413, json=both)
        assert error["error"]["field"] == "keywords"
        error = await d.json(
            "POST", f"{URL}/remove", 413, json={"guids": [guid(i) for i in range(4)]}
        )
        assert error["error"]["field"] == "guids"
        body = {"name": "big", "members": four}
        error = await d.json("POST", "/api/v1/partitions", 413, json=body)
        assert error["error"]["field"] == "members"
        await d.json("POST", URL, 200, json={"members": four[:3]})
        got = await d.json("GET", "/api/v1/partitions/0x0a12", 200)
        assert len(got["members"]) == 3


async def test_one_hundred_thousand_guids_in_one_request(daemon: Daemon) -> None:
    await _create(daemon)
    count = 100_000
    members = [{"guid": guid(i), "membership": "limited"} for i in range(1, count + 1)]
    after = await daemon.json("POST", URL, 200, json={"members": members})
    assert len(after["members"]) == count
    assert after["members"][0] == {"guid": guid(1), "membership": "limited", "index0": False}
    stored = await daemon.json("GET", "/api/v1/partitions/0x0a12", 200)
    assert stored == after
    half = [guid(i) for i in range(1, count + 1, 2)]
    after = await daemon.json("POST", f"{URL}/remove", 200, json={"guids": half})
    assert len(after["members"]) == count // 2
    assert after["members"][0]["guid"] == guid(2)
    daemon.app[SERVICE].cache.clear()  # what is stored, not what was cached
    assert await daemon.json("GET", "/api/v1/partitions/0x0a12", 200) == after
    await daemon.wait_applied(within_s=60)
    text = daemon.settings.partitions_conf.read_text()
    assert f"{guid(2)}=limited" in text
    assert f"{guid(1)}=" not in text


async def test_prefer_return_minimal_answers_without_the_document(daemon: Daemon) -> None:
    await _create(daemon)
    minimal = {"Prefer": "return=minimal"}
    resp = await daemon.client.post(URL, json={"members": [{"guid": guid(1)}]}, headers=minimal)
    assert resp.status == 204
    assert await resp.read() == b""
    assert resp.headers["Preference-Applied"] == "return=minimal"
    current = await daemon.client.get("/api/v1/partitions/0x0a12")
    assert resp.headers["ETag"] == current.headers["ETag"]
    created = await daemon.client.post(
        "/api/v1/partitions", json={"name": "other", "pkey": "0x0b00"}, headers=minimal
    )
    assert created.status == 201
    assert created.headers["Location"] == "/api/v1/partitions/0x0b00"
    assert await created.read() == b""
    errors = await daemon.client.post(
        "/api/v1/partitions/0x0bbb/members", json={"members": []}, headers=minimal
    )
    assert errors.status == 404  # errors keep their body
    assert (await errors.json())["error"]["field"] == "pkey"
