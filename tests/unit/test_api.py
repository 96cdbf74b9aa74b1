from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pkeyd.api.keys import SERVICE
from pkeyd.config import Settings
from pkeyd.domain import PKeyRange
from tests.helpers import Daemon, running_daemon
from tests.unit.conftest import CountingReloader

G1 = "0x0002c90300000011"
G2 = "0x0002c90300000012"


def _create_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "tenant-a",
        "pkey": "0x0a12",
        "ipoib": True,
        "members": [{"guid": G1, "membership": "full"}, {"guid": G2, "membership": "limited"}],
    }
    body.update(overrides)
    return body


def _members(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"guid": g, "membership": m, "index0": False} for g, m in pairs]


async def test_create_get_list_and_render(daemon: Daemon) -> None:
    created = await daemon.json("POST", "/api/v1/partitions", 201, json=_create_body())
    assert created == {
        "pkey": "0x0a12",
        "name": "tenant-a",
        "ipoib": True,
        "mtu": None,
        "rate": None,
        "sl": None,
        "scope": [],
        "q_key": None,
        "tclass": None,
        "flow_label": None,
        "defmember": None,
        "indx0": False,
        "members": _members((G1, "full"), (G2, "limited")),
        "keywords": [],
        "mgroups": [],
    }
    assert await daemon.json("GET", "/api/v1/partitions/0x0a12", 200) == created
    assert await daemon.json("GET", "/api/v1/partitions/0xA12", 200) == created
    listed = await daemon.json("GET", "/api/v1/partitions", 200)
    default = await daemon.json("GET", "/api/v1/partitions/0x7fff", 200)
    assert listed == {"partitions": [created, default], "next_cursor": None}
    status = await daemon.wait_applied()
    assert status["desired_generation"] == 1
    assert status["last_reload"]["result"] == "ok"
    text = daemon.settings.partitions_conf.read_text()
    assert f"tenant-a=0x0a12, ipoib : {G1}=full, {G2}=limited ;" in text.splitlines()


async def test_guid_forms_are_normalised(daemon: Daemon) -> None:
    body = _create_body(members=[{"guid": "0002:c903:0000:0011"}, {"guid": "0002c90300000012"}])
    created = await daemon.json("POST", "/api/v1/partitions", 201, json=body)
    assert [m["guid"] for m in created["members"]] == [G1, G2]
    assert {m["membership"] for m in created["members"]} == {"full"}


async def test_members_add_update_and_remove(daemon: Daemon) -> None:
    await daemon.json("POST", "/api/v1/partitions", 201, json=_create_body(members=[]))
    url = "/api/v1/partitions/0x0a12/members"
    after = await daemon.json("POST", url, 200, json={"members": [{"guid": G1}]})
    assert after["members"] == _members((G1, "full"))
    body = {"members": [{"guid": G1, "membership": "limited"}, {"guid": G2}]}
    after = await daemon.json("POST", url, 200, json=body)
    assert after["members"] == _members((G1, "limited"), (G2, "full"))
    await daemon.json("DELETE", f"{url}/0002c90300000011", 204)
    await daemon.json("DELETE", f"{url}/{G1}", 404)
    got = await daemon.json("GET", "/api/v1/partitions/0x0a12", 200)
    assert got["members"] == _members((G2, "full"))
    await daemon.wait_applied()
    assert G1 not in daemon.settings.partitions_conf.read_text()


async def test_no_op_member_add_commits_nothing(daemon: Daemon) -> None:
    await daemon.json("POST", "/api/v1/partitions", 201, json=_create_body())
    before = (await daemon.wait_applied())["desired_generation"]
    body = {"members": [{"guid": G1, "membership": "full"}]}
    await daemon.json("POST", "/api/v1/partitions/0x0a12/members", 200, json=body)
    assert (await daemon.wait_applied())["desired_generation"] == before


