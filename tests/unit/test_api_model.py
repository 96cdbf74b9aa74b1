"""The whole partitions.conf model through the API: flags, keywords, mgroups, Default."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pkeyd.config import Settings
from tests.helpers import Daemon, running_daemon
from tests.unit.conftest import CountingReloader

G1 = "0x0002c90300000011"
G2 = "0x0002c90300000012"


async def _live(daemon: Daemon) -> list[str]:
    await daemon.wait_applied()
    return daemon.settings.partitions_conf.read_text().splitlines()


async def test_default_partition_is_a_managed_singleton(daemon: Daemon) -> None:
    default = await daemon.json("GET", "/api/v1/partitions/0x7fff", 200)
    assert default["name"] == "Default"
    assert default["ipoib"] is True
    assert default["keywords"] == [
        {"keyword": "ALL", "membership": "limited", "index0": False},
        {"keyword": "SELF", "membership": "full", "index0": False},
    ]
    err = await daemon.json("DELETE", "/api/v1/partitions/0x7fff", 409)
    assert err["error"]["field"] == "pkey"
    err = await daemon.json("POST", "/api/v1/partitions", 422, json={"name": "x", "pkey": "0x7fff"})
    assert err["error"]["field"] == "pkey"
    err = await daemon.json("PATCH", "/api/v1/partitions/0x7fff", 422, json={"name": "Other"})
    assert err["error"]["field"] == "name"

    await daemon.json("PATCH", "/api/v1/partitions/0x7fff", 200, json={"mtu": 5, "ipoib": True})
    await daemon.json(
        "POST",
        "/api/v1/partitions/0x7fff/members",
        200,
        json={"keywords": [{"keyword": "ALL", "membership": "full"}]},
    )
    await daemon.json("DELETE", "/api/v1/partitions/0x7fff/members/SELF", 204)
    assert "Default=0x7fff, ipoib, mtu=5 : ALL=full ;" in await _live(daemon)

    await daemon.json("DELETE", "/api/v1/partitions/0x7fff/members/ALL", 204)
    assert "Default=0x7fff, ipoib, mtu=5 : NONE ;" in await _live(daemon)


async def test_flags_keywords_and_index0_are_stored_and_rendered(daemon: Daemon) -> None:
    body: dict[str, Any] = {
        "name": "storage",
        "pkey": "0x0a12",
        "ipoib": True,
        "mtu": 5,
        "rate": 7,
        "scope": [5, 2],
        "q_key": 0x1234,
        "tclass": 8,
        "flow_label": 9,
        "defmember": "limited",
        "members": [{"guid": G1, "index0": True}, {"guid": G2, "membership": "full"}],
        "keywords": [{"keyword": "ALL_SWITCHES", "membership": "full"}],
    }
    created = await daemon.json("POST", "/api/v1/partitions", 201, json=body)
    assert created["scope"] == [2, 5]
    assert created["members"] == [
        {"guid": G1, "membership": "limited", "index0": True},
        {"guid": G2, "membership": "full", "index0": False},
    ]
    head = (
        "storage=0x0a12, ipoib, mtu=5, rate=7, Q_Key=0x1234, TClass=8, "
        "FlowLabel=0x9, defmember=limited"
    )
    lines = await _live(daemon)
    assert f"{head} : ALL_SWITCHES=full, {G2}=full ;" in lines
    assert f"{head}, indx0 : {G1}=limited ;" in lines


async def test_patch_changes_only_named_fields(daemon: Daemon) -> None:
    await daemon.json(
        "POST",
        "/api/v1/partitions",
        201,
        json={"name": "a", "pkey": "0x10", "mtu": 5, "members": [{"guid": G1}]},
    )
    patched = await daemon.json(
        "PATCH", "/api/v1/partitions/0x0010", 200, json={"name": "b", "rate": 6}
    )
    assert (patched["name"], patched["mtu"], patched["rate"]) == ("b", 5, 6)
    assert patched["members"][0]["guid"] == G1
    cleared = await daemon.json("PATCH", "/api/v1/partitions/0x0010", 200, json={"mtu": None})
    assert cleared["mtu"] is None
    err = await daemon.json("PATCH", "/api/v1/partitions/0x0010", 422, json={"pkey": "0x11"})
    assert err["error"]["field"] == "pkey"
    err = await daemon.json("PATCH", "/api/v1/partitions/0x0010", 422, json={"mtu": 9})
    assert err["error"]["field"] == "mtu"
    assert "b=0x0010, rate=6 : " + f"{G1}=full ;" in await _live(daemon)


async def test_mgroups_are_checked_like_opensm_and_fixed_up(daemon: Daemon) -> None:
    body = {
        "name": "mc",
        "pkey": "0x0a12",
        "ipoib": True,
        "members": [{"guid": G1}],
        "mgroups": [{"mgid": "ff12:401b::1"}, {"mgid": "ff15::abcd", "mtu": 5, "scope": 5}],
    }
    created = await daemon.json("POST", "/api/v1/partitions", 201, json=body)
    assert [g["mgid"] for g in created["mgroups"]] == ["ff12:401b:8a12::1", "ff15::abcd"]
    lines = await _live(daemon)
    assert "mc=0x0a12, ipoib : mgid=ff12:401b:8a12::1,mtu=4,rate=3 ;" in lines
    assert "mc=0x0a12, ipoib : mgid=ff15::abcd,mtu=5,rate=3,scope=5 ;" in lines

    bad = [
        ({"mgid": "fe80::1"}, "mgroups[0].mgid"),
        ({"mgid": "nope"}, "mgroups[0].mgid"),
        ({"mgid": "ff12:401b:8b00::1"}, "mgroups[0].mgid"),
        ({"mgid": "ff12:401b::1", "mtu": 5}, "mgroups[0].rate"),
        ({"mgid": "ff12::1", "colour": 1}, "mgroups[0].colour"),
    ]
    for group, field in bad:
        err = await daemon.json(
            "PATCH", "/api/v1/partitions/0x0a12", 422, json={"mgroups": [group]}
        )
        assert err["error"]["field"] == field, group


async def test_sl_needs_qos(settings: Settings, reloader: CountingReloader) -> None:
    async with running_daemon(settings, reloader) as d:
        err = await d.json("POST", "/api/v1/partitions", 422, json={"name": "a", "sl": 3})
        assert err["error"]["field"] == "sl"
        assert "QoS" in err["error"]["message"]
    async with running_daemon(dataclasses.replace(settings, qos=True), reloader) as d:
        body = {"name": "a", "sl": 3, "members": [{"guid": G1}]}
        created = await d.json("POST", "/api/v1/partitions", 201, json=body)
        assert created["sl"] == 3
        assert f"a=0x0001, sl=3 : {G1}=full ;" in await _live(d)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mtu": 6}, "mtu"),
        ({"rate": 1}, "rate"),
        ({"scope": [0]}, "scope[0]"),
        ({"scope": "x"}, "scope"),
        ({"q_key": -1}, "q_key"),
        ({"tclass": 256}, "tclass"),
        ({"flow_label": 0x100000}, "flow_label"),
        ({"defmember": "owner"}, "defmember"),
        ({"indx0": 1}, "indx0"),
        ({"keywords": [{"keyword": "all"}]}, "keywords[0].keyword"),
        ({"keywords": [{"keyword": "ALL"}, {"keyword": "ALL"}]}, "keywords[1].keyword"),
        ({"members": [{"guid": G1, "index0": "yes"}]}, "members[0].index0"),
    ],
)
async def test_bad_flags_name_the_field(daemon: Daemon, body: dict[str, Any], field: str) -> None:
    before = await _live(daemon)
    err = await daemon.json("POST", "/api/v1/partitions", 422, json={"name": "a", **body})
    assert err["error"]["field"] == field
    assert await _live(daemon) == before


async def test_port_capacity_is_enforced(settings: Settings, reloader: CountingReloader) -> None:
    # Cap 3 per port: the Default (ALL) and two more partitions fit, a third does not.
    small = dataclasses.replace(settings, default_partition_cap=3)
    async with running_daemon(small, reloader) as d:
        for pkey in ("0x10", "0x11"):
            await d.json(
                "POST",
                "/api/v1/partitions",
                201,
                json={"name": f"p{pkey}", "pkey": pkey, "members": [{"guid": G1}, {"guid": G2}]},
            )
        err = await d.json(
            "POST",
            "/api/v1/partitions",
            409,
            json={"name": "p12", "pkey": "0x12", "members": [{"guid": G2}]},
        )
        assert err["error"]["field"] == "members"
        assert f"{G2} (4 > 3)" in err["error"]["message"]
        await d.json("POST", "/api/v1/partitions", 201, json={"name": "p12", "pkey": "0x12"})
        err = await d.json(
            "POST", "/api/v1/partitions/0x0012/members", 409, json={"members": [{"guid": G1}]}
        )
        assert G1 in err["error"]["message"]
        err = await d.json(
            "POST",
            "/api/v1/partitions/0x0012/members",
            409,
            json={"keywords": [{"keyword": "ALL_CAS"}]},
        )
        assert "2 port(s)" in err["error"]["message"]
        # Re-adding an existing member never counts twice.
        await d.json(
            "POST", "/api/v1/partitions/0x0010/members", 200, json={"members": [{"guid": G1}]}
        )
