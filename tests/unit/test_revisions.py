"""Revisions: the record of every change, its diff, restoring it; and dry runs."""

from __future__ import annotations

from typing import Any

import pytest

from pkeyd.api.keys import SERVICE
from pkeyd.domain import PKey
from pkeyd.drafts import PartitionPatch
from pkeyd.writes import WriteOptions
from tests.helpers import Daemon

PART = "/api/v1/partitions/0x0a12"
G1 = "0x0002c90300000011"
G2 = "0x0002c90300000012"


async def _history(daemon: Daemon) -> list[dict[str, Any]]:
    """create (1), add G2 (2), rename (3), remove G1 (4), delete (5)."""
    body = {"name": "tenant", "pkey": "0x0a12", "members": [{"guid": G1}]}
    await daemon.json("POST", "/api/v1/partitions", 201, json=body)
    await daemon.json("POST", f"{PART}/members", 200, json={"members": [{"guid": G2}]})
    await daemon.json("PATCH", PART, 200, json={"name": "renamed", "ipoib": True})
    await daemon.json("DELETE", f"{PART}/members/{G1}", 204)
    await daemon.json("DELETE", PART, 204)
    listed = await daemon.json("GET", "/api/v1/revisions", 200)
    revisions: list[dict[str, Any]] = listed["revisions"]
    return revisions


async def test_every_change_is_recorded_newest_first(daemon: Daemon) -> None:
    revisions = await _history(daemon)
    assert [(r["id"], r["action"]) for r in revisions] == [
        (5, "delete"),
        (4, "remove_members"),
        (3, "update"),
        (2, "add_members"),
        (1, "create"),
    ]
    assert {r["actor"] for r in revisions} == {"anonymous"}
    assert all(r["pkeys"] == ["0x0a12"] for r in revisions)
    added = revisions[3]["changes"][0]
    assert added["members"] == [
        {"guid": G2, "before": None, "after": {"membership": "full", "index0": False}}
    ]
    assert "fields" not in added  # a member write stores only the member
    renamed = revisions[2]["changes"][0]["fields"]
    assert (renamed["before"]["name"], renamed["after"]["name"]) == ("tenant", "renamed")
    page = await daemon.json("GET", "/api/v1/revisions", 200, params={"limit": 2})
    assert [r["id"] for r in page["revisions"]] == [5, 4]
    rest = await daemon.json(
        "GET", "/api/v1/revisions", 200, params={"limit": 10, "cursor": page["next_cursor"]}
    )
    assert [r["id"] for r in rest["revisions"]] == [3, 2, 1]
    assert rest["next_cursor"] is None


async def test_revisions_filter_by_pkey(daemon: Daemon) -> None:
    await _history(daemon)
    await daemon.json("POST", "/api/v1/partitions", 201, json={"name": "other", "pkey": "0x0b00"})
    mine = await daemon.json("GET", "/api/v1/revisions", 200, params={"pkey": "0x0b00"})
    assert [r["id"] for r in mine["revisions"]] == [6]
    error = await daemon.json("GET", "/api/v1/revisions", 422, params={"pkey": "0x9999"})
    assert error["error"]["field"] == "pkey"


async def test_a_revision_shows_its_diff(daemon: Daemon) -> None:
    await _history(daemon)
    added = await daemon.json("GET", "/api/v1/revisions/2", 200)
    assert f"+tenant=0x0a12 : {G1}=full, {G2}=full ;\n" in added["diff"]
    assert f"-tenant=0x0a12 : {G1}=full ;\n" in added["diff"]
    deleted = await daemon.json("GET", "/api/v1/revisions/5", 200)
    assert f"-renamed=0x0a12, ipoib : {G2}=full ;\n" in deleted["diff"]
    await daemon.json("GET", "/api/v1/revisions/99", 404)
    error = await daemon.json("GET", "/api/v1/revisions/x", 422)
    assert error["error"]["field"] == "id"


