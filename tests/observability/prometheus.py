"""A real Prometheus (Debian's /usr/bin/prometheus) in a temp dir, for tests.

It scrapes the given targets every second and loads the given rule files;
its HTTP API answers queries. Always stopped on exit, and killed by the
kernel if the test runner dies first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import shutil
import signal
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

from pkeyd.sim.daemon import free_port

_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class PrometheusServer:
    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        *,
        job: str = "pkeyd",
        rule_files: tuple[Path, ...] = (),
        interval: str = "1s",
    ) -> None:
        self.workdir = workdir
        self.targets = targets
        self.job = job
        self.rule_files = rule_files
        self.interval = interval
        self.port = free_port()
        self.log_path = workdir / "prometheus.log"
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> str:
        # JSON is YAML: no YAML writer needed.
        return json.dumps(
            {
                "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
                "rule_files": [str(p) for p in self.rule_files],
                "scrape_configs": [
                    {
                        "job_name": self.job,
                        "scrape_timeout": self.interval,
                        "static_configs": [{"targets": self.targets}],
                    }
                ],
            },
            indent=2,
        )

    async def start(self, ready_within_s: float = 20.0) -> None:
        binary = prometheus_binary()
        assert binary is not None, "prometheus is not installed"
        config = self.workdir / "prometheus.yml"
        config.write_text(self._config())
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                cwd=self.workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        self._http = aiohttp.ClientSession(self.url)
        deadline = time.monotonic() + ready_within_s
        while True:
            if self._proc.returncode is not None:
                raise RuntimeError(f"prometheus exited {self._proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with self._http.get("/-/ready") as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready in {ready_within_s} s: {self.log_tail()}")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def api(self, path: str, **params: str) -> Any:
        assert self._http is not None
        async with self._http.get(f"/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at the current time: the series of the resulting vector."""
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def until(self, expr: str, within_s: float = 20.0) -> list[dict[str, Any]]:
        """Poll until the query returns a series."""
        deadline = time.monotonic() + within_s
        while True:
            result = await self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} returned nothing within {within_s} s")
            await asyncio.sleep(0.25)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "<no log>"

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
