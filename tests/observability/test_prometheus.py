"""The dashboard and the rules against a real Prometheus scraping a real pkeyd.

pkeyd runs as `pkeyd serve` on a simulated fabric (ibsim + OpenSM), verifying
the PKey tables over SMPs; Debian's prometheus scrapes it every second and
loads deploy/prometheus/pkeyd-rules.yml. The module makes changes through the
API, tampers with a member's PKey table (drift, then repair) and edits
partitions.conf behind pkeyd's back. Then every query of every panel of
deploy/grafana/pkeyd.json, its variables substituted as Grafana would, must
return data from Prometheus: Grafana itself is not packaged, this is the
proof that the dashboard works the day it is imported.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from pkeyd.sim.daemon import DaemonProcess, free_port
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.topology import fat_tree
from tests.fabric.probe_client import ProbeServer
from tests.http import JsonApi
from tests.observability.artifacts import (
    PROMETHEUS_SERIES,
    RULES,
    SELECTOR,
    alerting_rules,
    metric_names,
    panel_queries,
    substitute,
)
from tests.observability.prometheus import PrometheusServer, prometheus_binary

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

TOPOLOGY = fat_tree(16, hcas_per_leaf=8)
PORTS = TOPOLOGY.hca_port_guids()
PKEY = "0x0a12"
TOOLS = ("ibsim", "opensm", "smpquery")


def _guid(g: int) -> str:
    return f"0x{g:016x}"


class Api(JsonApi):
    async def converged(self) -> None:
        """Verified on the ports, and no drift left."""
        await self.until(
            "/api/v1/status", lambda s: s["verified_generation"] == s["desired_generation"]
        )
        await self.until("/api/v1/drift", lambda d: d == [])


@dataclass
class Stack:
    fabric: SimFabric
    api: Api
    prometheus: PrometheusServer
    instance: str
    drift_seen: list[dict[str, Any]]

    def variables(self) -> dict[str, str]:
        # What Grafana puts in: the selected instance, and a rate window that
        # spans the whole module (a few dozen one-second scrapes).
        return {
            "instance": self.instance,
            "__rate_interval": "2m",
            "__interval": "15s",
            "__range": "1h",
        }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack() -> AsyncIterator[Stack]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if prometheus_binary() is None:
        missing.append("prometheus")
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages; see the Makefile)")
    workdir = Path(tempfile.mkdtemp(prefix="pkeyd-observability-"))
    for sub in ("fabric", "pkeyd", "prometheus"):
        (workdir / sub).mkdir()
    flags = ["--verify-interval", "1", "--verify-settle", "3", "--mad-retries", "10"]
    flags += ["--resync-interval", "2"]
    port = free_port()
    instance = f"127.0.0.1:{port}"
    try:
        # Prometheus first: its discovery takes a few seconds to start scraping,
        # time the fabric and pkeyd need to come up anyway.
        async with (
            PrometheusServer(workdir / "prometheus", [instance], rule_files=(RULES,)) as prometheus,
            SimFabric(TOPOLOGY, workdir / "fabric") as fabric,
            DaemonProcess(fabric, workdir / "pkeyd", *flags, port=port) as daemon,
            aiohttp.ClientSession(daemon.base_url) as http,
        ):
            # Scraped before the first change, so that rates see every change.
            await prometheus.until(f'up{{instance="{instance}"}} == 1')
            probe = await ProbeServer.start(fabric)
            try:
                stack = Stack(fabric, Api(http), prometheus, instance, [])
                await _drive(stack, probe)
                yield stack
            finally:
                await probe.close()
            assert fabric.parse_errors() == []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _drive(stack: Stack, probe: ProbeServer) -> None:
    """Changes, a 404 and a 422, a drift and its repair, an external edit."""
    api, prometheus, sel = stack.api, stack.prometheus, f'instance="{stack.instance}"'
    await api.converged()
    members = [{"guid": _guid(g), "membership": "full"} for g in PORTS[1:4]]
    members += [{"guid": _guid(g), "membership": "limited"} for g in PORTS[4:6]]
    body = {"name": "tenant", "pkey": PKEY, "members": members}
    await api.call("POST", "/api/v1/partitions", 201, json=body)
    await api.converged()
    more = [{"guid": _guid(PORTS[6]), "membership": "full"}, {"guid": _guid(PORTS[7])}]
    await api.call("POST", f"/api/v1/partitions/{PKEY}/members", json={"members": more})
    await api.converged()
    await api.call("GET", "/api/v1/partitions/0x0bad", 404)
    await api.call("POST", "/api/v1/partitions", 422, json={"name": "bad", "pkey": "0xffff"})

    # Drift: an entry overwritten behind OpenSM's back, as tests/e2e does it.
    victim = _guid(PORTS[2])
    table = (await api.call("GET", f"/api/v1/ports/{victim}"))["port"]["pkeys"]
    tampered = [e for e in table[:32] if e != "0x8a12"] + ["0x0000"]
    await probe.call("set_pkey_block", port_guid=victim, block=0, entries=tampered)
    stack.drift_seen = await prometheus.until(f'pkeyd_drift_ports{{{sel}, kind="missing"}} > 0')
    await api.converged()

    # partitions.conf edited behind pkeyd's back: restored, counted, alerted.
    stack.fabric.partitions_conf.write_text("Default=0x7fff, ipoib : ALL=limited, SELF=full ;\n")
    await stack.fabric.sighup()
    await prometheus.until(f"pkeyd_external_edits_total{{{sel}}} > 0")
    await api.until("/api/v1/status", lambda s: s["external_edit"] is not None)
    await api.converged()
    # Prometheus has scraped the converged state.
    await prometheus.until(
        f"pkeyd_verified_generation{{{sel}}} == pkeyd_desired_generation{{{sel}}}"
        f' and on() sum(pkeyd_drift_ports{{{sel}, kind!="absent_member"}}) == 0'
    )


async def test_drift_and_its_repair_show_in_prometheus(stack: Stack) -> None:
    assert stack.drift_seen[0]["metric"]["kind"] == "missing"
    sel = f'instance="{stack.instance}"'
    [seen] = await stack.prometheus.query(
        f'max_over_time(pkeyd_drift_ports{{{sel}, kind="missing"}}[5m])'
    )
    assert float(seen["value"][1]) >= 1
    [now] = await stack.prometheus.query(f'pkeyd_drift_ports{{{sel}, kind="missing"}}')
    assert float(now["value"][1]) == 0


async def test_every_panel_query_returns_data(stack: Stack) -> None:
    queries = panel_queries()
    assert len(queries) > 20
    empty, not_finite = [], []
    for query in queries:
        expr = substitute(query.expr, stack.variables())
        result = await stack.prometheus.query(expr)
        if not result:
            empty.append(f"{query}\n    as {expr}")
        elif not any(math.isfinite(float(series["value"][1])) for series in result):
            not_finite.append(f"{query}: {result}")
    assert empty == [], "panels without data:\n" + "\n".join(empty)
    assert not_finite == [], "panels with only NaN or Inf:\n" + "\n".join(not_finite)


async def test_every_series_the_rules_select_exists(stack: Stack) -> None:
    """A misspelt label value in a rule would never fire; promtool's tests cannot see it."""
    selectors = {m.group(0) for rule in alerting_rules() for m in SELECTOR.finditer(rule["expr"])}
    missing = [s for s in sorted(selectors) if not await stack.prometheus.query(s)]
    assert missing == []


