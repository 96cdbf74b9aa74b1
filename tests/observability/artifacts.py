"""The shipped dashboard and rules, read the way Grafana and Prometheus read them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # Debian's python3-yaml, no stubs

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "pkeyd.json"
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "pkeyd-rules.yml"
RULE_TESTS = RULES_DIR / "pkeyd-rules.test.yml"
SCRAPE_EXAMPLE = RULES_DIR / "scrape-example.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"

# Series Prometheus makes itself; every other name must be one pkeyd exposes.
PROMETHEUS_SERIES = frozenset({"up"})
# A metric name followed by its label matchers, if any.
SELECTOR = re.compile(r"\b(pkeyd_[a-z0-9_]+|up)\b(\{[^}]*\})?")
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.panel!r} {self.ref_id}: {self.expr}"


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries() -> list[PanelQuery]:
    return [
        PanelQuery(panel["title"], target["refId"], target["expr"])
        for panel in panels(dashboard())
        for target in panel.get("targets", [])
    ]


def alerting_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def rule_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    return tests


def metric_names(expr: str) -> set[str]:
    return {m.group(1) for m in SELECTOR.finditer(expr)}


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's variable interpolation, for the variables the dashboard uses."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise KeyError(f"no value for ${name} in {expr}")
        return variables[name]

    return _VARIABLE.sub(value, expr)
