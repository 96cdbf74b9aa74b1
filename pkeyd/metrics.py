"""Prometheus metrics, all on an injected CollectorRegistry (tests stay isolated).

The catalogue (names, types, labels, meaning) is documented in
docs/metrics.md; keep the two in step. Labelled series are created up front
with every label value they can take, so a dashboard never sees "no data"
where the true answer is zero. Cardinality stays bounded: no label carries a
GUID or a PKey; per-port PKey table usage is exposed as one distribution.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pkeyd import __version__

if TYPE_CHECKING:
    from pkeyd.fabric.model import FabricPort, FabricSnapshot

DRIFT_KINDS = ("missing", "wrong_membership", "unexpected", "absent_member", "over_capacity")
REFUSAL_REASONS = ("self_check",)
# Latencies from a few ms (a reload) to minutes (OpenSM down, then back).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# How late the event loop's timers fire: from a millisecond (an idle loop)
# to seconds (a loop that cannot keep up).
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Upper bounds of the table usage distribution (used entries / PartitionCap).
# 0.9 and 1.0 are there for the alert: a full table makes pkeyd refuse changes.
TABLE_USAGE_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0)
_PKEY_BITS = 0x7FFF  # 0x0000 and 0x8000 are both the invalid (empty) PKey


@dataclass(frozen=True, slots=True)
class TableUsage:
    """How full the CA ports' PKey tables were in the last verification pass."""

    ports: int = 0
    cumulative: tuple[int, ...] = (0,) * len(TABLE_USAGE_BUCKETS)  # ports with ratio <= bound
    ratio_sum: float = 0.0

    @classmethod
    def of(cls, ports: Iterable[FabricPort]) -> TableUsage:
        ratios = [
            sum(1 for entry in port.pkeys if entry & _PKEY_BITS) / max(port.partition_cap, 1)
            for port in ports
        ]
        cumulative = tuple(sum(1 for r in ratios if r <= bound) for bound in TABLE_USAGE_BUCKETS)
        return cls(len(ratios), cumulative, sum(ratios))


