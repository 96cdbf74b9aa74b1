"""UFM's PKey calls, replayed as the open-source clients send them.

Which client sends which shape (read from their sources):
- ib-kubernetes (Mellanox/ib-kubernetes, pkg/sm/plugins/ufm/ufm.go and
  pkg/drivers/http/client.go): basic auth, Content-Type
  `application/json; charset=utf-8`, PKeys as `0x%04X` (uppercase), GUIDs
  as 16 hex digits; GET /ufmRest/app/ufm_version; POST /ufmRest/resources/pkeys
  with index0, ip_over_ib and membership full; POST
  /ufmRest/actions/remove_guids_from_pkey; GET /ufmRest/resources/pkeys/?guids_data=true
  (note the slash) and expects exactly 200 everywhere. Its pull request 210
  adds GET /ufmRest/resources/pkeys/0x%04X (a missing PKey is `{}` or a 404),
  GET .../pkeys/last_updated, a HEAD of ufm_version for the Date header,
  and limited members without ip_over_ib.
- The Neutron bare-metal driver (networking-mlnx-baremetal,
  ufmclient/modules/resources/pkey.py and mech_ib_baremetal.py): PKeys as
  Python's hex() (`0xa12`), query flags as str(bool) (`True`/`False`),
  PUT /resources/pkeys to set the list, POST /resources/pkeys/ (slash) to
  add, DELETE /resources/pkeys/{pkey} (a 404 is fine) and
  DELETE /resources/pkeys/{pkey}/guids/g1,g2.
- Rust clients (NVIDIA's bare-metal manager ufmclient, openbce/ufmclient):
  /ufmRestV3 with a token, PKeys as `0x{:x}`, `?guids_data=true&qos_conf=true`
  combined, PUT /resources/pkeys/qos_conf, POST .../actions/remove_guids_from_pkey,
  accept only 200 and 201, read a missing PKey from the body being exactly `{}`,
  and parse `qos_conf` numbers as integers (rate_limit as a float).
- openbce's Go plugin: POST /resources/pkeys/qos_conf, GET one with both flags.
- An operator's script (ufm_pkey_manager.py): POST /resources/pkeys/add with
  pkey, index0, ip_over_ib; flags as `true`/`false`.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import pytest

from pkeyd.api.ufm_clock import LAST_UPDATED
from pkeyd.api.ufm_routes import PREFIXES
from pkeyd.config import Settings
from tests.helpers import Daemon, running_daemon
from tests.unit.conftest import CountingReloader

G1, G2, G3 = "0002c90300000011", "0002c90300000012", "0002c90300000013"
GO_JSON = {"Content-Type": "application/json; charset=utf-8"}


async def _send(d: Daemon, method: str, path: str, body: str, expect: int = 200) -> Any:
    """A body written by hand, as the Go client formats it (not re-serialised)."""
    resp = await d.client.request(method, path, data=body.encode(), headers=GO_JSON)
    answer = await resp.json()
    assert resp.status == expect, (resp.status, answer)
    return answer


async def _v1(d: Daemon, pkey: str = "0x0a12") -> dict[str, Any]:
    body: dict[str, Any] = await d.json("GET", f"/api/v1/partitions/{pkey}", 200)
    return body


def _add(*guids: str) -> dict[str, Any]:
    return {"pkey": "0xa12", "guids": list(guids)}


def _members(partition: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(m["guid"], m["membership"], m["index0"]) for m in partition["members"]]


async def test_ib_kubernetes_pod_flow(daemon: Daemon) -> None:
    assert await daemon.json("GET", "/ufmRest/app/ufm_version", 200) == {
        "ufm_release_version": "pkeyd 0.1.0"
    }
    add = f'{{"pkey": "0x0A12", "index0": true, "ip_over_ib": true, "membership": "full", "guids": ["{G1}","{G2}"]}}'  # noqa: E501
    answer = await _send(daemon, "POST", "/ufmRest/resources/pkeys", add)
    assert answer["partition"] == "pk_0x0a12"

    # The same partition through /api/v1: generated name, IPoIB, index0 per member.
    v1 = await _v1(daemon)
    assert (v1["name"], v1["ipoib"]) == ("pk_0x0a12", True)
    assert _members(v1) == [(f"0x{G1}", "full", True), (f"0x{G2}", "full", True)]

    listed = await daemon.json("GET", "/ufmRest/resources/pkeys/?guids_data=true", 200)
    assert listed["0xa12"] == {
        "partition": "pk_0x0a12",
        "ip_over_ib": True,
        "guids": [
            {"guid": G1, "membership": "full", "index0": True},
            {"guid": G2, "membership": "full", "index0": True},
        ],
    }
    # The Default partition is listed too, with the membership every port gets.
    assert listed["0x7fff"]["membership"] == "limited"

    remove = f'{{"pkey": "0x0A12", "guids": ["{G1}"]}}'
    await _send(daemon, "POST", "/ufmRest/actions/remove_guids_from_pkey", remove)
    assert _members(await _v1(daemon)) == [(f"0x{G2}", "full", True)]


async def test_ib_kubernetes_pr210_shapes(daemon: Daemon) -> None:
    missing = await daemon.client.get("/ufmRest/resources/pkeys/0x0A12")
    assert missing.status == 200
    assert await missing.text() == "{}"  # the exact body the Go and Rust clients test for
    assert missing.headers["X-Pkeyd-Not-Found"] == "0x0a12"

    head = await daemon.client.head("/ufmRest/app/ufm_version")
    assert head.status == 200
    assert head.headers["Date"].endswith(" GMT")  # RFC 1123, what GetServerTime parses

    limited = f'{{"pkey": "0x0A12", "guids": ["{G3}"], "membership": "limited", "index0": false}}'
    await _send(daemon, "POST", "/ufmRest/resources/pkeys", limited)
    # Created by this call without ip_over_ib: UFM's default, true.
    v1 = await _v1(daemon)
    assert v1["ipoib"] is True
    assert _members(v1) == [(f"0x{G3}", "limited", False)]
    found = await daemon.json("GET", "/ufmRest/resources/pkeys/0x0A12", 200)
    assert found == {"partition": "pk_0x0a12", "ip_over_ib": True}


async def test_neutron_flow_put_change_delete(daemon: Daemon) -> None:
    body = {"guids": [G1, G2], "ip_over_ib": True, "index0": False,
            "membership": "full", "pkey": "0xa12"}  # fmt: skip
    await daemon.json("PUT", "/ufmRest/resources/pkeys", 200, json=body)
    assert _members(await _v1(daemon)) == [(f"0x{G1}", "full", False), (f"0x{G2}", "full", False)]

    body |= {"guids": [G2, G3], "membership": "limited"}
    answer = await daemon.json("PUT", "/ufmRest/resources/pkeys", 200, json=body)
    assert [g["guid"] for g in answer["guids"]] == [G2, G3]
    assert _members(await _v1(daemon)) == [
        (f"0x{G2}", "limited", False),
        (f"0x{G3}", "limited", False),
    ]

    one = await daemon.json("GET", "/ufmRest/resources/pkeys/0xa12?guids_data=True", 200)
    assert [g["membership"] for g in one["guids"]] == ["limited", "limited"]
    without = await daemon.json("GET", "/ufmRest/resources/pkeys?guids_data=False", 200)
    assert without["0xa12"] == {"partition": "pk_0x0a12", "ip_over_ib": True}

    await daemon.json("POST", "/ufmRest/resources/pkeys/", 200, json=body | {"guids": [G1]})
    await daemon.json("DELETE", f"/ufmRest/resources/pkeys/0xa12/guids/{G1},{G3}", 200)
    assert _members(await _v1(daemon)) == [(f"0x{G2}", "limited", False)]

    assert await daemon.json("DELETE", "/ufmRest/resources/pkeys/0xa12", 200) == {}
    await daemon.json("GET", "/api/v1/partitions/0x0a12", 404)
    # The driver deletes a network's PKey even when it was never set up: a 404.
    gone = await daemon.json("DELETE", "/ufmRest/resources/pkeys/0xa12", 404)
    assert gone["error"]["field"] == "pkey"


async def test_put_keeps_keywords_set_through_api_v1(daemon: Daemon) -> None:
    body = {"name": "mixed", "pkey": "0x0a12", "keywords": [{"keyword": "SELF"}],
            "members": [{"guid": f"0x{G1}"}]}  # fmt: skip
    await daemon.json("POST", "/api/v1/partitions", 201, json=body)
    await daemon.json("PUT", "/ufmRest/resources/pkeys", 200, json={"pkey": "0xa12", "guids": [G2]})
    v1 = await _v1(daemon)
    assert _members(v1) == [(f"0x{G2}", "full", False)]
    assert v1["keywords"] == [{"keyword": "SELF", "membership": "full", "index0": False}]
    assert v1["name"] == "mixed"  # UFM calls never rename a partition


async def test_rust_client_v3_qos_and_combined_flags(settings: Settings) -> None:
    config = dataclasses.replace(settings, qos=True)
    async with running_daemon(config, CountingReloader()) as d:
        bind = {"pkey": "0xa12", "ip_over_ib": False, "membership": "full",
                "index0": True, "guids": [G1]}  # fmt: skip
        await d.json("POST", "/ufmRestV3/resources/pkeys", 200, json=bind)
        qos = {"pkey": "0xa12", "mtu_limit": 4, "service_level": 3, "rate_limit": 200.0}
        await d.json("PUT", "/ufmRestV3/resources/pkeys/qos_conf", 200, json=qos)
        v1 = await _v1(d)
        assert (v1["mtu"], v1["rate"], v1["sl"], v1["ipoib"]) == (5, 17, 3, False)

        one = await d.json(
            "GET", "/ufmRestV3/resources/pkeys/0xa12?guids_data=true&qos_conf=true", 200
        )
        assert one == {
            "partition": "pk_0x0a12",
            "ip_over_ib": False,
            "guids": [{"guid": G1, "membership": "full", "index0": True}],
            "qos_conf": {"mtu_limit": 4, "service_level": 3, "rate_limit": 200},
        }
        listed = await d.json("GET", "/ufmRestV3/resources/pkeys?qos_conf=true", 200)
        # A partition without settings answers OpenSM's defaults: 2048 bytes, 10 Gb/s.
        assert listed["0x7fff"]["qos_conf"] == {"mtu_limit": 2, "service_level": 0,
                                                "rate_limit": 10}  # fmt: skip
        assert "guids" not in listed["0x7fff"]

        # openbce's Go plugin: POST to qos_conf, 2.5 Gb/s.
        await d.json("POST", "/ufmRestV2/resources/pkeys/qos_conf", 200,
                     json={"pkey": "0xa12", "rate_limit": 2.5})  # fmt: skip
        assert (await _v1(d))["rate"] == 2
        listed = await d.json("GET", "/ufmRest/resources/pkeys?qos_conf=true", 200)
        assert listed["0xa12"]["qos_conf"]["rate_limit"] == 2.5

        unbind = {"pkey": "0xa12", "guids": [G1]}
        await d.json("POST", "/ufmRestV3/actions/remove_guids_from_pkey", 200, json=unbind)
        assert (await _v1(d))["members"] == []


async def test_create_empty_pkey_with_flags_and_name(daemon: Daemon) -> None:
    # The operator's script and UFM's documented example.
    body = {"pkey": "0x12", "partition_name": "user_partition", "index0": True,
            "ip_over_ib": False, "mtu_limit": 2, "service_level": 0, "rate_limit": 2.5}  # fmt: skip
    created = await daemon.json("POST", "/ufmRest/resources/pkeys/add", 201, json=body)
    assert created == {
        "partition": "user_partition",
        "ip_over_ib": False,
        "guids": [],
        "qos_conf": {"mtu_limit": 2, "service_level": 0, "rate_limit": 2.5},
    }
    v1 = await _v1(daemon, "0x0012")
    assert (v1["indx0"], v1["mtu"], v1["rate"], v1["members"]) == (True, 4, 2, [])
    # Index0 of the partition shows on every member added later.
    await daemon.json("POST", "/ufmRest/resources/pkeys", 200, json={"pkey": "0x12", "guids": [G1]})
    one = await daemon.json("GET", "/ufmRest/resources/pkeys/0x12?guids_data=true", 200)
    assert one["guids"] == [{"guid": G1, "membership": "full", "index0": True}]
    # An empty PKey is still listed (UFM would drop it with its last GUID).
    await daemon.json("POST", "/ufmRest/actions/remove_guids_from_pkey", 200,
                      json={"pkey": "0x12", "guids": [G1]})  # fmt: skip
    assert "0x12" in await daemon.json("GET", "/ufmRest/resources/pkeys", 200)

    again = await daemon.json("POST", "/ufmRest/resources/pkeys/add", 409, json={"pkey": "0x12"})
    assert again["error"]["field"] == "pkey"


async def test_memberships_per_guid_and_an_existing_pkey_keeps_ipoib(daemon: Daemon) -> None:
    await daemon.json("POST", "/ufmRest/resources/pkeys/add", 201,
                      json={"pkey": "0xa12", "ip_over_ib": False})  # fmt: skip
    body = {"pkey": "0xa12", "guids": [G1, G2], "memberships": ["limited", "full"]}
    await daemon.json("POST", "/ufmRest/resources/pkeys", 200, json=body)
    v1 = await _v1(daemon)
    assert _members(v1) == [(f"0x{G1}", "limited", False), (f"0x{G2}", "full", False)]
    assert v1["ipoib"] is False  # not sent: an existing PKey keeps its flag
    await daemon.json("POST", "/ufmRest/resources/pkeys", 200,
                      json={"pkey": "0xa12", "guids": [G3], "ip_over_ib": True})  # fmt: skip
    assert (await _v1(daemon))["ipoib"] is True  # sent: it changes


async def test_guid_forms(daemon: Daemon) -> None:
    forms = [
        "0002C90300000011",  # uppercase
        "0x0002c90300000012",  # with 0x
        "00000002c90300000013",  # 20 digits: zero padding within UFM's 20 characters
        # A 20-byte IPoIB hardware address (Ironic's client-id): its last 8 bytes.
        "ff:00:00:00:00:00:02:00:00:02:c9:00:00:02:c9:03:00:00:00:14",
    ]
    await daemon.json("POST", "/ufmRest/resources/pkeys", 200, json=_add(*forms))
    assert [m["guid"] for m in (await _v1(daemon))["members"]] == [
        "0x0002c90300000011",
        "0x0002c90300000012",
        "0x0002c90300000013",
        "0x0002c90300000014",
    ]


async def test_removing_a_non_member_is_a_no_op(daemon: Daemon) -> None:
    await daemon.json("POST", "/ufmRest/resources/pkeys", 200, json=_add(G1))
    status = await daemon.wait_applied()
    await daemon.json("DELETE", f"/ufmRest/resources/pkeys/0xa12/guids/{G2}", 200)
    await daemon.json("POST", "/ufmRest/actions/remove_guids_from_pkey", 200,
                      json={"pkey": "0xa12", "guids": [G3]})  # fmt: skip
    after = await daemon.wait_applied()
    assert after["desired_generation"] == status["desired_generation"]  # nothing committed
    missing = await daemon.json("DELETE", f"/ufmRest/resources/pkeys/0x0b00/guids/{G1}", 404)
    assert missing["error"]["field"] == "pkey"


BAD_REQUESTS = [
    # (method, path, body, status, field)
    ("POST", "/ufmRest/resources/pkeys", {"guids": [G1]}, 422, "pkey"),
    ("POST", "/ufmRest/resources/pkeys", {"pkey": "0xa12"}, 422, "guids"),
    ("POST", "/ufmRest/resources/pkeys", {"pkey": "a12", "guids": [G1]}, 422, "pkey"),
    ("POST", "/ufmRest/resources/pkeys", {"pkey": "0x8a12", "guids": [G1]}, 422, "pkey"),
    ("POST", "/ufmRest/resources/pkeys", {"pkey": "0x7fff", "guids": [G1]}, 422, "pkey"),
    ("POST", "/ufmRest/resources/pkeys", {"pkey": "0xa12", "guids": G1}, 422, "guids"),
    ("POST", "/ufmRest/resources/pkeys", {"pkey": "0xa12", "guids": ["c903"]}, 422, "guids[0]"),
    ("POST", "/ufmRest/resources/pkeys", {"pkey": "0xa12", "guids": ["1" * 20]}, 422, "guids[0]"),
    ("POST", "/ufmRest/resources/pkeys", {"pkey": "0xa12", "guids": ["0" * 16]}, 422, "guids[0]"),
    ("POST", "/ufmRest/resources/pkeys", {"pkey": "0xa12", "guids": [G1, G1]}, 422, "guids[1]"),
    ("POST", "/ufmRest/resources/pkeys",
     {"pkey": "0xa12", "guids": [G1], "membership": "both"}, 422, "membership"),
    ("POST", "/ufmRest/resources/pkeys",
     {"pkey": "0xa12", "guids": [G1], "memberships": ["full", "full"]}, 422, "memberships"),
    ("POST", "/ufmRest/resources/pkeys",
     {"pkey": "0xa12", "guids": [G1, G2], "memberships": ["full", "owner"]}, 422, "memberships[1]"),
    ("POST", "/ufmRest/resources/pkeys",
     {"pkey": "0xa12", "guids": [G1], "membership": "full", "memberships": ["full"]},
     422, "memberships"),
    ("POST", "/ufmRest/resources/pkeys",
     {"pkey": "0xa12", "guids": [G1], "index0": "yes"}, 422, "index0"),
    ("POST", "/ufmRest/resources/pkeys",
     {"pkey": "0xa12", "guids": [G1], "ip_over_ib": 1}, 422, "ip_over_ib"),
    ("POST", "/ufmRest/resources/pkeys",
     {"pkey": "0xa12", "guids": [G1], "default_membership": "full"}, 422, "default_membership"),
    ("PUT", "/ufmRest/resources/pkeys", {"pkey": "0xa12"}, 422, "guids"),
    ("POST", "/ufmRest/resources/pkeys/add", {"pkey": "0xa12", "mtu_limit": 3}, 422, "mtu_limit"),
    ("POST", "/ufmRest/resources/pkeys/add", {"pkey": "0xa12", "rate_limit": 7}, 422, "rate_limit"),
    ("POST", "/ufmRest/resources/pkeys/add",
     {"pkey": "0xa12", "service_level": 16}, 422, "service_level"),
    # Without qos in the daemon's settings OpenSM would force the SL to 0.
    ("POST", "/ufmRest/resources/pkeys/add",
     {"pkey": "0xa12", "service_level": 2}, 422, "service_level"),
    ("POST", "/ufmRest/resources/pkeys/add",
     {"pkey": "0xa12", "partition_name": "Default"}, 422, "partition_name"),
    ("POST", "/ufmRest/resources/pkeys/add", {"pkey": "0xa12"}, 409, "pkey"),
    ("POST", "/ufmRest/resources/pkeys/add",
     {"pkey": "0xb00", "partition_name": "pk_0x0a12"}, 409, "partition_name"),
    ("PUT", "/ufmRest/resources/pkeys/qos_conf", {"pkey": "0xa12"}, 422, "mtu_limit"),
    ("PUT", "/ufmRest/resources/pkeys/qos_conf", {"pkey": "0x0b00", "mtu_limit": 2}, 404, "pkey"),
    ("POST", "/ufmRest/actions/remove_guids_from_pkey", {"pkey": "0xa12"}, 422, "guids"),
    ("POST", "/ufmRest/actions/remove_guids_from_pkey",
     {"pkey": "0x0b00", "guids": [G1]}, 404, "pkey"),
    ("DELETE", "/ufmRest/resources/pkeys/0xa12/guids/0002c903,", None, 422, "guids[0]"),
    ("DELETE", "/ufmRest/resources/pkeys/0x7fff", None, 409, "pkey"),
    ("GET", "/ufmRest/resources/pkeys/0x10000", None, 422, "pkey"),
    ("GET", "/ufmRest/resources/pkeys?guids_data=maybe", None, 400, "guids_data"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), BAD_REQUESTS)
async def test_bad_requests_name_the_field_and_store_nothing(
    daemon: Daemon, method: str, path: str, body: Any, status: int, field: str
) -> None:
    await daemon.json("PUT", "/ufmRest/resources/pkeys", 200, json={"pkey": "0xa12", "guids": [G2]})
    before = await daemon.json("GET", "/api/v1/partitions", 200)
    kw = {} if body is None else {"json": body}
    answer = await daemon.json(method, path, status, **kw)
    assert answer["error"]["field"] == field
    assert await daemon.json("GET", "/api/v1/partitions", 200) == before


async def test_body_must_be_a_json_object(daemon: Daemon) -> None:
    resp = await daemon.client.post("/ufmRest/resources/pkeys", data=b"pkey=0xa12")
    assert resp.status == 415
    await _send(daemon, "POST", "/ufmRest/resources/pkeys", "{not json", 400)
    await _send(daemon, "POST", "/ufmRest/resources/pkeys", '["0xa12"]', 400)


async def test_last_updated_moves_when_applied_without_verification(daemon: Daemon) -> None:
    # fabric_reader = off here: "applied" (written, OpenSM reloaded) is the best proof.
    clock = daemon.app[LAST_UPDATED]
    first = await daemon.json("GET", "/ufmRest/resources/pkeys/last_updated", 200)
    assert first["last_updated"] is not None  # the start-up pass applied generation 0
    assert clock.generation == 0
    await daemon.json("POST", "/ufmRest/resources/pkeys", 200, json=_add(G1))
    status = await daemon.wait_applied()
    second = await daemon.json("GET", "/ufmRest/resources/pkeys/last_updated", 200)
    assert clock.generation == status["desired_generation"] == 1
    assert _parse(second["last_updated"]) >= _parse(first["last_updated"])


def _parse(text: str) -> datetime:
    return datetime.strptime(text, "%a %b %d %H:%M:%S UTC %Y")


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_each_prefix_serves_the_same_calls(daemon: Daemon, prefix: str) -> None:
    await daemon.json("GET", f"{prefix}/app/ufm_version", 200)
    await daemon.json("POST", f"{prefix}/resources/pkeys/add", 201, json={"pkey": "0xa12"})
    await daemon.json("PUT", f"{prefix}/resources/pkeys/", 200, json=_add(G1))
    await daemon.json("DELETE", f"{prefix}/resources/pkeys/0xa12/guids/{G1}", 200)
    await daemon.json("POST", f"{prefix}/resources/pkeys/", 200, json=_add(G2))
    await daemon.json("POST", f"{prefix}/actions/remove_guids_from_pkey", 200, json=_add(G2))
    await daemon.json("PUT", f"{prefix}/resources/pkeys/qos_conf", 200,
                      json={"pkey": "0xa12", "mtu_limit": 4})  # fmt: skip
    assert set(await daemon.json("GET", f"{prefix}/resources/pkeys/", 200)) == {"0xa12", "0x7fff"}
    one = await daemon.json("GET", f"{prefix}/resources/pkeys/0xa12?qos_conf=1", 200)
    assert one["qos_conf"]["mtu_limit"] == 4
    await daemon.json("GET", f"{prefix}/resources/pkeys/last_updated", 200)
    await daemon.json("DELETE", f"{prefix}/resources/pkeys/0xa12", 200)


async def test_pkey_forms(daemon: Daemon) -> None:
    # A JSON integer is unambiguous; hex strings in any case and padding.
    await daemon.json("POST", "/ufmRest/resources/pkeys", 200, json={"pkey": 2578, "guids": [G1]})
    await daemon.json("POST", "/ufmRest/resources/pkeys", 200,
                      json={"pkey": "0X0A12", "guids": [G2]})  # fmt: skip
    assert len((await _v1(daemon))["members"]) == 2
    for path in ("0xa12", "0x0a12", "0xA12", "0X0A12"):
        found = await daemon.json("GET", f"/ufmRest/resources/pkeys/{path}", 200)
        assert found["partition"] == "pk_0x0a12"
