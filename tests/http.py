"""pkeyd's HTTP API as the end-to-end tests drive it: over a real socket, with polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp


class JsonApi:
    """Calls that assert their status; polls that wait for an answer to satisfy a check."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def call(self, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        async with self.http.request(method, path, **kw) as resp:
            body = await resp.json() if resp.content_type == "application/json" else None
            assert resp.status == expect, (method, path, resp.status, body)
            return body

    async def until(
        self, path: str, check: Callable[[Any], bool], within_s: float = 30.0
    ) -> tuple[Any, float]:
        """Poll GET `path` until `check` holds; the answer and the seconds it took."""
        started = time.monotonic()
        while True:
            body = await self.call("GET", path)
            if check(body):
                return body, time.monotonic() - started
            if time.monotonic() - started > within_s:
                raise AssertionError(f"{path} never matched within {within_s} s: {body}")
            await asyncio.sleep(0.1)
