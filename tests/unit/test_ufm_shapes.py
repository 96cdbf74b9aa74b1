"""The UFM translation on its own: GUID forms, units, how partitions answer."""

from __future__ import annotations

import pytest

from pkeyd.api.ufm_shapes import Qos, parse_flag, parse_guid, pkey_json, qos_json
from pkeyd.domain import KeywordMember, Member, Membership, Partition, PKey, PortGuid
from pkeyd.errors import BadRequestError, ValidationError
from pkeyd.groups import GroupSettings

GUID = PortGuid(0x0002C903000E0B72)


@pytest.mark.parametrize(
    "raw",
    [
        "0002c903000e0b72",
        "0002C903000E0B72",
        "0x0002c903000e0b72",
        "0X0002C903000E0B72",
        "00000002c903000e0b72",  # 20 digits, zero padded
        "0x00000002c903000e0b72",
        " 0002c903000e0b72 ",
        "a0:00:00:27:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0e:0b:72",  # IPoIB hw address
    ],
)
def test_guid_forms_clients_send(raw: str) -> None:
    assert parse_guid(raw, "guids[0]") == GUID


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("2c903000e0b72", "port GUID"),  # 13 digits: too short to be sure
        ("100000002c903000e0b72", "port GUID"),  # 21 digits
        ("10002c903000e0b72", "64 bits"),  # 17 digits, not zero padded
        ("0002:c903:000e:0b72", "port GUID"),  # not a UFM form
        ("0002c903000e0b7g", "port GUID"),
        ("0000000000000000", "GUID 0"),
        (0x0002C903000E0B72, "string"),
    ],
)
def test_guid_forms_refused_name_the_field(raw: object, why: str) -> None:
    with pytest.raises(ValidationError, match=why) as err:
        parse_guid(raw, "guids[2]")
    assert err.value.field == "guids[2]"


@pytest.mark.parametrize(
    ("query", "expected"),
    [({}, False), ({"f": "true"}, True), ({"f": "True"}, True), ({"f": "1"}, True),
     ({"f": "False"}, False), ({"f": "0"}, False), ({"f": ""}, False)],
)  # fmt: skip
def test_query_flags(query: dict[str, str], expected: bool) -> None:
    assert parse_flag(query, "f") is expected


def test_query_flag_that_is_not_a_boolean() -> None:
    with pytest.raises(BadRequestError) as err:
        parse_flag({"qos_conf": "yes please"}, "qos_conf")
    assert err.value.field == "qos_conf"


def test_qos_units_both_ways() -> None:
    qos = Qos.parse({"mtu_limit": 4, "rate_limit": 2.5, "service_level": 0})
    assert (qos.mtu, qos.rate, qos.sl) == (5, 2, 0)
    assert qos.present == frozenset({"mtu", "rate", "sl"})
    assert Qos.parse({"rate_limit": 600}).rate == 22
    assert Qos.parse({"mtu_limit": 2.0}).mtu == 4
    assert qos_json(GroupSettings(mtu=5, rate=2, sl=7)) == {
        "mtu_limit": 4,
        "service_level": 7,
        "rate_limit": 2.5,
    }
    # Smaller MTUs set through /api/v1 answer in the same unit.
    assert qos_json(GroupSettings(mtu=1))["mtu_limit"] == 0.25
    assert qos_json(GroupSettings(mtu=3))["mtu_limit"] == 1


def test_partition_as_ufm_answers_it() -> None:
    partition = Partition(
        pkey=PKey(0x7FFF),
        name="Default",
        ipoib=True,
        members=(
            Member(GUID, Membership.BOTH),
            Member(PortGuid(0x11), Membership.LIMITED, index0=True),
        ),
        keywords=(
            KeywordMember("ALL", Membership.LIMITED),
            KeywordMember("SELF", Membership.FULL),
        ),
    )
    assert pkey_json(partition, guids_data=False, qos_conf=False) == {
        "partition": "Default",
        "ip_over_ib": True,
    }
    assert pkey_json(partition, guids_data=True, qos_conf=False) == {
        "partition": "Default",
        "ip_over_ib": True,
        # UFM knows full and limited: a 'both' member holds the full PKey.
        "guids": [
            {"guid": "0002c903000e0b72", "membership": "full", "index0": False},
            {"guid": "0000000000000011", "membership": "limited", "index0": True},
        ],
        "membership": "limited",  # what ALL gives every port
        "index0": False,
    }
