"""Prometheus metrics, all on an injected CollectorRegistry (tests stay isolated)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from pkeyd import __version__


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        Info("pkeyd_build", "pkeyd version", registry=registry).info({"version": __version__})
        self.partitions = Gauge(
            "pkeyd_partitions", "Partitions in the desired state", registry=registry
        )
        self.members = Gauge(
            "pkeyd_members",
            "Member entries in the desired state, by membership",
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
        self.render_seconds = Histogram(
            "pkeyd_render_duration_seconds",
            "Time to render partitions.conf from the desired state",
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "pkeyd_reconcile_duration_seconds",
            "Time of one reconcile pass: read state, render, write, reload",
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
        for result in ("ok", "error"):
            self.reloads.labels(result=result)
            self.writes.labels(result=result)
