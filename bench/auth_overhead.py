"""What token checks cost a request: the same read without auth, with Bearer, with Basic.

In process (aiohttp's test servers over loopback TCP, requests one after
another) on a SQLite store holding `--tokens` tokens, so the figures are the
API's own cost beside the middleware's. The three kinds of request take turns
(off, Bearer, Basic, off, ...), so that the load of a shared machine falls on
all of them alike. Also times TokenCache.lookup
alone: a hit (the per-request path) and a string that is not a token.

Run: python -m bench.auth_overhead [--requests 2000] [--tokens 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from pkeyd import logs
from pkeyd.admin import open_store
from pkeyd.api.app import create_app
from pkeyd.auth import Role, TokenCache, TokenService
from pkeyd.config import Settings

PATH = "/api/v1/partitions/0x7fff"


async def _time_interleaved(
    off: Settings, on: Settings, variants: dict[str, dict[str, str]], count: int
) -> dict[str, list[float]]:
    """Per variant (label -> headers; "auth off" goes to the app without auth): the times."""
    async with (
        TestClient(TestServer(create_app(off))) as plain,
        TestClient(TestServer(create_app(on))) as guarded,
    ):
        times: dict[str, list[float]] = {label: [] for label in variants}
        for i in range(count + 50):  # the first 50 rounds warm up connections and caches
            for label, headers in variants.items():
                client = plain if label == "auth off" else guarded
                started = time.perf_counter()
                resp = await client.get(PATH, headers=headers)
                await resp.read()
                elapsed = time.perf_counter() - started
                assert resp.status == 200, (label, resp.status)
                if i >= 50:
                    times[label].append(elapsed)
        return times


def _line(label: str, times: list[float], base: float | None) -> str:
    median = statistics.median(times) * 1e6
    p99 = sorted(times)[int(len(times) * 0.99)] * 1e6
    extra = "" if base is None else f"  ({median - base:+.0f} us, x{median / base:.2f})"
    return f"{label:<28} median {median:7.0f} us  p99 {p99:7.0f} us{extra}"


async def run(requests: int, tokens: int) -> None:
    with tempfile.TemporaryDirectory(prefix="pkeyd-bench-auth-") as tmp:
        base = Settings(
            db_url=f"sqlite+aiosqlite:///{Path(tmp) / 'pkeyd.db'}",
            partitions_conf=Path(tmp) / "partitions.conf",
            reload_command=("true",),
            state_dir=Path(tmp) / "state",
            fabric_reader="off",
        )
        async with open_store(base.db_url) as sessions:
            service = TokenService(sessions)
            for i in range(tokens - 1):
                await service.create(f"filler-{i}", Role.READER)
            _, secret = await service.create("bench", Role.READER)
            cache = TokenCache(service, refresh_s=5.0)
            await cache.refresh()
            hits = []
            for _ in range(20_000):
                started = time.perf_counter()
                await cache.lookup(secret)
                hits.append(time.perf_counter() - started)
            junk = []
            for _ in range(20_000):
                started = time.perf_counter()
                await cache.lookup("not-a-token")
                junk.append(time.perf_counter() - started)
        on = dataclasses.replace(
            base,
            auth=True,
            partitions_conf=Path(tmp) / "on.conf",
            state_dir=Path(tmp) / "state-on",
        )
        basic = base64.b64encode(f"bench:{secret}".encode()).decode()
        variants = {
            "auth off": {},
            "auth on, Bearer": {"Authorization": f"Bearer {secret}"},
            "auth on, Basic": {"Authorization": f"Basic {basic}"},
        }
        times = await _time_interleaved(base, on, variants, requests)
    off = statistics.median(times["auth off"]) * 1e6
    print(f"GET {PATH}, {requests} requests of each kind, {tokens} tokens in the store")
    for label, measured in times.items():
        print(_line(label, measured, None if label == "auth off" else off))
    print(
        f"TokenCache.lookup: hit median {statistics.median(hits) * 1e6:.1f} us, "
        f"not a token median {statistics.median(junk) * 1e6:.1f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=1000)
    args = parser.parse_args()
    logs.configure("warning", json=False)
    asyncio.run(run(args.requests, args.tokens))


if __name__ == "__main__":
    main()
