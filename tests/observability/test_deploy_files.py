"""The shipped rules and dashboard, checked without a running Prometheus.

`promtool` (Debian's prometheus package) checks the rules and runs their unit
tests: every alert must be shown both firing and staying quiet.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.observability.artifacts import (
    RULES,
    RULES_DIR,
    SCRAPE_EXAMPLE,
    SELECTOR,
    alerting_rules,
    dashboard,
    panel_queries,
    panels,
    rule_tests,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus)"
)


def _promtool(*args: str, cwd: Path = RULES_DIR) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_promtool_check_rules() -> None:
    out = _promtool("check", "rules", RULES.name)
    assert f"SUCCESS: {len(alerting_rules())} rules found" in out


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    assert "SUCCESS" in _promtool("test", "rules", "pkeyd-rules.test.yml")


@needs_promtool
def test_scrape_example_is_a_valid_config(tmp_path: Path) -> None:
    text = SCRAPE_EXAMPLE.read_text()
    assert "job_name: pkeyd" in text
    shutil.copy(RULES, tmp_path / RULES.name)
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/rules/pkeyd-rules.yml", RULES.name))
    _promtool("check", "config", config.name, cwd=tmp_path)


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [case for test in rule_tests() for case in test["alert_rule_test"]]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    alerts = {rule["alert"] for rule in alerting_rules()}
    assert alerts - fires == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown staying quiet"


def test_every_alert_says_what_and_where_to_look() -> None:
    required = {
        "PkeydDown",
        "PkeydDriftPersists",
        "PkeydChangesNotApplied",
        "PkeydChangesNotVerified",
        "PkeydOpenSMUnreachable",
        "PkeydReloadFailures",
        "PkeydExternalEdit",
    }
    rules = alerting_rules()
    assert required <= {r["alert"] for r in rules}
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_dashboard_has_datasource_and_instance_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["query"]["query"] == "label_values(pkeyd_build_info, instance)"
    assert instance["datasource"]["uid"] == "${datasource}"


def test_every_panel_uses_the_variables() -> None:
    """No hard-wired data source; every series filtered by the instance variable."""
    for panel in panels(dashboard()):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    for query in panel_queries():
        selectors = list(SELECTOR.finditer(query.expr))
        assert selectors, query
        for selector in selectors:
            assert 'instance=~"$instance"' in (selector.group(2) or ""), query


def test_dashboard_covers_each_area() -> None:
    names = " ".join(q.expr for q in panel_queries())
    for metric in (
        "pkeyd_desired_generation",
        "pkeyd_applied_generation",
        "pkeyd_verified_generation",
        "pkeyd_apply_latency_seconds_bucket",
        "pkeyd_drift_ports",
        "pkeyd_reloads_total",
        "pkeyd_external_edits_total",
        "pkeyd_port_pkey_table_usage_ratio_bucket",
        "pkeyd_http_requests_total",
        "pkeyd_http_request_duration_seconds_bucket",
        "pkeyd_event_loop_cpu_seconds_total",
        "pkeyd_event_loop_lag_seconds_bucket",
    ):
        assert metric in names


def test_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]