async def test_delete_partition(daemon: Daemon) -> None:
    await daemon.json("POST", "/api/v1/partitions", 201, json=_create_body())
    await daemon.json("DELETE", "/api/v1/partitions/0x0a12", 204)
    await daemon.json("DELETE", "/api/v1/partitions/0x0a12", 404)
    await daemon.json("GET", "/api/v1/partitions/0x0a12", 404)
    await daemon.wait_applied()
    assert "tenant-a" not in daemon.settings.partitions_conf.read_text()


async def test_pkey_allocation_takes_lowest_free_in_range(
    settings: Settings, reloader: CountingReloader
) -> None:
    narrow = dataclasses.replace(settings, pkey_range=PKeyRange(0x100, 0x102))
    async with running_daemon(narrow, reloader) as d:
        for name in ("a", "b", "c"):
            await d.json("POST", "/api/v1/partitions", 201, json={"name": name})
        assert [
            p["pkey"] for p in (await d.json("GET", "/api/v1/partitions", 200))["partitions"]
        ] == ["0x0100", "0x0101", "0x0102", "0x7fff"]
        await d.json("DELETE", "/api/v1/partitions/0x0101", 204)
        again = await d.json("POST", "/api/v1/partitions", 201, json={"name": "d"})
        assert again["pkey"] == "0x0101"
        full = await d.json("POST", "/api/v1/partitions", 409, json={"name": "e"})
        assert full["error"]["field"] == "pkey"


async def test_duplicates_are_409(daemon: Daemon) -> None:
    await daemon.json("POST", "/api/v1/partitions", 201, json=_create_body())
    dup_pkey = await daemon.json("POST", "/api/v1/partitions", 409, json=_create_body(name="x"))
    assert dup_pkey["error"] == {
        "code": "conflict",
        "message": "partition 0x0a12 already exists",
        "field": "pkey",
    }
    dup_name = await daemon.json("POST", "/api/v1/partitions", 409, json=_create_body(pkey="0x2"))
    assert dup_name["error"]["field"] == "name"


