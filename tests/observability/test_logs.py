"""Log lines: JSON off a TTY, one request id per request, no credentials, snake_case events."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pkeyd import logs
from pkeyd.api.app import create_app
from pkeyd.config import Settings

SECRET = "secret-token"
AUTH = {"Authorization": f"Bearer {SECRET}"}
SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
PKEYD = Path(__file__).resolve().parents[2] / "pkeyd"
log = structlog.get_logger("tests.observability")


class _Reloader:
    async def reload(self) -> None:
        return None


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure("debug", json=True, stream=stream)
    yield stream
    logs.reset()


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def _crash(request: web.Request) -> web.Response:
    """A handler that logs what it must not (a header, a body with a token), then fails."""
    body = await request.json()
    log.info("probe_received", authorization=request.headers["Authorization"], body=body)
    logging.getLogger("some.library").warning("saw %s", request.headers["Authorization"])
    log.warning("probe_failing", headers=dict(request.headers))
    raise RuntimeError(f"cannot serve {request.headers['Authorization']}")


async def _applied(client: TestClient[web.Request, web.Application]) -> None:
    for _ in range(500):
        status = await (await client.get("/api/v1/status")).json()
        if status["applied_generation"] == status["desired_generation"]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never applied: {status}")


async def test_lines_of_a_request_share_its_id_and_carry_no_token(
    captured: io.StringIO, tmp_path: Path
) -> None:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path}/pkeyd.db",
        partitions_conf=tmp_path / "partitions.conf",
        opensm_pid_file=tmp_path / "opensm.pid",
        state_dir=tmp_path / "state",
        fabric_reader="off",
    )
    app = create_app(settings, reloader=_Reloader())
    app.router.add_post("/test/crash", _crash)
    async with TestClient(TestServer(app)) as client:
        await _applied(client)
        body = {"name": "tenant", "pkey": "0x0a12", "members": [{"guid": "0x0002c90300000011"}]}
        created = await client.post("/api/v1/partitions", json=body, headers=AUTH)
        assert created.status == 201
        refused = await client.post(
            "/api/v1/partitions",
            json={**body, "token": SECRET},
            headers={**AUTH, "X-Request-Id": "trace-42"},
        )
        assert refused.status == 422
        await _applied(client)  # the reconciler is idle: what follows is one request's

        before = len(captured.getvalue())
        crashed = await client.post(
            "/test/crash", json={"token": SECRET, "note": "x"}, headers=AUTH
        )
        crash_lines = _lines(captured.getvalue()[before:])
        answer = await crashed.json()

    assert crashed.status == 500
    crash_id = crashed.headers["X-Request-Id"]
    assert crash_id in answer["error"]["message"]
    events = [line["event"] for line in crash_lines]
    assert events == ["probe_received", "saw Bearer [redacted]", "probe_failing",
                      "request_crashed", "http_request"]  # fmt: skip
    assert {line.get("request_id") for line in crash_lines} == {crash_id}
    assert crash_lines[0]["authorization"] == logs.REDACTED
    assert crash_lines[0]["body"] == {"token": logs.REDACTED, "note": "x"}
    assert crash_lines[2]["headers"]["Authorization"] == logs.REDACTED
    assert "Bearer [redacted]" in crash_lines[3]["exception"]  # the traceback, scrubbed
    assert (crash_lines[4]["status"], crash_lines[4]["route"]) == (500, "/test/crash")

    every = _lines(captured.getvalue())
    by_request: dict[str, list[dict[str, Any]]] = {}
    for line in every:
        by_request.setdefault(line.get("request_id", ""), []).append(line)
    served = by_request[created.headers["X-Request-Id"]]
    assert [(x["event"], x["status"]) for x in served] == [("http_request", 201)]
    assert [(x["event"], x["status"]) for x in by_request["trace-42"]] == [("http_request", 422)]
    assert SECRET not in captured.getvalue()
    for line in every:
        assert SNAKE.fullmatch(line["event"]) or line.get("logger"), line
        assert {"level", "timestamp"} <= line.keys()


def test_redaction_by_key_at_any_depth_and_by_shape_in_text() -> None:
    event = {
        "event": "request_seen",
        "Proxy-Authorization": "Basic dXNlcjpwYXNz",
        "headers": {"X-Auth-Token": "t0k", "Accept": "*/*"},
        "items": [{"password": "hunter2"}, "Authorization: Bearer abc.def-ghi"],
        "api_key": "k",
        "client_secret": "s",
        "count": 3,
    }
    out = logs.redact(None, "info", event)
    assert out == {
        "event": "request_seen",
        "Proxy-Authorization": logs.REDACTED,
        "headers": {"X-Auth-Token": logs.REDACTED, "Accept": "*/*"},
        "items": [{"password": logs.REDACTED}, "Authorization: Bearer [redacted]"],
        "api_key": logs.REDACTED,
        "client_secret": logs.REDACTED,
        "count": 3,
    }


def test_console_rendering_is_key_value() -> None:
    stream = io.StringIO()
    logs.configure("info", json=False, stream=stream)
    try:
        log.info("partition_created", pkey="0x0a12", token=SECRET)
        log.debug("not_shown")
    finally:
        logs.reset()
    text = stream.getvalue()
    assert "partition_created" in text
    assert "pkey=0x0a12" in text
    assert f"token={logs.REDACTED}" in text
    assert SECRET not in text
    assert "not_shown" not in text


def test_json_unless_a_tty() -> None:
    stream = io.StringIO()  # not a TTY
    logs.configure("info", stream=stream)
    try:
        log.info("opensm_reloaded", generation=3)
    finally:
        logs.reset()
    [line] = _lines(stream.getvalue())
    assert (line["event"], line["generation"]) == ("opensm_reloaded", 3)


def _log_calls(tree: ast.AST) -> Iterator[ast.Call]:
    levels = {"debug", "info", "warning", "error", "exception", "critical", "log", "msg"}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in levels
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "log"
        ):
            yield node


def test_pkeyd_events_are_snake_case_with_key_value_fields() -> None:
    """House style: `log.info("event_name", key=value)`, never a formatted message."""
    calls = 0
    for path in sorted(PKEYD.rglob("*.py")):
        for call in _log_calls(ast.parse(path.read_text(), str(path))):
            calls += 1
            where = f"{path.relative_to(PKEYD.parent)}:{call.lineno}"
            assert isinstance(call.func, ast.Attribute)
            args = call.args[1:] if call.func.attr == "log" else call.args
            assert len(args) == 1, f"{where}: one event name, the rest as key=value"
            event = args[0]
            assert isinstance(event, ast.Constant), where
            assert isinstance(event.value, str), where
            assert SNAKE.fullmatch(event.value), f"{where}: {event.value!r} is not snake_case"
    assert calls > 20