async def test_restore_makes_the_state_as_it_was_and_is_a_revision(daemon: Daemon) -> None:
    await _history(daemon)
    restored = await daemon.json("POST", "/api/v1/revisions/2/restore", 200)
    assert restored == {"generation": 6, "changed": True}
    got = await daemon.json("GET", PART, 200)
    assert got["name"] == "tenant"
    assert got["ipoib"] is False
    assert [m["guid"] for m in got["members"]] == [G1, G2]
    revision = await daemon.json("GET", "/api/v1/revisions/6", 200)
    assert (revision["action"], revision["restored"]) == ("restore", 2)
    await daemon.wait_applied()
    assert f"tenant=0x0a12 : {G1}=full, {G2}=full ;" in daemon.settings.partitions_conf.read_text()
    again = await daemon.json("POST", "/api/v1/revisions/2/restore", 200)
    assert again == {"generation": None, "changed": False}
    # Undo the restore: back to the deleted state.
    await daemon.json("POST", "/api/v1/revisions/5/restore", 200)
    await daemon.json("GET", PART, 404)
    await daemon.json("POST", "/api/v1/revisions/77/restore", 404)


async def test_the_actor_is_recorded(daemon: Daemon) -> None:
    await daemon.json("POST", "/api/v1/partitions", 201, json={"name": "tenant", "pkey": "0x0a12"})
    service = daemon.app[SERVICE]
    patch = PartitionPatch.parse({"ipoib": True})
    opts = WriteOptions(actor="provisioner")
    await service.execute(service.patch_op(PKey(0x0A12), patch, opts), opts)
    newest = (await daemon.json("GET", "/api/v1/revisions", 200))["revisions"][0]
    assert (newest["actor"], newest["action"]) == ("provisioner", "update")


DRY_WRITES: list[tuple[str, str, dict[str, Any] | None, str]] = [
    (
        "POST",
        "/api/v1/partitions",
        {"name": "new", "pkey": "0x0b00", "members": [{"guid": G2}]},
        f"+new=0x0b00 : {G2}=full ;",
    ),
    ("PATCH", PART, {"name": "renamed"}, "+renamed=0x0a12 :"),
    ("DELETE", PART, None, "-tenant=0x0a12 :"),
    ("POST", f"{PART}/members", {"members": [{"guid": G2}]}, f"{G2}=full"),
    ("PUT", f"{PART}/members", {"members": [{"guid": G2}]}, f"+tenant=0x0a12 : {G2}=full ;"),
    ("POST", f"{PART}/members/remove", {"guids": [G1]}, f"-tenant=0x0a12 : {G1}=full ;"),
    ("DELETE", f"{PART}/members/{G1}", None, f"-tenant=0x0a12 : {G1}=full ;"),
    ("POST", "/api/v1/revisions/1/restore", None, ""),
]


@pytest.mark.parametrize(("method", "path", "body", "line"), DRY_WRITES)
async def test_dry_run_reports_and_commits_nothing(
    daemon: Daemon, method: str, path: str, body: dict[str, Any] | None, line: str
) -> None:
    created = {"name": "tenant", "pkey": "0x0a12", "members": [{"guid": G1}]}
    await daemon.json("POST", "/api/v1/partitions", 201, json=created)
    if path.startswith("/api/v1/revisions"):
        await daemon.json("PATCH", PART, 200, json={"ipoib": True})
    status = await daemon.wait_applied()
    before = await daemon.json("GET", "/api/v1/partitions", 200)
    file_before = daemon.settings.partitions_conf.read_text()
    report = await daemon.json(method, path, 200, json=body, params={"dry_run": "true"})
    assert report["dry_run"] is True
    assert report["generation"] == status["desired_generation"]
    assert [c["pkey"] for c in report["changes"]] in (["0x0a12"], ["0x0b00"])
    assert line in report["diff"]
    assert f"+# generation: {status['desired_generation'] + 1}" in report["diff"]
    after = await daemon.wait_applied()
    assert after["desired_generation"] == status["desired_generation"]
    assert await daemon.json("GET", "/api/v1/partitions", 200) == before
    assert daemon.settings.partitions_conf.read_text() == file_before
    revisions = await daemon.json("GET", "/api/v1/revisions", 200)
    assert revisions["revisions"][0]["id"] == status["desired_generation"]


async def test_dry_run_of_a_failing_write_is_its_error(daemon: Daemon) -> None:
    error = await daemon.json("DELETE", PART, 404, params={"dry_run": "true"})
    assert error["error"]["field"] == "pkey"
    error = await daemon.json("DELETE", PART, 422, params={"dry_run": "perhaps"})
    assert error["error"]["field"] == "dry_run"
