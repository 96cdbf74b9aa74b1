"""Run ibsim and OpenSM as a disposable fabric for tests and benchmarks.

Everything a run needs (netfile, opensm.conf, logs, OpenSM cache) lives in one
work directory, and the simulator listens on abstract unix sockets named after
a random IBSIM_SOCKNAME, so any number of fabrics can run side by side.

Process hygiene is the point of this module: both daemons run in their own
session (so a signal reaches the whole group) and get PR_SET_PDEATHSIG, so even
a SIGKILLed test runner cannot leave a simulator behind. ibsim must keep its
stdin open: it select()s on the console and spins at 100 % CPU on EOF, so the
pipe is only closed after ibsim is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from pkeyd.sim.topology import Topology

UMAD2SIM_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/umad2sim/libumad2sim.so",
    "/usr/lib/aarch64-linux-gnu/umad2sim/libumad2sim.so",
    "/usr/lib/umad2sim/libumad2sim.so",
    "/usr/local/lib/umad2sim/libumad2sim.so",
)
IBSIM_READY = "Network simulator ready."
SUBNET_UP = "SUBNET UP"
PARSE_ERROR_MARKERS = ("PARSE ERROR", "retrying with default config")
# ibsim's compiled-in table sizes (Debian 0.10); raised with -N/-S/-P if needed.
IBSIM_DEFAULT_NODES, IBSIM_DEFAULT_SWITCHES, IBSIM_DEFAULT_PORTS = 2048, 256, 13312
# umad2sim prints this when all of ibsim's 10 client slots are taken.
SIM_CONNECT_FAILED = "connect failed"
# How long a cancelled or overdue tool may still run before it is killed.
TOOL_GRACE = 10.0
_PR_SET_PDEATHSIG = 1
# Resolved once in the parent: the child between fork and exec must not do
# anything as heavy as ctypes.util.find_library (which spawns processes).
_LIBC = ctypes.CDLL(None, use_errno=True)


class SimError(RuntimeError):
    """The simulated fabric failed to start or a diagnostic tool failed."""


def find_umad2sim() -> Path | None:
    """Path of libumad2sim.so, the LD_PRELOAD shim that routes umad to ibsim."""
    for candidate in UMAD2SIM_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL the
    # child when the forking thread dies, so a crashed runner leaks nothing.
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _make_scratch_dir() -> Path | None:
    # libumad2sim builds a fake sysfs tree under "./sys-<pid>" of every process
    # it is loaded into, and removes it at exit. On ext4 that costs ~40 ms per
    # smpquery, on tmpfs ~5 ms, so tools and OpenSM run from a tmpfs directory.
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        return None
    # A SIGKILLed runner cannot clean up; its directory names its pid.
    for old in shm.glob("pkeyd-sim-*-*"):
        pid = old.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"pkeyd-sim-{os.getpid()}-", dir=shm))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(_read(path).splitlines()[-lines:]) or f"<{path} is empty or missing>"


def sim_processes(sockname: str) -> list[int]:
    """PIDs of live processes whose environment carries IBSIM_SOCKNAME=sockname."""
    needle = f"IBSIM_SOCKNAME={sockname}".encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile or not ours to read
        # zombies keep their environ until reaped but are already dead
        if needle in environ.split(b"\0") and stat.rsplit(")", 1)[-1].split()[0] != "Z":
            found.append(int(entry.name))
    return found


class SimFabric:
    """An ibsim fabric with OpenSM as master, as an async context manager."""

    def __init__(
        self,
        topology: Topology,
        workdir: Path,
        *,
        partitions_conf: Path | None = None,
        opensm_conf_extra: Mapping[str, str] | None = None,
        ready_timeout: float = 60.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self._topology = topology
        self._workdir = workdir
        self._partitions_conf = (
            workdir / "partitions.conf" if partitions_conf is None else partitions_conf
        )
        self._conf_extra = dict(opensm_conf_extra or {})
        for key, value in self._conf_extra.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", key) or "\n" in value:
                raise ValueError(f"bad opensm.conf entry {key!r}: {value!r}")
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        # Short (sun_path is 108 bytes incl. ibsim's ":out9" suffixes) and unique
        # per instance, so fabrics sharing a machine never see each other.
        self._sockname = f"/pkeyd-sim-{uuid.uuid4().hex[:16]}"
        self._ibsim: asyncio.subprocess.Process | None = None
        self._opensm: asyncio.subprocess.Process | None = None
        self._lids: dict[int, int] | None = None
        self._scratch: Path | None = None

    # -- properties -------------------------------------------------------

    @property
    def topology(self) -> Topology:
        return self._topology

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def partitions_conf(self) -> Path:
        return self._partitions_conf

    @property
    def opensm_log(self) -> Path:
        return self._workdir / "opensm.log"

    @property
    def ibsim_log(self) -> Path:
        return self._workdir / "ibsim.log"

    @property
    def pid_file(self) -> Path:
        return self._workdir / "opensm.pid"

    @property
    def sockname(self) -> str:
        return self._sockname

    @property
    def opensm_pid(self) -> int | None:
        proc = self._opensm
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def tool_cwd(self) -> Path:
        """Where to run libumad2sim clients: a tmpfs dir makes each start ~8x faster."""
        return self._scratch or self._workdir

    @property
    def env(self) -> dict[str, str]:
        """Variables a libibumad tool needs to talk to this fabric (from the SM node)."""
        umad2sim = find_umad2sim()
        if umad2sim is None:
            raise SimError("libumad2sim.so not found; install ibsim-utils")
        return {
            "LD_PRELOAD": str(umad2sim),
            "IBSIM_SOCKNAME": self._sockname,
            "SIM_HOST": self._topology.sm_node,
        }

    # -- lifecycle --------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start ibsim, then OpenSM; return once OpenSM reports SUBNET UP."""
        if self._ibsim is not None:
            raise SimError("fabric already started")
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._scratch = _make_scratch_dir()
        try:
            await self._start_ibsim()
            await self._start_opensm()
        except BaseException:
            await self.stop()  # never leave half a fabric behind
            raise

    async def stop(self) -> None:
        """Stop OpenSM, then ibsim (OpenSM may ignore SIGTERM without ibsim)."""
        opensm, self._opensm = self._opensm, None
        ibsim, self._ibsim = self._ibsim, None
        self._lids = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        if opensm is not None:
            await self._terminate(opensm)
        if ibsim is not None:
            await self._terminate(ibsim)
            if ibsim.stdin is not None:
                ibsim.stdin.close()
        # Safety net for diagnostic tools abandoned mid-run (e.g. a cancelled
        # read): they carry our unique socket name, nobody else does.
        for pid in sim_processes(self._sockname):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    async def stop_opensm(self) -> None:
        """Stop OpenSM alone (an SM outage); ibsim and the PKey tables stay."""
        opensm, self._opensm = self._opensm, None
        if opensm is None:
            raise SimError("OpenSM is not running")
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()  # as an init system would: no pid file, no OpenSM
        await self._terminate(opensm)

    async def start_opensm(self) -> None:
        """Start OpenSM again after stop_opensm(); return once it reports SUBNET UP.

        The log of the run before is kept as opensm.log.1 (start truncates the log).
        """
        if self._ibsim is None:
            raise SimError("fabric not started")
        if self._opensm is not None:
            raise SimError("OpenSM is already running")
        if self.opensm_log.exists():
            self.opensm_log.replace(self.opensm_log.with_name(self.opensm_log.name + ".1"))
        await self._start_opensm()

    async def sighup(self) -> None:
        """Make OpenSM re-read partitions.conf and reprogram PKey tables."""
        pid = self.opensm_pid
        if pid is None:
            raise SimError("OpenSM is not running")
        os.kill(pid, signal.SIGHUP)

    async def ibsim_command(self, cmd: str) -> None:
        """Send one console command (e.g. ``Unlink "hca-0003"``); output goes to ibsim.log."""
        if "\n" in cmd or "\r" in cmd:
            raise ValueError("one command per call, without line breaks")
        proc = self._ibsim
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise SimError("ibsim is not running")
        proc.stdin.write(cmd.encode() + b"\n")
        await proc.stdin.drain()

    def parse_errors(self) -> list[str]:
        """OpenSM log lines showing partitions.conf was rejected (should be empty)."""
        try:
            text = self.opensm_log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [ln for ln in text.splitlines() if any(m in ln for m in PARSE_ERROR_MARKERS)]

    # -- diagnostics ------------------------------------------------------

    async def run_tool(self, *argv: str, time_limit: float = 30.0, retries: int = 50) -> str:
        """Run an infiniband-diags tool against this fabric and return its stdout.

        ibsim has only 10 client slots (OpenSM holds one); a tool that finds
        them all busy fails at once with "connect failed", so that is retried.
        """
        env = {**os.environ, **self.env}
        for attempt in range(retries + 1):
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=self.tool_cwd,
                # no preexec_fn: it forces fork() instead of vfork(), which is
                # slower per call; stop() sweeps up any tool left running.
            )
            # Keep draining output even when our caller gives up: a tool that is
            # killed can take ibsim down with it (if it dies between announcing
            # itself and ibsim connecting back, ibsim panics) and never frees
            # its client slot. Tools time out on their own MAD timeouts anyway.
            talk = asyncio.ensure_future(proc.communicate())
            try:
                out, err = await asyncio.wait_for(asyncio.shield(talk), time_limit)
            except BaseException:
                try:
                    await asyncio.wait_for(asyncio.shield(talk), TOOL_GRACE)
                except BaseException:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                raise
            if proc.returncode == 0:
                return out.decode(errors="replace")
            stderr = err.decode(errors="replace")
            if SIM_CONNECT_FAILED not in stderr or attempt == retries:
                raise SimError(
                    f"{' '.join(argv)} exited {proc.returncode}: {stderr.strip()[-2000:]}"
                )
            await asyncio.sleep(min(0.01 * (attempt + 1), 0.2))
        raise AssertionError("unreachable")

    async def port_lids(self, *, refresh: bool = False) -> dict[int, int]:
        """Port GUID -> LID for every CA port, from one ``ibnetdiscover -p`` (cached)."""
        if self._lids is None or refresh:
            report = await self.run_tool("ibnetdiscover", "-p", time_limit=120.0)
            lids: dict[int, int] = {}
            # "CA    12  1 0x0002c90300000701 4x SDR - SW ..." : type lid port guid
            for m in re.finditer(r"^CA\s+(\d+)\s+\d+\s+0x([0-9a-fA-F]+)", report, re.M):
                lids[int(m.group(2), 16)] = int(m.group(1))
            self._lids = lids
        return dict(self._lids)

    # -- internals --------------------------------------------------------

    async def _spawn(
        self, argv: list[str], log: Path, env: dict[str, str], *, stdin_pipe: bool = False
    ) -> asyncio.subprocess.Process:
        with log.open("wb") as out:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin_pipe else asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=self.tool_cwd,
                start_new_session=True,  # own process group: killpg reaches all of it
                preexec_fn=_die_with_parent,
            )

    async def _start_ibsim(self) -> None:
        netfile = self._workdir / "fabric.net"
        netfile.write_text(self._topology.render_netfile())
        nodes = self._topology.nodes
        switches = self._topology.switches()
        ports = sum(n.ports + (n.kind == "switch") for n in nodes)
        argv = [
            "ibsim",
            "-s",
            *("-N", str(max(IBSIM_DEFAULT_NODES, len(nodes)))),
            *("-S", str(max(IBSIM_DEFAULT_SWITCHES, len(switches)))),
            *("-P", str(max(IBSIM_DEFAULT_PORTS, ports))),
            str(netfile),
        ]
        env = {**os.environ, "IBSIM_SOCKNAME": self._sockname}
        self._ibsim = await self._spawn(argv, self.ibsim_log, env, stdin_pipe=True)
        await self._wait_for_line(self._ibsim, self.ibsim_log, IBSIM_READY, 10.0, "ibsim")

    async def _start_opensm(self) -> None:
        osm_dir = self._workdir / "opensm"
        osm_dir.mkdir(exist_ok=True)
        conf = self._workdir / "opensm.conf"
        conf.write_text(self._render_opensm_conf(osm_dir))
        # A stale log from an earlier run would satisfy the SUBNET UP wait.
        with contextlib.suppress(FileNotFoundError):
            self.opensm_log.unlink()
        argv = [
            "opensm",
            *("-F", str(conf)),
            *("-P", str(self._partitions_conf)),
            *("-f", str(self.opensm_log)),
            *("-s", "0"),
        ]
        env = {
            **os.environ,
            **self.env,
            "OSM_TMP_DIR": str(osm_dir),
            "OSM_CACHE_DIR": str(osm_dir),
        }
        self._opensm = await self._spawn(argv, self._workdir / "opensm.out", env)
        await self._wait_for_line(
            self._opensm, self.opensm_log, SUBNET_UP, self._ready_timeout, "OpenSM"
        )
        self.pid_file.write_text(f"{self._opensm.pid}\n")

    def _render_opensm_conf(self, osm_dir: Path) -> str:
        # Point every file OpenSM might read or write into the work directory so
        # nothing from /etc/opensm or /var/log leaks into (or out of) a test.
        settings = {
            "guid": f"0x{self._topology.sm_port_guid:016x}",
            "partition_config_file": str(self._partitions_conf),
            "log_file": str(self.opensm_log),
            "accum_log_file": "FALSE",
            "force_log_flush": "TRUE",  # we tail the log for SUBNET UP
            "dump_files_dir": str(osm_dir),
            "per_module_logging_file": str(osm_dir / "per-module-logging.conf"),
            "qos_policy_file": str(osm_dir / "qos-policy.conf"),
            "prefix_routes_file": str(osm_dir / "prefix-routes.conf"),
            "torus_config": str(osm_dir / "torus-2QoS.conf"),
            "sweep_interval": "0",
            "console": "off",
        }
        settings.update(self._conf_extra)
        lines = ["# Written by pkeyd.sim.fabric for one simulated run."]
        lines += [f"{key} {value}" for key, value in settings.items()]
        return "\n".join(lines) + "\n"

    async def _wait_for_line(
        self,
        proc: asyncio.subprocess.Process,
        log: Path,
        marker: str,
        limit: float,
        what: str,
    ) -> None:
        deadline = time.monotonic() + limit
        while True:
            if marker in await asyncio.to_thread(_read, log):
                return
            if proc.returncode is not None:
                raise SimError(
                    f"{what} exited with {proc.returncode} before {marker!r}; "
                    f"tail of {log}:\n{_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise SimError(
                    f"{what}: no {marker!r} after {limit:.0f}s; tail of {log}:\n{_tail(log)}"
                )
            await asyncio.sleep(0.05)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), self._stop_timeout)
                return
            except TimeoutError:
                continue