BAD_CREATES: list[tuple[dict[str, Any], int, str | None]] = [
    (_create_body(name="1abc"), 422, "name"),
    (_create_body(name="a:b"), 422, "name"),
    (_create_body(name="x" * 32), 422, "name"),
    (_create_body(name=" a"), 422, "name"),
    (_create_body(name="Default"), 422, "name"),
    ({"pkey": "0x10"}, 422, "name"),
    (_create_body(pkey="0x7fff"), 422, "pkey"),
    (_create_body(pkey="0x8a12"), 422, "pkey"),
    (_create_body(pkey="0x0000"), 422, "pkey"),
    (_create_body(pkey="a12"), 422, "pkey"),
    (_create_body(ipoib="yes"), 422, "ipoib"),
    (_create_body(members=[{"guid": "0xzz"}]), 422, "members[0].guid"),
    (_create_body(members=[{"guid": G1, "membership": "half"}]), 422, "members[0].membership"),
    (_create_body(members=[{"guid": G1, "membership": "both"}]), 422, "members[0].membership"),
    (_create_body(members=[{"guid": G1}, {"guid": G1}]), 422, "members[1].guid"),
    (_create_body(members=[{"guid": G1, "color": True}]), 422, "members[0].color"),
    (_create_body(members=[{"membership": "full"}]), 422, "members[0].guid"),
    (_create_body(members={"guid": G1}), 422, "members"),
    (_create_body(color=4), 422, "color"),
    (_create_body(pkey="0x0a12"), 409, "pkey"),
    (_create_body(name="tenant-a", pkey="0x0b00"), 409, "name"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_CREATES)
async def test_bad_input_names_the_field_and_changes_nothing(
    daemon: Daemon, body: dict[str, Any], status: int, field: str | None
) -> None:
    await daemon.json("POST", "/api/v1/partitions", 201, json=_create_body())
    await daemon.wait_applied()
    stored = await daemon.json("GET", "/api/v1/partitions", 200)
    live = daemon.settings.partitions_conf.read_bytes()

    error = await daemon.json("POST", "/api/v1/partitions", status, json=body)
    assert error["error"]["field"] == field
    assert error["error"]["message"]
    bad_members = {"members": body.get("members", [{"guid": "nope"}])}
    if status == 422 and field and field.startswith("members"):
        await daemon.json("POST", "/api/v1/partitions/0x0a12/members", 422, json=bad_members)

    assert await daemon.json("GET", "/api/v1/partitions", 200) == stored
    await daemon.wait_applied()
    assert daemon.settings.partitions_conf.read_bytes() == live


async def test_transport_errors_are_json(daemon: Daemon) -> None:
    resp = await daemon.client.post(
        "/api/v1/partitions", data="{", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_request"
    resp = await daemon.client.post("/api/v1/partitions", data="name=x")
    assert resp.status == 415
    resp = await daemon.client.post("/api/v1/partitions", json=["a"])
    assert resp.status == 400
    resp = await daemon.client.get("/api/v1/nope")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await daemon.client.put("/api/v1/partitions")
    assert resp.status == 405
    await daemon.json("GET", "/api/v1/partitions/0x8000", 422)
    err = await daemon.json("DELETE", "/api/v1/partitions/0x0a12/members/xyz", 422)
    assert err["error"]["field"] == "guid"


async def test_body_over_the_limit_is_413(settings: Settings, reloader: CountingReloader) -> None:
    small = dataclasses.replace(settings, max_body_bytes=1024)
    async with running_daemon(small, reloader) as d:
        members = [{"guid": f"0x{i:016x}"} for i in range(1, 200)]
        err = await d.json(
            "POST", "/api/v1/partitions", 413, json={"name": "a", "members": members}
        )
        assert err["error"]["code"] == "too_large"


async def test_both_accepted_when_opensm_allows_it(
    settings: Settings, reloader: CountingReloader
) -> None:
    allowed = dataclasses.replace(settings, allow_both_pkeys=True)
    async with running_daemon(allowed, reloader) as d:
        body = _create_body(members=[{"guid": G1, "membership": "both"}])
        created = await d.json("POST", "/api/v1/partitions", 201, json=body)
        assert created["members"] == _members((G1, "both"))
        await d.wait_applied()
        assert f"{G1}=both" in d.settings.partitions_conf.read_text()


async def test_server_errors_never_leak_a_traceback(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(daemon.app[SERVICE], "list_page", broken)
    resp = await daemon.client.get("/api/v1/partitions")
    text = await resp.text()
    assert resp.status == 500
    assert "secret" not in text
    assert "Traceback" not in text
    assert resp.headers["X-Request-Id"] in text


async def test_reload_failure_is_reported_and_retried(
    daemon: Daemon, reloader: CountingReloader
) -> None:
    reloader.failure = "OpenSM is not running"
    await daemon.json("POST", "/api/v1/partitions", 201, json=_create_body())
    for _ in range(200):
        status = await daemon.json("GET", "/api/v1/status", 200)
        if status["last_reload"]["result"] == "error":
            break
        await __import__("asyncio").sleep(0.01)
    assert status["pending"] is True
    assert status["last_reload"]["error"] == "OpenSM is not running"
    reloader.failure = None
    status = await daemon.wait_applied()
    assert status["pending"] is False
    assert status["last_error"] is None


async def test_health_and_metrics(daemon: Daemon) -> None:
    assert await daemon.json("GET", "/healthz", 200) == {"status": "ok"}
    await daemon.json("POST", "/api/v1/partitions", 201, json=_create_body())
    await daemon.wait_applied()
    resp = await daemon.client.get("/metrics")
    text = await resp.text()
    assert "pkeyd_applied_generation 1.0" in text
    assert 'pkeyd_reloads_total{result="ok"}' in text
    assert (
        'pkeyd_http_requests_total{method="POST",route="/api/v1/partitions",status="201"}' in text
    )


async def test_stale_temp_file_is_removed_at_start(
    settings: Settings, reloader: CountingReloader, tmp_path: Path
) -> None:
    stale = tmp_path / ".partitions.conf.pkeyd-tmp-999999"
    stale.write_text("torn")
    async with running_daemon(settings, reloader) as d:
        await d.wait_applied()
        assert not stale.exists()
