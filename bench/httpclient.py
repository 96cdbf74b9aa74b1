"""A lean HTTP/1.1 keep-alive client for the benchmarks.

The load generator shares the machine's cores with the daemon it measures,
so every microsecond it spends is taken from the daemon. aiohttp's client
costs about 0.25 ms of CPU per request here; this one, a bare protocol that
sends prepared bytes and reads Content-Length bodies, costs about a fifth of
that. It speaks only what the benchmarks need: one request at a time per
connection, no chunked answers, no redirects.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._status = 0
        self._length: int | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(cls, host, port)
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc or ConnectionError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None:
            return
        if self._length is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            self._status = int(lines[0].split(" ", 2)[1])
            self._length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    self._length = int(value)
            del self._buffer[: end + 4]
        if len(self._buffer) >= self._length:
            body = bytes(self._buffer[: self._length])
            del self._buffer[: self._length]
            waiter, self._waiter, self._length = self._waiter, None, None
            waiter.set_result((self._status, body))

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send one prepared request; its status and body."""
        assert self._transport is not None, "not connected"
        assert self._waiter is None, "one request at a time"
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def request(
    method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> bytes:
    """The bytes of one request (JSON body if any)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: pkeyd"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    data = b""
    if body is not None:
        data = json.dumps(body).encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data
