"""Frozen settings of a pkeyd daemon, with units and defaults in one place.

Only pkeyd.cli builds these from argv and the environment; everything else
receives a Settings value.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pkeyd.domain import PKeyRange

DEFAULT_DB_URL = "sqlite+aiosqlite:////var/lib/pkeyd/pkeyd.db"
DEFAULT_PARTITIONS_CONF = Path("/etc/opensm/partitions.conf")
DEFAULT_STATE_DIR = Path("/var/lib/pkeyd")
ExternalEditPolicy = Literal["restore", "hold"]
FabricReaderKind = Literal["smp", "off"]


@dataclass(frozen=True, slots=True)
class Settings:
    db_url: str = DEFAULT_DB_URL
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    partitions_conf: Path = DEFAULT_PARTITIONS_CONF
    # Exactly one way to reload OpenSM: SIGHUP to the pid in this file, or a command.
    opensm_pid_file: Path | None = None
    reload_command: tuple[str, ...] | None = None
    reload_timeout_s: float = 10.0
    pkey_range: PKeyRange = field(default_factory=PKeyRange)
    # Several allocation ranges, lowest free PKey first; empty means pkey_range
    # alone (which older config files set).
    pkey_ranges: tuple[PKeyRange, ...] = ()
    # Mirrors allow_both_pkeys in opensm.conf: without it OpenSM reads `both` as full.
    allow_both_pkeys: bool = False
    # Mirrors qos in opensm.conf: without it OpenSM forces every partition's SL to 0.
    qos: bool = False
    # PKey table entries of a port when the fabric has not told its PartitionCap.
    default_partition_cap: int = 128
    # Copies of partitions.conf edited behind pkeyd's back are kept here.
    state_dir: Path = DEFAULT_STATE_DIR
    # On such an edit: put pkeyd's version back, or stop applying until told.
    on_external_edit: ExternalEditPolicy = "restore"
    # A commit wakes the reconciler, which waits until commits pause this long
    # (but at most coalesce_max_s) so that a burst of API calls becomes one reload.
    coalesce_delay_s: float = 0.05
    coalesce_max_s: float = 1.0
    # OpenSM's heavy sweep takes a while; SIGHUPs closer than this are merged.
    min_reload_interval_s: float = 0.1
    # Level-triggered resync: render and compare even when nothing was committed.
    resync_interval_s: float = 60.0
    # Transient reload failures back off from min to max, doubling.
    retry_min_s: float = 0.5
    retry_max_s: float = 30.0
    max_body_bytes: int = 8 * 1024 * 1024
    # Members (GUIDs and keywords) or removal targets a single request may name.
    max_members_per_request: int = 100_000
    # How long an Idempotency-Key and the answer stored with it are kept.
    idempotency_ttl_s: float = 86_400.0
    # Revisions older than this are deleted (pkeyd.retention); 0 keeps them all.
    revision_ttl_s: float = 0.0
    # Reads come from memory; changes committed by another pkeyd sharing the
    # database are seen within this many seconds (this process's own: at once).
    cache_refresh_s: float = 0.2
    # Verification on the ports: SMP reads from the local HCA port (libibumad),
    # or off (then nothing is ever `verified`).
    fabric_reader: FabricReaderKind = "smp"
    verify_interval_s: float = 30.0
    # After a reload OpenSM needs a sweep to program the tables: drift seen
    # within this time is not drift yet.
    verify_settle_s: float = 15.0
    # Reloads tried per generation to repair drift before reporting it persists.
    repair_max: int = 3
    mad_timeout_s: float = 0.5
    mad_retries: int = 3
    # Bearer tokens with roles (pkeyd token create). Off by default so that a
    # loopback-only daemon on the SM node works before any token exists; a
    # non-loopback listen_host needs it on (see check_exposure).
    auth: bool = False
    # With auth: GET/HEAD of the API without a token.
    auth_open_reads: bool = False
    # With auth: /metrics needs a reader token too (else it is open, like /healthz).
    auth_metrics: bool = False
    # A token revoked from another process stops working within this time.
    auth_cache_s: float = 5.0
    # Serve a non-loopback address without auth: only when something else
    # (a reverse proxy, a firewall to one host) controls who reaches the API.
    insecure_no_auth: bool = False
    # HTTPS: PEM certificate (chain) and its private key; both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        # Messages name the field: a config file key is the field's name.
        if (self.opensm_pid_file is None) == (self.reload_command is None):
            raise ValueError(
                "set exactly one of opensm_pid_file (--opensm-pid-file, SIGHUP) "
                "or reload_command (--reload-command)"
            )
        if self.reload_command is not None and (
            not self.reload_command or not self.reload_command[0]
        ):
            raise ValueError("reload_command must name a program")
        if not self.db_url:
            raise ValueError("db_url must not be empty")
        if not self.listen_host:
            raise ValueError("listen_host must not be empty")
        if not 0 <= self.listen_port <= 65535:
            raise ValueError(f"listen_port {self.listen_port} is not a TCP port (0-65535)")
        if self.on_external_edit not in ("restore", "hold"):
            raise ValueError(
                f"on_external_edit must be restore or hold, not {self.on_external_edit!r}"
            )
        if self.fabric_reader not in ("smp", "off"):
            raise ValueError(f"fabric_reader must be smp or off, not {self.fabric_reader!r}")
        if not 1 <= self.default_partition_cap <= 0xFFFF:
            raise ValueError("default_partition_cap must be 1-65535")
        for name in (
            "coalesce_delay_s",
            "coalesce_max_s",
            "min_reload_interval_s",
            "verify_settle_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        # Zero here would mean a busy loop or an instant timeout.
        for name in (
            "reload_timeout_s",
            "resync_interval_s",
            "retry_min_s",
            "retry_max_s",
            "verify_interval_s",
            "mad_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be greater than 0")
        if self.retry_min_s > self.retry_max_s:
            raise ValueError("retry_min_s must not exceed retry_max_s")
        if self.coalesce_delay_s > self.coalesce_max_s:
            raise ValueError("coalesce_delay_s must not exceed coalesce_max_s")
        for name in ("repair_max", "mad_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        if not self.auth_cache_s > 0:
            raise ValueError("auth_cache_s must be greater than 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both tls_cert and tls_key (PEM files), or neither")
        check_exposure(self)
        if self.max_members_per_request < 1:
            raise ValueError("max_members_per_request must be at least 1")
        for name in ("idempotency_ttl_s", "cache_refresh_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be greater than 0")
        if not self.revision_ttl_s >= 0:
            raise ValueError("revision_ttl_s must not be negative (0 keeps every revision)")
        ordered = sorted(self.pkey_ranges, key=lambda r: r.low)
        for lower, upper in itertools.pairwise(ordered):
            if upper.low <= lower.high:
                raise ValueError(f"pkey_ranges {lower} and {upper} overlap")

    @property
    def allocation_ranges(self) -> tuple[PKeyRange, ...]:
        """Where PKeys are allocated, lowest first: pkey_ranges, else pkey_range."""
        return tuple(sorted(self.pkey_ranges, key=lambda r: r.low)) or (self.pkey_range,)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`. A name other than localhost is not trusted."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse an API reachable from other hosts that anyone there could use."""
    if settings.auth or settings.insecure_no_auth or is_loopback(settings.listen_host):
        return
    raise ValueError(
        f"listen_host {settings.listen_host} is reachable from other hosts: set auth = true "
        "(--auth; create tokens with `pkeyd token create`), or insecure_no_auth = true if "
        "something else controls who reaches the API"
    )
