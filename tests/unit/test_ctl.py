"""pkeyctl against a real in-process pkeyd: commands, output, address and token, exit codes."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from pkeyd.admin import open_store
from pkeyd.auth import Role, TokenService
from pkeyd.config import Settings
from pkeyd.ctl.main import main
from tests.fakesubnet import A, FakeSubnet
from tests.helpers import Daemon, running_daemon
from tests.unit.conftest import CountingReloader

G1 = "0x0002c90300000011"
G2 = "0x0002c90300000012"


@dataclasses.dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def pkeyctl(url: str, *argv: str, environ: Mapping[str, str] | None = None) -> Run:
    """pkeyctl in a thread (it blocks on its HTTP call) while the app answers in this loop."""
    out, err = io.StringIO(), io.StringIO()
    env = dict(environ or {})
    env.setdefault("HOME", "/nonexistent")
    argv_all = ["--url", url, *argv] if url else list(argv)
    code = await asyncio.to_thread(main, argv_all, environ=env, out=out, err=err)
    return Run(code, out.getvalue(), err.getvalue())


def url_of(client: TestClient[web.Request, web.Application]) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_partition_round_trip(daemon: Daemon) -> None:
    url = url_of(daemon.client)
    made = await pkeyctl(
        url, "create", "tenant-a", "--pkey", "0x0a12", "--ipoib",
        "--member", G1, "--member", f"{G2}=limited", "--member", "ALL_SWITCHES=limited",
    )  # fmt: skip
    assert made.code == 0, made.err
    assert made.out.startswith("created partition 0x0a12\n")
    assert f"{G2}  limited" in made.out

    listed = await pkeyctl(url, "list")
    assert listed.out.splitlines()[0].split() == ["PKEY", "NAME", "IPOIB", "MEMBERS", "KEYWORDS"]
    assert listed.out.splitlines()[1].split() == [
        "0x0a12", "tenant-a", "yes", "2", "ALL_SWITCHES=limited",
    ]  # fmt: skip

    added = await pkeyctl(url, "add-members", "0x0a12", "0002:c903:0000:0013=full", f"{G1}=limited")
    assert added.code == 0, added.err
    shown = await pkeyctl(url, "show", "0x0a12", "--json")
    members = {m["guid"]: m["membership"] for m in shown.json()["members"]}
    assert members == {G1: "limited", G2: "limited", "0x0002c90300000013": "full"}
    human = await pkeyctl(url, "show", "0x0a12")
    assert "name:" in human.out
    assert "GUID                MEMBERSHIP  INDEX0" in human.out

    removed = await pkeyctl(url, "remove-members", "0x0a12", G1, "ALL_SWITCHES")
    assert removed.code == 0, removed.err
    after = await daemon.json("GET", "/api/v1/partitions/0x0a12", 200)
    assert [m["guid"] for m in after["members"]] == [G2, "0x0002c90300000013"]
    assert after["keywords"] == []

    deleted = await pkeyctl(url, "delete", "0x0a12")
    assert (deleted.code, deleted.out) == (0, "deleted partition 0x0a12\n")
    await daemon.json("GET", "/api/v1/partitions/0x0a12", 404)


async def test_refusals_print_the_api_error_and_exit_1(daemon: Daemon) -> None:
    url = url_of(daemon.client)
    missing = await pkeyctl(url, "show", "0x0b00")
    assert missing.code == 1
    assert missing.err == "pkeyctl: 404 not_found: no partition 0x0b00 (field pkey)\n"
    bad = await pkeyctl(url, "create", "x", "--member", "0x12=full")
    assert bad.code == 1
    assert "(field members[0].guid)" in bad.err
    await pkeyctl(url, "create", "t", "--pkey", "0x0b00", "--member", G1)
    partial = await pkeyctl(url, "remove-members", "0x0b00", G1, G2)
    assert partial.code == 1
    assert f"already removed: {G1}" in partial.err


async def test_status_human_and_json(daemon: Daemon) -> None:
    url = url_of(daemon.client)
    human = await pkeyctl(url, "status")
    assert human.code == 0
    assert "desired_generation:" in human.out
    assert "reloads:\n  ok:" in human.out
    as_json = await pkeyctl(url, "--json", "status")
    assert as_json.json()["desired_generation"] == 0


async def test_drift_and_ports_from_the_verifier(settings: Settings) -> None:
    subnet = FakeSubnet(settings.partitions_conf)
    fast = dataclasses.replace(settings, verify_interval_s=0.05, verify_settle_s=0.2)

    async def open_subnet() -> FakeSubnet:
        return subnet

    async with running_daemon(fast, subnet, open_reader=open_subnet) as d:
        body = {"name": "t", "pkey": "0x0a12", "members": [{"guid": f"0x{A:016x}"}]}
        await d.json("POST", "/api/v1/partitions", 201, json=body)
        for _ in range(500):
            status = await d.json("GET", "/api/v1/status", 200)
            if status["verified_generation"] == 1:
                break
            await asyncio.sleep(0.02)
        url = url_of(d.client)
        assert (await pkeyctl(url, "drift")).out == "no drift\n"
        port = await pkeyctl(url, "ports", f"0x{A:016x}")
        assert port.code == 0, port.err
        assert "0x0a12  full      full" in port.out
        assert "0x7fff  limited   limited" in port.out
        assert (await pkeyctl(url, "ports", f"0x{A:016x}", "--json")).json()["port"]["lid"]


async def test_drift_without_verification_is_a_clear_refusal(daemon: Daemon) -> None:
    run = await pkeyctl(url_of(daemon.client), "drift")
    assert run.code == 1
    assert "503" in run.err
    assert "fabric_reader = off" in run.err


async def test_revisions_and_restore(daemon: Daemon) -> None:
    url = url_of(daemon.client)
    await daemon.json("POST", "/api/v1/partitions", 201, json={"name": "t1", "pkey": "0x0a01"})
    first = (await daemon.json("GET", "/api/v1/status", 200))["desired_generation"]
    await daemon.json("POST", "/api/v1/partitions", 201, json={"name": "t2", "pkey": "0x0a02"})

    listed = await pkeyctl(url, "revisions")
    assert listed.code == 0
    lines = listed.out.splitlines()
    assert lines[0].split() == ["ID", "AT", "ACTOR", "ACTION", "PKEYS"]
    newest = lines[1].split()
    assert newest[2] == "anonymous"
    assert newest[-1] == "0x0a02"
    only = await pkeyctl(url, "revisions", "--pkey", "0x0a01")
    assert [line.split()[-1] for line in only.out.splitlines()[1:]] == ["0x0a01"]

    one = await pkeyctl(url, "revisions", str(first))
    assert one.code == 0
    assert "actor:" in one.out
    assert "+# t1=0x0a01 : no members yet" in one.out  # the partitions.conf line it added
    as_json = await pkeyctl(url, "--json", "revisions", str(first))
    assert json.loads(as_json.out)["generation"] == first
    assert json.loads(as_json.out)["at"].endswith("+00:00")  # aware, UTC, on SQLite too

    done = await pkeyctl(url, "restore", str(first))
    assert done.code == 0, done.err
    assert done.out.startswith(f"restored revision {first} as generation ")
    listing = await daemon.json("GET", "/api/v1/partitions", 200)
    names = [p["name"] for p in listing["partitions"]]
    assert "t1" in names
    assert "t2" not in names
    again = await pkeyctl(url, "restore", str(first))
    assert again.out == f"the desired state already is as of revision {first}\n"


async def test_a_revision_that_does_not_exist_is_a_clear_refusal(daemon: Daemon) -> None:
    run = await pkeyctl(url_of(daemon.client), "revisions", "999")
    assert run.code == 1
    assert run.err.startswith("pkeyctl: 404 not_found")


@pytest.fixture
async def guarded(
    settings: Settings, reloader: CountingReloader
) -> AsyncIterator[tuple[Daemon, str]]:
    with_auth = dataclasses.replace(settings, auth=True)
    async with open_store(with_auth.db_url) as sessions:
        _, token = await TokenService(sessions).create("ops", Role.OPERATOR)
    async with running_daemon(with_auth, reloader) as d:
        yield d, token


async def test_token_from_flag_env_file_and_config(
    guarded: tuple[Daemon, str], tmp_path: Path
) -> None:
    daemon, token = guarded
    url = url_of(daemon.client)
    refused = await pkeyctl(url, "list")
    assert refused.code == 1
    assert refused.err.startswith("pkeyctl: 401 unauthorized")
    assert (await pkeyctl(url, "list", environ={"PKEYCTL_TOKEN": token})).code == 0
    # A flag beats the environment.
    wrong = {"PKEYCTL_TOKEN": "pkeyd_wrong"}
    assert (await pkeyctl(url, "--token", token, "list", environ=wrong)).code == 0
    assert (await pkeyctl(url, "list", environ=wrong)).code == 1
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    assert (await pkeyctl(url, "--token-file", str(token_file), "list")).code == 0
    # The config file gives both the address and the token.
    config = tmp_path / "config.toml"
    config.write_text(f'url = "{url}"\ntoken = "{token}"\n')
    config.chmod(0o600)
    from_file = await pkeyctl("", "--config", str(config), "list")
    assert (from_file.code, from_file.err) == (0, "")
    home = tmp_path / "home"
    (home / ".config" / "pkeyctl").mkdir(parents=True)
    (home / ".config" / "pkeyctl" / "config.toml").write_text(
        f'url = "{url}"\ntoken_file = "{token_file}"\n'
    )
    assert (await pkeyctl("", "list", environ={"HOME": str(home)})).code == 0
    assert (await pkeyctl("", "list", environ={"PKEYCTL_URL": url, "HOME": str(home)})).code == 0


async def test_config_problems_exit_2_and_a_readable_token_file_warns(
    guarded: tuple[Daemon, str], tmp_path: Path
) -> None:
    daemon, token = guarded
    url = url_of(daemon.client)
    config = tmp_path / "config.toml"
    config.write_text('adress = "http://x"\n')
    typo = await pkeyctl(url, "--config", str(config), "list")
    assert typo.code == 2
    assert "unknown key 'adress'" in typo.err
    assert (await pkeyctl("ftp://x", "list")).code == 2
    config.write_text(f'token = "{token}"\n')
    config.chmod(0o644)
    warned = await pkeyctl(url, "--config", str(config), "list")
    assert warned.code == 0
    assert "others may read it (chmod 600)" in warned.err


async def test_unreachable_exits_3() -> None:
    run = await pkeyctl("http://127.0.0.1:9", "list")
    assert run.code == 3
    assert run.err.startswith("pkeyctl: cannot reach pkeyd at http://127.0.0.1:9")


async def test_tokens_over_the_api_need_admin(
    settings: Settings, reloader: CountingReloader
) -> None:
    with_auth = dataclasses.replace(settings, auth=True)
    async with open_store(with_auth.db_url) as sessions:
        _, admin = await TokenService(sessions).create("root", Role.ADMIN)
        _, operator = await TokenService(sessions).create("ops", Role.OPERATOR)
    async with running_daemon(with_auth, reloader) as d:
        url = url_of(d.client)
        made = await pkeyctl(url, "--token", admin, "tokens", "create", "ci", "--role", "reader")
        assert made.code == 0, made.err
        secret = made.out.splitlines()[-1]
        assert secret.startswith("pkeyd_")
        assert (await pkeyctl(url, "--token", secret, "list")).code == 0
        listed = await pkeyctl(url, "--token", admin, "tokens", "list")
        assert [line.split()[:2] for line in listed.out.splitlines()] == [
            ["NAME", "ROLE"], ["ci", "reader"], ["ops", "operator"], ["root", "admin"],
        ]  # fmt: skip
        denied = await pkeyctl(url, "--token", operator, "tokens", "list")
        assert denied.code == 1
        assert denied.err.startswith("pkeyctl: 403 forbidden: this call needs role admin")
        assert (await pkeyctl(url, "--token", admin, "tokens", "revoke", "ci")).code == 0
        assert (await pkeyctl(url, "--token", secret, "list")).code == 1
        assert (await pkeyctl(url, "--token", admin, "tokens", "create", "x")).code == 2