async def test_rules_evaluate_and_the_external_edit_alert_fires(stack: Stack) -> None:
    await stack.prometheus.until('ALERTS{alertname="PkeydExternalEdit", alertstate="firing"}')
    rules = [
        rule for group in (await stack.prometheus.api("rules"))["groups"] for rule in group["rules"]
    ]
    assert {r["name"] for r in rules} == {r["alert"] for r in alerting_rules()}
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    alerts = (await stack.prometheus.api("alerts"))["alerts"]
    firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
    assert firing == {"PkeydExternalEdit"}  # nothing else is wrong on this fabric


async def test_every_metric_named_in_dashboard_and_rules_is_exposed(stack: Stack) -> None:
    async with stack.api.http.get("/metrics") as resp:
        text = await resp.text()
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    named = {n for q in panel_queries() for n in metric_names(q.expr)}
    named |= {n for rule in alerting_rules() for n in metric_names(rule["expr"])}
    assert named - PROMETHEUS_SERIES - exposed == set()


async def test_table_usage_covers_the_fabric(stack: Stack) -> None:
    sel = f'instance="{stack.instance}"'
    [ports] = await stack.prometheus.query(f"pkeyd_fabric_ports{{{sel}}}")
    assert float(ports["value"][1]) >= len(PORTS)
    [inf] = await stack.prometheus.query(
        f'pkeyd_port_pkey_table_usage_ratio_bucket{{{sel}, le="+Inf"}}'
    )
    assert inf["value"][1] == ports["value"][1]
    [used] = await stack.prometheus.query(f"pkeyd_port_pkey_table_usage_ratio_gsum{{{sel}}}")
    assert float(used["value"][1]) > 0
