"""`pkeyd token create|list|revoke`: the round trip, the last-line contract, exit codes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import structlog

from pkeyd import cli
from pkeyd.admin import open_store
from pkeyd.auth import Identity, Role, TokenCache, TokenService, looks_like_token


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No PKEYD_* from the caller; cli.main configures logging: put it back afterwards."""
    for name in [n for n in os.environ if n.startswith("PKEYD_")]:
        monkeypatch.delenv(name)
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse errors
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_create_list_revoke_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "pkeyd.db"
    url = f"sqlite+aiosqlite:///{db}"
    code, out, _ = run("token", "create", "--db", url, "--role", "operator", "--name", "ci")
    assert code == 0
    token = out.splitlines()[-1]
    assert looks_like_token(token)
    assert out.endswith(token + "\n")
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT name, role, token_hash, prefix FROM api_tokens").fetchall()
    assert stored == [("ci", "operator", hashlib.sha256(token.encode()).hexdigest(), token[:12])]

    code, out, _ = run("token", "list", "--db", url)
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["NAME", "ROLE", "PREFIX", "CREATED", "REVOKED"]
    assert row.split()[:3] == ["ci", "operator", token[:12] + "..."]
    assert row.split()[4] == "-"
    assert token not in out

    code, out, _ = run("token", "revoke", "--db", url, "ci")
    assert code == 0
    assert "revoked" in out
    code, out, _ = run("token", "list", "--db", url, "--json")
    assert code == 0
    (listed,) = json.loads(out)
    assert listed["name"] == "ci"
    assert listed["role"] == "operator"
    assert listed["revoked_at"] is not None


def test_a_token_from_the_cli_is_what_the_api_accepts(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/pkeyd.db"
    code, out, _ = run("token", "create", "--db", url, "--role", "admin", "--name", "ops")
    assert code == 0

    async def lookup(secret: str) -> Identity | None:
        async with open_store(url) as sessions:
            cache = TokenCache(TokenService(sessions), refresh_s=5.0)
            await cache.refresh()
            return await cache.lookup(secret)

    assert asyncio.run(lookup(out.splitlines()[-1])) == Identity("ops", Role.ADMIN)


def test_db_comes_from_the_config_file_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "pkeyd.toml"
    config.write_text(f'db_url = "sqlite+aiosqlite:///{tmp_path}/file.db"\n')
    code, _, _ = run("token", "create", "--config", str(config), "--role", "reader", "--name", "a")
    assert code == 0
    assert (tmp_path / "file.db").exists()
    monkeypatch.setenv("PKEYD_DB", f"sqlite+aiosqlite:///{tmp_path}/env.db")
    code, _, _ = run("token", "create", "--role", "reader", "--name", "b")
    assert code == 0
    assert (tmp_path / "env.db").exists()


def test_refusals_exit_2_with_a_message(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/pkeyd.db"
    assert run("token", "create", "--db", url, "--role", "reader", "--name", "ci")[0] == 0
    code, out, err = run("token", "create", "--db", url, "--role", "reader", "--name", "ci")
    assert (code, out) == (2, "")
    assert err.strip() == "pkeyd: a token named 'ci' exists already"
    code, _, err = run("token", "revoke", "--db", url, "nobody")
    assert code == 2
    assert err.strip() == "pkeyd: no token named 'nobody'"
    code, _, err = run("token", "create", "--db", url, "--role", "reader", "--name", "a b")
    assert code == 2
    assert "token name" in err
    code, _, err = run("token", "create", "--db", url, "--role", "root", "--name", "x")
    assert code == 2
    assert "invalid choice: 'root'" in err