class _TableUsageCollector(Collector):
    """Exposes the stored TableUsage at scrape time (a gauge histogram, not per-port series)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return self._families(TableUsage())

    def collect(self) -> Iterable[Metric]:
        return self._families(self._metrics.table_usage)

    @staticmethod
    def _families(usage: TableUsage) -> Iterator[Metric]:
        buckets = [
            (str(float(bound)), float(count))
            for bound, count in zip(TABLE_USAGE_BUCKETS, usage.cumulative, strict=True)
        ]
        buckets.append(("+Inf", float(usage.ports)))
        yield GaugeHistogramMetricFamily(
            "pkeyd_port_pkey_table_usage_ratio",
            "CA ports by PKey table usage (valid entries / PartitionCap), last verification",
            buckets=buckets,
            gsum_value=usage.ratio_sum,
        )
        yield GaugeMetricFamily(
            "pkeyd_fabric_ports",
            "CA ports read in the last verification pass",
            value=usage.ports,
        )


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.table_usage = TableUsage()
        Info("pkeyd_build", "pkeyd version", registry=registry).info({"version": __version__})
        self.partitions = Gauge(
            "pkeyd_partitions", "Partitions in the desired state", registry=registry
        )
        self.members = Gauge(
            "pkeyd_members",
            "Member entries (GUIDs) in the desired state, by membership",
            ["membership"],
            registry=registry,
        )
        self.desired_generation = Gauge(
            "pkeyd_desired_generation",
            "Generation of the newest committed change",
            registry=registry,
        )
        self.applied_generation = Gauge(
            "pkeyd_applied_generation",
            "Generation last written to partitions.conf and reloaded into OpenSM",
            registry=registry,
        )
        self.verified_generation = Gauge(
            "pkeyd_verified_generation",
            "Generation last confirmed on the ports' PKey tables",
            registry=registry,
        )
        self.reloads = Counter(
            "pkeyd_reloads_total",
            "OpenSM reloads requested, by result",
            ["result"],
            registry=registry,
        )
        self.writes = Counter(
            "pkeyd_config_writes_total",
            "Atomic replacements of partitions.conf, by result",
            ["result"],
            registry=registry,
        )
        self.refused_writes = Counter(
            "pkeyd_refused_writes_total",
            "Renders kept off the live file by the safety net, by reason",
            ["reason"],
            registry=registry,
        )
        self.external_edits = Counter(
            "pkeyd_external_edits_total",
            "Edits or deletions of partitions.conf made behind pkeyd's back",
            registry=registry,
        )
        self.held = Gauge(
            "pkeyd_reconcile_held",
            "1 while applying is held after an external edit, waiting for an operator",
            registry=registry,
        )
        self.opensm_up = Gauge(
            "pkeyd_opensm_up",
            "1 if OpenSM was reachable: the last reload, or its pid between reloads",
            registry=registry,
        )
        self.render_seconds = Histogram(
            "pkeyd_render_duration_seconds",
            "Time to render partitions.conf and check it with pkeyd's parser",
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "pkeyd_reconcile_duration_seconds",
            "Time of one reconcile pass that wrote or reloaded: read state, render, write, reload",
            registry=registry,
        )
        self.verification_seconds = Histogram(
            "pkeyd_verification_duration_seconds",
            "Time to read the PKey tables of the fabric and compare them",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.apply_latency = Histogram(
            "pkeyd_apply_latency_seconds",
            "From the commit of a change to its verification on the ports",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.last_verification = Gauge(
            "pkeyd_last_successful_verification_timestamp_seconds",
            "Unix time of the last verification pass that read the whole fabric",
            registry=registry,
        )
        self.drift_ports = Gauge(
            "pkeyd_drift_ports",
            "Ports with at least one difference of this kind from the desired state",
            ["kind"],
            registry=registry,
        )
        self.mad_timeouts = Counter(
            "pkeyd_mad_timeouts_total",
            "Management datagrams to the fabric that timed out (before retries)",
            registry=registry,
        )
        self.mads_sent = Counter(
            "pkeyd_mads_sent_total",
            "Management datagrams sent to the fabric, retries included",
            registry=registry,
        )
        self.http_requests = Counter(
            "pkeyd_http_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_seconds = Histogram(
            "pkeyd_http_request_duration_seconds",
            "HTTP request latency by route and method",
            ["route", "method"],
            registry=registry,
        )
        # Sampled by pkeyd.loopwatch.
        self.loop_cpu = Counter(
            "pkeyd_event_loop_cpu_seconds_total",
            "CPU time of the event loop's thread, where requests, commits and renders run",
            registry=registry,
        )
        self.loop_lag = Histogram(
            "pkeyd_event_loop_lag_seconds",
            "How late a timer on the event loop fired: how long due work waited for the loop",
            buckets=LOOP_LAG_BUCKETS,
            registry=registry,
        )
        # The labelled children of the HTTP metrics, found once per label set:
        # every request counts itself, and labels() is the costly part of it.
        self._request_counts: dict[tuple[str, str, int], Counter] = {}
        self._request_seconds: dict[tuple[str, str], Histogram] = {}
        for result in ("ok", "error"):
            self.reloads.labels(result=result)
            self.writes.labels(result=result)
        for reason in REFUSAL_REASONS:
            self.refused_writes.labels(reason=reason)
        for kind in DRIFT_KINDS:
            self.drift_ports.labels(kind=kind)
        for membership in ("full", "limited", "both"):
            self.members.labels(membership=membership)
        registry.register(_TableUsageCollector(self))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency."""
        count = self._request_counts.get((route, method, status))
        if count is None:
            count = self.http_requests.labels(route, method, str(status))
            self._request_counts[(route, method, status)] = count
        count.inc()
        latency = self._request_seconds.get((route, method))
        if latency is None:
            latency = self.http_seconds.labels(route, method)
            self._request_seconds[(route, method)] = latency
        latency.observe(seconds)

    def observe_tables(self, snapshot: FabricSnapshot) -> None:
        """Keep the table usage distribution of a verification pass for the next scrape."""
        self.table_usage = TableUsage.of(snapshot.ca_ports())
