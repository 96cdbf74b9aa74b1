"""Partition lists: pagination, filters, bad query values, and one port's partitions."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Daemon

G1 = "0x0002c90300000011"
G2 = "0x0002c90300000012"


async def _seed(daemon: Daemon) -> None:
    for i in range(1, 13):
        body: dict[str, Any] = {
            "name": f"{'gpu' if i % 2 else 'cpu'}_{i}",
            "pkey": f"0x{0x100 + i:04x}",
            "ipoib": i % 3 == 0,
            "members": [{"guid": G1, "membership": "limited" if i == 4 else "full"}]
            if i in (3, 4, 9)
            else [],
        }
        await daemon.json("POST", "/api/v1/partitions", 201, json=body)


async def _all_pages(daemon: Daemon, **params: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = await daemon.json("GET", "/api/v1/partitions", 200, params=query)
        pages.append([p["pkey"] for p in page["partitions"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


async def test_pages_walk_every_partition_once(daemon: Daemon) -> None:
    await _seed(daemon)
    pages = await _all_pages(daemon, limit=5)
    assert [len(p) for p in pages] == [5, 5, 3]
    flat = [k for page in pages for k in page]
    assert flat == [f"0x{0x100 + i:04x}" for i in range(1, 13)] + ["0x7fff"]
    assert await _all_pages(daemon) == [flat]  # default limit 100


async def test_a_partition_created_between_pages_is_not_skipped(daemon: Daemon) -> None:
    await _seed(daemon)
    first = await daemon.json("GET", "/api/v1/partitions", 200, params={"limit": 3})
    await daemon.json("POST", "/api/v1/partitions", 201, json={"name": "late", "pkey": "0x0200"})
    rest = await daemon.json(
        "GET", "/api/v1/partitions", 200, params={"limit": 100, "cursor": first["next_cursor"]}
    )
    assert "0x0200" in [p["pkey"] for p in rest["partitions"]]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"name": "gpu"}, ["0x0101", "0x0103", "0x0105", "0x0107", "0x0109", "0x010b"]),
        ({"name": "cpu_1"}, ["0x010a", "0x010c"]),
        ({"ipoib": "true", "pkey_max": "0x0200"}, ["0x0103", "0x0106", "0x0109", "0x010c"]),
        ({"ipoib": "false", "pkey_min": "0x010a"}, ["0x010a", "0x010b"]),  # Default: IPoIB
        ({"guid": G1}, ["0x0103", "0x0104", "0x0109"]),
        ({"guid": "0002:c903:0000:0011", "name": "gpu"}, ["0x0103", "0x0109"]),
        ({"guid": G2}, []),
        ({"pkey_min": "0x0104", "pkey_max": "0x0106"}, ["0x0104", "0x0105", "0x0106"]),
        ({"name": "gpu%"}, []),  # % matches itself only
    ],
)
async def test_filters(daemon: Daemon, params: dict[str, str], expected: list[str]) -> None:
    await _seed(daemon)
    pages = await _all_pages(daemon, limit=2, **params)
    assert [k for page in pages for k in page] == expected


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"ipoib": "maybe"}, "ipoib"),
        ({"guid": "0x12"}, "guid"),
        ({"pkey_min": "0x8000"}, "pkey_min"),
        ({"pkey_max": "zz"}, "pkey_max"),
        ({"pkey_min": "0x0200", "pkey_max": "0x0100"}, "pkey_min"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_query_values_are_422_naming_the_parameter(
    daemon: Daemon, params: dict[str, str], field: str
) -> None:
    error = await daemon.json("GET", "/api/v1/partitions", 422, params=params)
    assert error["error"]["field"] == field


async def test_a_cursor_is_tied_to_its_filters(daemon: Daemon) -> None:
    await _seed(daemon)
    page = await daemon.json("GET", "/api/v1/partitions", 200, params={"limit": 2, "name": "gpu"})
    error = await daemon.json(
        "GET", "/api/v1/partitions", 422, params={"limit": 2, "cursor": page["next_cursor"]}
    )
    assert error["error"]["field"] == "cursor"


async def test_port_partitions_answers_in_one_call(daemon: Daemon) -> None:
    await _seed(daemon)
    found = await daemon.json("GET", f"/api/v1/ports/{G1}/partitions", 200)
    assert found["guid"] == G1
    by_pkey = {p["pkey"]: p for p in found["partitions"]}
    # The Default lists every port through ALL=limited.
    assert by_pkey["0x7fff"]["via"] == "ALL"
    assert by_pkey["0x7fff"]["membership"] == "limited"
    assert by_pkey["0x0104"] == {
        "pkey": "0x0104",
        "via": "guid",
        "name": "cpu_4",
        "membership": "limited",
        "index0": False,
    }
    assert sorted(by_pkey) == ["0x0103", "0x0104", "0x0109", "0x7fff"]
    other = await daemon.json("GET", f"/api/v1/ports/{G2}/partitions", 200)
    assert [p["pkey"] for p in other["partitions"]] == ["0x7fff"]
    error = await daemon.json("GET", "/api/v1/ports/nonsense/partitions", 422)
    assert error["error"]["field"] == "guid"
