"""PKey allocation from several configured ranges, and the settings that name them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pkeyd import configfile
from pkeyd.cli import build_parser, resolve
from pkeyd.config import Settings
from pkeyd.domain import PKeyRange
from tests.helpers import running_daemon
from tests.unit.conftest import CountingReloader


async def test_lowest_free_first_across_ranges(
    settings: Settings, reloader: CountingReloader
) -> None:
    ranges = (PKeyRange(0x800, 0x801), PKeyRange(0x100, 0x101))
    config = dataclasses.replace(settings, pkey_ranges=ranges)
    async with running_daemon(config, reloader) as d:
        got = [
            (await d.json("POST", "/api/v1/partitions", 201, json={"name": f"p{i}"}))["pkey"]
            for i in range(4)
        ]
        assert got == ["0x0100", "0x0101", "0x0800", "0x0801"]
        full = await d.json("POST", "/api/v1/partitions", 409, json={"name": "p9"})
        assert full["error"]["field"] == "pkey"
        assert "0x0100-0x0101, 0x0800-0x0801" in full["error"]["message"]
        await d.json("DELETE", "/api/v1/partitions/0x0101", 204)
        again = await d.json("POST", "/api/v1/partitions", 201, json={"name": "p5"})
        assert again["pkey"] == "0x0101"
        # An explicit PKey outside the ranges is still the client's choice.
        await d.json("POST", "/api/v1/partitions", 201, json={"name": "x", "pkey": "0x0005"})


def test_pkey_range_alone_still_decides() -> None:
    settings = Settings(reload_command=("true",), pkey_range=PKeyRange(0x10, 0x20))
    assert settings.allocation_ranges == (PKeyRange(0x10, 0x20),)
    both = dataclasses.replace(settings, pkey_ranges=(PKeyRange(0x30, 0x40),))
    assert both.allocation_ranges == (PKeyRange(0x30, 0x40),)


def test_overlapping_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        Settings(
            reload_command=("true",), pkey_ranges=(PKeyRange(0x10, 0x20), PKeyRange(0x20, 0x30))
        )


def test_ranges_from_file_env_and_flag(tmp_path: Path) -> None:
    path = tmp_path / "pkeyd.toml"
    path.write_text('pkey_ranges = ["0x0100-0x01ff", "0x0800-0x08ff"]\nreload_command = "true"\n')
    values = configfile.load_file(path)
    assert values["pkey_ranges"] == (PKeyRange(0x100, 0x1FF), PKeyRange(0x800, 0x8FF))
    args = build_parser().parse_args(["serve", "--config", str(path)])
    env = {"PKEYD_PKEY_RANGES": "0x0010-0x001f,0x0020-0x002f"}
    assert resolve(args, env).settings().pkey_ranges == (
        PKeyRange(0x10, 0x1F),
        PKeyRange(0x20, 0x2F),
    )
    args = build_parser().parse_args(
        ["serve", "--config", str(path), "--pkey-ranges", "0x0300-0x03ff"]
    )
    assert resolve(args, env).settings().pkey_ranges == (PKeyRange(0x300, 0x3FF),)
    path.write_text('pkey_ranges = ["0x0100-zz"]\n')
    with pytest.raises(configfile.ConfigError, match="pkey_ranges: must look like"):
        configfile.load_file(path)
    # What `config show` prints reads back as the same value.
    settings = Settings(reload_command=("true",), pkey_ranges=(PKeyRange(0x100, 0x1FF),))
    dumped = configfile.dump(settings, log_level="info", log_format="auto")
    path.write_text(dumped)
    assert configfile.load_file(path)["pkey_ranges"] == (PKeyRange(0x100, 0x1FF),)


def test_new_settings_are_checked() -> None:
    base = Settings(reload_command=("true",))
    with pytest.raises(ValueError, match="max_members_per_request"):
        dataclasses.replace(base, max_members_per_request=0)
    with pytest.raises(ValueError, match="idempotency_ttl_s"):
        dataclasses.replace(base, idempotency_ttl_s=0.0)
    with pytest.raises(ValueError, match="cache_refresh_s"):
        dataclasses.replace(base, cache_refresh_s=-1.0)
