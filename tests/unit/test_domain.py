from __future__ import annotations

import pytest

from pkeyd.domain import Membership, PKey, PKeyRange, PortGuid, validate_name
from pkeyd.errors import ValidationError


@pytest.mark.parametrize(
    "raw",
    ["0x0002c90300a1b2c3", "0002c90300a1b2c3", "0002:c903:00a1:b2c3", "0x0002C90300A1B2C3"],
)
def test_guid_forms_are_one_canonical_guid(raw: str) -> None:
    assert str(PortGuid.parse(raw)) == "0x0002c90300a1b2c3"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "0x",
        "2c90300a1b2c3",
        "0x0002c90300a1b2c3ff",
        "0002:c903:00a1",
        "zz02c90300a1b2c3",
        "0x0000000000000000",
        12345,
        None,
    ],
)
def test_bad_guids_are_rejected_naming_the_field(raw: object) -> None:
    with pytest.raises(ValidationError) as err:
        PortGuid.parse(raw, "members[0].guid")
    assert err.value.field == "members[0].guid"


def test_pkey_accepts_hex_and_int_and_prints_four_digits() -> None:
    assert str(PKey.user("0x0a12")) == "0x0a12"
    assert str(PKey.user("0xA12")) == "0x0a12"
    assert PKey.user(0x7FFE).value == 0x7FFE


@pytest.mark.parametrize("raw", ["0x0000", "0x8000", "0x8a12", "0x18001", 0, -1, True, "12", 1.5])
def test_pkeys_outside_the_user_range_are_rejected(raw: object) -> None:
    with pytest.raises(ValidationError) as err:
        PKey.user(raw)
    assert err.value.field == "pkey"


def test_default_pkey_is_not_creatable_but_parseable() -> None:
    assert PKey.parse("0x7fff").is_default
    with pytest.raises(ValidationError, match="Default"):
        PKey.user("0x7fff")


@pytest.mark.parametrize("name", ["a", "tenant-1", "x" * 31, "storage_a.b", "a b"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 32,
        " lead",
        "trail ",
        "a=b",
        "a,b",
        "a:b",
        "a;b",
        "a#b",
        "1abc",
        "tab\tin",
        "new\nline",
        "Default",
        "caf\u00e9",
        7,
    ],
)
def test_names_opensm_would_misread_are_rejected(name: object) -> None:
    with pytest.raises(ValidationError) as err:
        validate_name(name)
    assert err.value.field == "name"


def test_membership_values() -> None:
    assert Membership.parse("limited") is Membership.LIMITED
    with pytest.raises(ValidationError):
        Membership.parse("FULL")


def test_pkey_range_parse_and_bounds() -> None:
    assert str(PKeyRange.parse("0x100-0x1ff")) == "0x0100-0x01ff"
    with pytest.raises(ValueError, match="within"):
        PKeyRange.parse("0x0-0x10")
    with pytest.raises(ValueError, match="look like"):
        PKeyRange.parse("0x100")
