"""The metric catalogue: the table usage distribution, and docs/metrics.md in step with the code."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pkeyd.fabric.model import FabricPort, FabricSnapshot, MadStats, NodeType, PortState
from pkeyd.metrics import Metrics
from tests.observability.artifacts import METRICS_DOC

USAGE = "pkeyd_port_pkey_table_usage_ratio"


def _port(guid: int, used: int, cap: int = 16, node_type: NodeType = NodeType.CA) -> FabricPort:
    entries = [0x8000 | (0x100 + i) for i in range(used)]
    return FabricPort(
        node_guid=guid,
        port_guid=guid,
        port_num=1,
        node_type=node_type,
        node_desc="",
        lid=guid,
        state=PortState.ACTIVE,
        partition_cap=cap,
        pkeys=tuple(entries + [0] * (cap - used)),
    )


def _snapshot(*ports: FabricPort) -> FabricSnapshot:
    return FabricSnapshot(ports, datetime.now(UTC), 0.1, MadStats())


def _bucket(metrics: Metrics, le: str) -> float | None:
    return metrics.registry.get_sample_value(f"{USAGE}_bucket", {"le": le})


def test_table_usage_is_a_distribution_over_ca_ports() -> None:
    metrics = Metrics(CollectorRegistry())
    # 1/16, 8/16, 12/16, 15/16, 16/16 of the table used; a switch is not counted.
    ca_ports = [_port(g, used) for g, used in ((1, 1), (2, 8), (3, 12), (4, 15), (5, 16))]
    metrics.observe_tables(_snapshot(*ca_ports, _port(9, 16, node_type=NodeType.SWITCH)))

    expected = {"0.25": 1, "0.5": 2, "0.75": 3, "0.9": 3, "1.0": 5, "+Inf": 5}
    assert {le: _bucket(metrics, le) for le in expected} == expected
    assert metrics.registry.get_sample_value(f"{USAGE}_gcount") == 5
    gsum = metrics.registry.get_sample_value(f"{USAGE}_gsum")
    assert gsum == pytest.approx((1 + 8 + 12 + 15 + 16) / 16)
    assert metrics.registry.get_sample_value("pkeyd_fabric_ports") == 5


def test_table_usage_ignores_the_invalid_pkey_and_follows_the_latest_pass() -> None:
    metrics = Metrics(CollectorRegistry())
    assert _bucket(metrics, "+Inf") == 0  # before any pass: zero, not absent
    port = dataclasses.replace(_port(1, 0, cap=4), pkeys=(0x8000, 0x0000, 0xFFFF, 0x8000))
    metrics.observe_tables(_snapshot(port))
    assert _bucket(metrics, "0.25") == 1  # 0x0000 and 0x8000 are empty: 1/4 used
    metrics.observe_tables(_snapshot())
    assert _bucket(metrics, "+Inf") == 0
    assert metrics.registry.get_sample_value("pkeyd_fabric_ports") == 0


def _exposed_families() -> set[str]:
    text = generate_latest(Metrics(CollectorRegistry()).registry).decode()
    names = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    histograms = set(re.findall(r"^# TYPE (\S+) histogram$", text, re.MULTILINE))
    return {
        n
        for n in names
        if not n.endswith("_created")
        and not (n.endswith(("_gcount", "_gsum")) and n.rsplit("_", 1)[0] in histograms)
    }


def test_docs_catalogue_lists_every_metric_and_only_those() -> None:
    exposed = _exposed_families()
    doc = METRICS_DOC.read_text()
    catalogue = doc[doc.index("## Catalogue") : doc.index("### Useful queries")]
    documented = set(re.findall(r"^\| `(pkeyd_[a-z0-9_]+)` \|", catalogue, re.MULTILINE))
    assert exposed - documented == set(), "metrics missing from docs/metrics.md"
    assert documented - exposed == set(), "docs/metrics.md names metrics that do not exist"


def test_names_follow_prometheus_conventions() -> None:
    text = generate_latest(Metrics(CollectorRegistry()).registry).decode()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        assert name.startswith("pkeyd_"), name
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram" and not name.endswith("_ratio"):
            assert name.endswith("_seconds"), name
        assert not re.search(r"_(milliseconds|ms|minutes|hours|bytes_kb|percent)\b", name), name
